"""A witness process against the real stack: Mosquitto, `cityledger ingest`, DuckDB, the CLI.

The witness runs as `cityledger witness follow`, exactly as an outside auditor starts it,
so these tests cover its login and ACL, its durable session and its exit codes.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledger.chain.protocol import witness_topic
from ledger.processes import STDOUT, start
from ledger.store.witness_files import StoreError, load_headers, load_state
from tests.support.broker import client_log, close_client, connect_client, publish, subscribe, wait_for
from tests.support.stack import SimDevice, Stack

NOW = lambda: int(time.time() * 1000)  # noqa: E731
EXIT_ALARM = 3


class WitnessProcess:
    """`cityledger witness follow` as a subprocess with its own log file."""

    def __init__(
        self,
        stack: Stack,
        store: Path,
        name: str,
        password_file: Path,
        ledger_key: str | None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.stack, self.store, self.name = stack, store, name
        self.log_path = stack.home.logs / f"witness-{name}.log"
        args = [
            sys.executable,
            "-m",
            "ledger.cli",
            "witness",
            "follow",
            "--store",
            str(store),
            "--name",
            name,
            "--password-file",
            str(password_file),
        ]
        if ledger_key:
            args += ["--ledger-key", ledger_key]
        args += extra
        self.mark = self.log().count("connected to")
        self.proc = start(args, env=stack.env, stdout=self.log_path, stderr=STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"witness exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def wait_connected(self) -> None:
        wait_for(lambda: self.alive() and self.log().count("connected to") > self.mark, 30, "the witness to connect")

    def holds_through(self, height: int) -> bool:
        """Every height from the first accepted one up to `height` is in headers.jsonl."""
        self.alive()
        heights = sorted(load_headers(self.store))
        return bool(heights) and heights[-1] >= height and heights == list(range(heights[0], heights[-1] + 1))

    def stop(self) -> int:
        code = self.proc.stop(signal.SIGTERM, timeout=30)
        if self.proc.forced:
            raise AssertionError("witness ignored SIGTERM for 30 s")
        return code


@contextmanager
def witness(
    stack: Stack,
    store: Path,
    name: str,
    password_file: Path,
    ledger_key: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[WitnessProcess]:
    w = WitnessProcess(stack, store, name, password_file, ledger_key, extra)
    try:
        yield w
    finally:
        w.stop()


def add_witness(stack: Stack, name: str, tmp_path: Path) -> Path:
    """A witness login; its password in a 0600 file, as an operator would hand it over."""
    out = stack.cli_json("witnesses", "add", name)
    path = tmp_path / f"{name}.password"
    path.touch(mode=0o600)
    path.write_text(out["mqtt_password"] + "\n")
    return path


def seal_blocks(stack: Stack, dev: SimDevice, blocks: int, per_block: int = 3) -> int:
    """Publish readings in separate batches (one block each); returns the new height."""
    client = stack.connect(dev)
    try:
        for _ in range(blocks):
            target = stack.status()["readings"] + per_block
            for _ in range(per_block):
                publish(client, dev.topic, dev.reading(value=dev.seq + 1, ts=NOW()).payload())
            wait_for(lambda target=target: stack.status()["readings"] == target, 30, f"{target} readings ledgered")
    finally:
        close_client(client)
    return int(stack.status()["height"])


def copy_database(stack: Stack, to: Path) -> None:
    """Copy the ledger files (ingest must be stopped: DuckDB's file is then complete)."""
    to.mkdir(parents=True, exist_ok=True)
    for path in (stack.home.database, stack.home.database.with_name(stack.home.database.name + ".wal")):
        if path.exists():
            shutil.copy2(path, to / path.name)


def restore_database(stack: Stack, copy: Path) -> None:
    wal = stack.home.database.with_name(stack.home.database.name + ".wal")
    wal.unlink(missing_ok=True)
    for path in copy.iterdir():
        shutil.copy2(path, stack.home.root / path.name)


def read_retained_as_ingest(stack: Stack, topic: str) -> list[bytes]:
    """Retained messages on `topic`: only ingest may read witness reports.

    Call with ingest stopped, at the end of a test: the broker forces the client id, so this
    connection takes over (and, starting clean, ends) the ingest's session.
    """
    assert stack.ingest is None
    secret = json.loads(stack.home.service_secret("ingest").read_text())
    client = connect_client(stack.broker.port, secret["username"], secret["password"], client_id=secret["username"])
    try:
        subscribe(client, topic)
        return [m.payload for m in wait_for(lambda: client_log(client).received(topic), 10, f"retained {topic}")]
    finally:
        close_client(client)


def test_a_witness_follows_catches_up_and_alarms_on_a_rollback(stack: Stack, tmp_path: Path) -> None:
    password = add_witness(stack, "w1", tmp_path)
    store = tmp_path / "witness-w1"
    ledger_key = stack.status()["ledger_key"]
    dev = stack.enroll("wm-d01-000001")

    # 1. It follows: every block sealed while it runs is kept, in order, linked, across a
    #    ledger key rotation (announced by the old key, later blocks signed by the new one).
    with witness(stack, store, "w1", password, ledger_key) as w:
        w.wait_connected()
        seal_blocks(stack, dev, 2)
        rotated = stack.cli_json("rotate-ledger-key")
        height = seal_blocks(stack, dev, 2)
        wait_for(lambda: w.holds_through(height), 30, f"the witness to hold every header up to {height}")
        assert w.stop() == 0
    assert "accepted height" in w.log() and "ALARM" not in w.log()
    assert f"ledger key now {rotated['new_key']}" in w.log()
    new_key = rotated["new_key"]

    # 2. Blocks sealed while it is away wait in its durable session; meanwhile the
    #    operator keeps a copy of the database (ingest stopped).
    old_height = seal_blocks(stack, dev, 4)
    stack.stop_ingest()
    old = tmp_path / "old-ledger"
    copy_database(stack, old)
    stack.start_ingest()
    with witness(stack, store, "w1", password) as w:  # no --ledger-key: the store remembers it
        w.wait_connected()
        wait_for(lambda: w.holds_through(old_height), 30, f"the restarted witness to catch up to {old_height}")
        assert "session present: True" in w.log()
        state = load_state(store)
        assert not isinstance(state, StoreError) and state.gaps == [] and state.key == new_key
        assert state.keys == [(0, ledger_key), (rotated["height"] + 1, new_key)]
        # what the witness holds is what the ledger holds
        verify = stack.cli("verify", "--witness", str(store))
        assert verify.returncode == 0 and "compared with" in verify.stdout, verify.stdout + verify.stderr

        # 3. More blocks, then the ledger is restored from the older copy. Ingest re-announces
        #    the head it starts from on the checkpoint topic: the head went back.
        newer = seal_blocks(stack, dev, 2)
        wait_for(lambda: w.holds_through(newer), 30, f"the witness to hold {newer}")
        stack.stop_ingest()
        restore_database(stack, old)
        stack.start_ingest()
        assert stack.status()["height"] == old_height
        wait_for(lambda: w.proc.poll() is not None, 30, "the witness to stop on the alarm")
        assert w.proc.returncode == EXIT_ALARM, w.log()
    # the operator sees it: ingest keeps what witnesses report
    reports = wait_for(
        lambda: stack.cli_json("witnesses", "reports", "--kind", "alarm", "--json"),
        15,
        "the alarm among the witness reports",
    )
    assert [(r["witness"], json.loads(r["body"])["kind"]) for r in reports] == [("w1", "rollback")]

    assert f"WITNESS ALARM rollback at height {old_height}: " in w.log()
    assert "Traceback" not in w.log()
    kept = [json.loads(line) for line in (store / "alarms.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["height"]) for a in kept] == [("rollback", old_height)]
    stack.stop_ingest()
    retained = read_retained_as_ingest(stack, witness_topic("w1", "alarm"))
    alarm = json.loads(retained[-1])
    assert set(alarm) == {"kind", "height", "detail", "at", "witness"}
    assert (alarm["kind"], alarm["height"], alarm["witness"]) == ("rollback", old_height, "w1")


def test_a_witness_refuses_to_start_without_what_it_needs(stack: Stack, tmp_path: Path) -> None:
    password = add_witness(stack, "w2", tmp_path)
    ledger_key = stack.status()["ledger_key"]
    store = str(tmp_path / "witness-w2")

    no_key = stack.cli("witness", "follow", "--store", store, "--name", "w2", "--password-file", str(password))
    assert no_key.returncode == 2 and "--ledger-key" in no_key.stderr, no_key.stderr

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    refused = stack.cli(
        "witness", "follow", "--store", store, "--name", "w2", "--password-file", str(wrong), "--ledger-key", ledger_key
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refused login 'w2'" in refused.stderr and "Traceback" not in refused.stderr

    other_key = "ab" * 32
    contradicts = stack.cli(
        "witness",
        "follow",
        "--store",
        store,
        "--name",
        "w2",
        "--password-file",
        str(password),
        "--ledger-key",
        other_key,
    )
    assert contradicts.returncode == 2 and "contradicts" in contradicts.stderr, contradicts.stderr
