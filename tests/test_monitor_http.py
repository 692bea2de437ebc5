"""`cityledger monitor` over real HTTP: a synthetic log in a tile directory, served by a real
`TileServer` on a free port, and the monitor run as a real subprocess for one round at a time.

The log is written as the ledger's writer writes it (ledger/chain/tlog.py's `TileState`
for the hash tiles, `entry_bundle` for the bundles, `signed_checkpoint` for the checkpoint),
so what the monitor reads is what a CDN copy of a real log would serve. Each case then
changes what is served (the log grows, a byte of a bundle, the checkpoint) and asks the
monitor again: exit 0 and a summary line when all is well, exit 3 and ALARM lines (also in
alarms.log) when not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import Checkpoint, signed_checkpoint, verifier_key
from ledger.chain.protocol import canonical_json, sign_reading
from ledger.chain.tlog import TileState, entry_bundle
from ledger.service.tile_server import TileServer

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "cityledger.example/d01"
T0 = 1_764_000_000_000
LEDGER = SigningKey(hashlib.sha256(b"monitor test ledger key").digest())
VKEY = verifier_key(ORIGIN, LEDGER.verify_key.encode())
DEVICES = [(f"wm-d01-{i:06d}", SigningKey(hashlib.sha256(f"device {i}".encode()).digest())) for i in range(30)]


def enrolment(device: str, key: SigningKey) -> bytes:
    return canonical_json(
        {
            "entry": "device_enrolled",
            "device": device,
            "kind": "water",
            "district": "d01",
            "public_key": key.verify_key.encode().hex(),
            "at": T0,
        }
    )


def readings(first_seq: int, last_seq: int) -> list[bytes]:
    """Every device's readings first_seq..last_seq, round-robin, as the log holds them."""
    return [
        sign_reading(key, device=device, kind="water", seq=seq, ts=T0 + seq * 900_000, value=seq * 17).leaf_data()
        for seq in range(first_seq, last_seq + 1)
        for device, key in DEVICES
    ]


@dataclass
class TileLog:
    """A log written to a tile directory the way the writer does it; `publish` signs a checkpoint."""

    directory: Path
    entries: list[bytes] = field(default_factory=list)
    state: TileState = field(default_factory=TileState)

    def append(self, entries: list[bytes]) -> None:
        self.entries.extend(entries)
        for tile, data in self.state.append(merkle.leaf_hashes(entries)):
            self._write(tile.path(), data)
            if tile.level == 0:
                start = tile.index * 256
                self._write(tile.entries_path(), entry_bundle(self.entries[start : start + tile.width]))

    def publish(self, size: int | None = None, root: bytes | None = None) -> None:
        size = len(self.entries) if size is None else size
        root = merkle.root(merkle.leaf_hashes(self.entries[:size])) if root is None else root
        note = signed_checkpoint(Checkpoint(ORIGIN, size, root), [LEDGER])
        self._write("checkpoint", note.encode())

    def path(self, relative: str) -> Path:
        return self.directory / relative

    def _write(self, relative: str, data: bytes) -> None:
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


@pytest.fixture(scope="module")
def first_entries() -> list[bytes]:
    """3,000 entries: 30 enrolments, then 99 readings of each of 30 devices (signed once per module)."""
    return [enrolment(d, k) for d, k in DEVICES] + readings(1, 99)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TileLog, str]]:
    """An empty tile directory served over HTTP on a free port; its log and its URL."""
    directory = tmp_path / "log"
    directory.mkdir()
    server = TileServer(directory, ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TileLog(directory), f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def monitor(url: str, state: Path | None, *extra: str, key: str = VKEY) -> subprocess.CompletedProcess[str]:
    """One round of `python -m ledger.witnesses.monitor`, a real process."""
    argv = [sys.executable, "-m", "ledger.witnesses.monitor", "--url", url, "--ledger-key", key, "--once"]
    if state is not None:
        argv += ["--state", str(state)]
    return subprocess.run(
        [*argv, *extra],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def summary(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("log ")]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


def alarms(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("ALARM: ")]


# ---------------------------------------------------------------- a clean log


def test_a_clean_log_passes_and_a_second_round_checks_only_the_new_entries(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    log, url = served
    log.append(first_entries)
    log.publish()
    state = tmp_path / "state"

    first = monitor(url, state)
    assert first.returncode == 0, first.stderr
    assert summary(first).startswith(f"log {ORIGIN} size 3000: 3000 new entries checked, 2970 readings")
    assert "2970 signatures verified" in summary(first)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    saved = json.loads((state / "state.json").read_text())
    assert saved["confirmed"]["size"] == 3000 and saved["pending"] == []
    assert not (state / "alarms.log").exists()

    log.append(readings(100, 119))  # 600 more: the bundle that was partial at 3,000 fills up
    log.publish()
    second = monitor(url, state)
    assert second.returncode == 0, second.stderr
    assert summary(second).startswith(f"log {ORIGIN} size 3600: 600 new entries checked, 600 readings")

    third = monitor(url, state)  # nothing new
    assert third.returncode == 0 and "size 3600: 0 new entries checked" in summary(third)


def test_a_deleted_partial_tile_is_read_from_the_full_one(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    """tlog-tiles lets a log delete a partial tile once the full one exists: the monitor falls back."""
    log, url = served
    log.append(first_entries)
    log.publish()  # 3,000: bundle 11 is partial, 184 wide
    log.append(readings(100, 103))  # 3,120 entries written, the checkpoint still says 3,000
    for partial in ("tile/entries/011.p/184", "tile/0/011.p/184"):
        log.path(partial).unlink()
    assert log.path("tile/entries/011").exists()
    result = monitor(url, tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert "size 3000: 3000 new entries checked" in summary(result)


def test_a_bare_hex_ledger_key_is_named_after_the_log(served: tuple[TileLog, str], first_entries: list[bytes]) -> None:
    log, url = served
    log.append(first_entries[:300])
    log.publish()
    result = monitor(url, None, key=LEDGER.verify_key.encode().hex())
    assert result.returncode == 0, result.stderr
    assert "size 300: 300 new entries checked" in summary(result)


# ---------------------------------------------------------------- alarms


def test_an_entry_bundle_altered_by_one_byte_is_an_alarm(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    log, url = served
    log.append(first_entries)
    log.publish()
    bundle = log.path("tile/entries/005")
    data = bytearray(bundle.read_bytes())
    at = data.index(b'"value":') + len(b'"value":')
    data[at] = ord("9") if data[at] != ord("9") else ord("8")  # still JSON, still canonical
    bundle.write_bytes(bytes(data))
    state = tmp_path / "state"

    result = monitor(url, state)
    assert result.returncode == 3, result.stdout + result.stderr
    found = alarms(result)
    assert any("bad_signature" in line for line in found), found
    assert any("tile_mismatch" in line for line in found), found
    assert any("inconsistent" in line for line in found), found
    kept = (state / "alarms.log").read_text()
    assert "ALARM: bad_signature" in kept and "ALARM: inconsistent" in kept
    assert not (state / "state.json").exists()  # nothing confirmed: the next run re-checks it all


def test_a_rolled_back_checkpoint_is_an_alarm(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    log, url = served
    log.append(first_entries)
    log.publish()
    state = tmp_path / "state"
    assert monitor(url, state).returncode == 0

    log.publish(size=2900)  # signed, and consistent, but smaller than what the log showed before
    result = monitor(url, state)
    assert result.returncode == 3, result.stdout + result.stderr
    assert any("rollback" in line and "size 3000" in line and "size 2900" in line for line in alarms(result))
    kept = (state / "alarms.log").read_text()
    assert "ALARM: rollback" in kept and "    — " + ORIGIN in kept  # both signed notes kept as evidence
    assert json.loads((state / "state.json").read_text())["confirmed"]["size"] == 3000


def test_a_new_checkpoint_inconsistent_with_the_last_is_an_alarm(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    log, url = served
    log.append(first_entries)
    log.publish()
    state = tmp_path / "state"
    assert monitor(url, state).returncode == 0

    log.append(readings(100, 104))  # 150 more entries served...
    fork = first_entries + readings(100, 103) + readings(105, 105)
    log.publish(root=merkle.root(merkle.leaf_hashes(fork)))  # ...but a signed root of other ones
    result = monitor(url, state)
    assert result.returncode == 3, result.stdout + result.stderr
    assert any("inconsistent" in line for line in alarms(result)), result.stderr


def test_a_second_root_for_the_same_size_is_a_split_view(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    log, url = served
    log.append(first_entries)
    log.publish()
    state = tmp_path / "state"
    assert monitor(url, state).returncode == 0
    log.publish(root=bytes(32))
    result = monitor(url, state)
    assert result.returncode == 3
    assert any("split_view" in line for line in alarms(result)), result.stderr


# ---------------------------------------------------------------- faults and usage


def test_an_unreachable_log_is_a_fault_said_plainly_and_retried(tmp_path: Path) -> None:
    server = TileServer(tmp_path, ("127.0.0.1", 0))
    port = server.server_address[1]
    server.server_close()  # a port nobody listens on
    result = monitor(f"http://127.0.0.1:{port}", tmp_path / "state", "--timeout", "5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cityledger monitor: GET http://127.0.0.1:" in result.stderr and "retried" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_checkpoint_signed_by_another_key_is_a_fault(served: tuple[TileLog, str], first_entries: list[bytes]) -> None:
    log, url = served
    log.append(first_entries[:10])
    log.publish()
    other = verifier_key(ORIGIN, SigningKey(bytes(32)).verify_key.encode())
    result = monitor(url, None, key=other)
    assert result.returncode == 1 and "no signature of a trusted ledger key" in result.stderr


@pytest.mark.parametrize("key", ["not-a-key", "ab" * 31, "example.com+00000000+AAAA"])
def test_a_bad_ledger_key_is_a_usage_error(key: str, tmp_path: Path) -> None:
    result = monitor("http://127.0.0.1:9", None, key=key)
    assert result.returncode == 2 and "--ledger-key" in result.stderr


def test_the_cli_group_registers_monitor(served: tuple[TileLog, str], first_entries: list[bytes]) -> None:
    """`cityledger monitor` as ledger/cli/monitor.py declares it, run in a process of its own
    (commands.py lists the group; this builds a parser with `register` alone)."""
    log, url = served
    log.append(first_entries[:600])
    log.publish()
    runner = (
        "import argparse, sys\n"
        "from ledger.cli.monitor import register\n"
        "parser = argparse.ArgumentParser(prog='cityledger')\n"
        "register(parser.add_subparsers(dest='command', required=True))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.handler(args))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", runner, "monitor", "--url", url, "--ledger-key", VKEY, "--once"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "size 600: 600 new entries checked" in summary(result)


def test_in_process_a_long_catch_up_verifies_on_a_process_pool(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    """Past `POOL_FROM` entries the signatures go to `sigcheck.ParallelVerifier`; a bad one is still named."""
    from ledger.witnesses.monitor import POOL_FROM, Monitor, StateDir, parse_ledger_key

    log, url = served
    entries = first_entries + readings(100, 400)
    bad_index = 9_000
    obj = json.loads(entries[bad_index])
    entries[bad_index] = canonical_json({**obj, "value": obj["value"] + 1})  # signed over by the log, not the device
    log.append(entries)
    log.publish()
    assert len(entries) > POOL_FROM
    state = StateDir(tmp_path / "state")
    m = Monitor(url, [parse_ledger_key(VKEY)], state, workers=2)
    try:
        report = m.round()
    finally:
        m.close()
        state.close()
    assert report.fault is None and report.checked == len(entries)
    assert [(a.kind.value, a.index) for a in report.alarms] == [("bad_signature", bad_index)]
    assert report.verified == report.readings - 1


def test_the_options_parse_as_documented() -> None:
    from ledger.witnesses.monitor import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--url", "http://x/", "--ledger-key", "a", "--ledger-key", "b", "--interval", "5"])
    assert args.ledger_key == ["a", "b"] and args.interval == 5.0 and not args.once and args.state is None


class _Lines:
    """A running process's output lines, read on threads, waited for with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[tuple[str, str]] = queue.Queue()
        for name, stream in (("out", process.stdout), ("err", process.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.queue.put((name, line.rstrip("\n")))

    def wait_for(self, stream: str, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                name, line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            seen.append(line)
            if name == stream and text in line:
                return line
        raise AssertionError(f"no {stream} line with {text!r} within {timeout} s; saw {seen[-20:]}")


def test_running_on_it_follows_the_log_rides_out_a_fault_and_stops_on_sigterm(
    served: tuple[TileLog, str], first_entries: list[bytes], tmp_path: Path
) -> None:
    log, url = served
    log.append(first_entries)
    log.publish()
    argv = [sys.executable, "-m", "ledger.witnesses.monitor", "--url", url, "--ledger-key", VKEY]
    argv += ["--state", str(tmp_path / "state"), "--interval", "0.2"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lines = _Lines(process)
        lines.wait_for("out", "size 3000: 3000 new entries checked")
        checkpoint = log.path("checkpoint").read_bytes()
        log.path("checkpoint").unlink()  # the log's server loses it for a while
        lines.wait_for("err", "checkpoint: not found (retried on the next round)")
        log.path("checkpoint").write_bytes(checkpoint)
        log.append(readings(100, 109))
        log.publish()
        lines.wait_for("out", "size 3300: 300 new entries checked")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
