"""`cityledger witness serve` as a real process, spoken to over HTTP as a log would (tlog-witness.md).

The log is real too: leaf hashes, RFC 6962 roots and consistency proofs, checkpoints signed by
a log key. What the pure tests (tests/test_cosigning.py) cannot show is shown here: the answers
on the wire, the state surviving a restart, a kill -9 at any moment never leading to two
inconsistent cosignatures, and the quiet-log alarm.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import (
    Checkpoint,
    Verifier,
    make_verifier,
    parse_note,
    parse_vkey,
    signed_checkpoint,
    verify_cosignature,
)
from ledger.processes import STDOUT, Child, start, wait_until

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = "cityledger.example/d01"
WITNESS_NAME = "witness.example/w1"
LOG_KEY = SigningKey(bytes(range(0x21, 0x41)))
OTHER_KEY = SigningKey(bytes(range(0x81, 0xA1)))
LEAVES = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(16)]
FORK = LEAVES[:5] + [merkle.leaf_hash(f"forked {i}".encode()) for i in range(5, 16)]


# ---------------------------------------------------------------- the log's side


def log_vkey(origin: str = ORIGIN, key: SigningKey = LOG_KEY) -> str:
    return make_verifier(origin, key.verify_key.encode()).vkey()


def signed(size: int, leaves: list[bytes] = LEAVES, origin: str = ORIGIN, key: SigningKey = LOG_KEY) -> bytes:
    return signed_checkpoint(Checkpoint(origin, size, merkle.root(leaves[:size])), [key]).encode()


def body(old: int, note: bytes, proof: list[bytes] | None = None) -> bytes:
    lines = "".join(base64.b64encode(p).decode() + "\n" for p in proof or [])
    return f"old {old}\n{lines}\n".encode() + note


def add(old: int, size: int, leaves: list[bytes] = LEAVES, origin: str = ORIGIN) -> tuple[bytes, bytes]:
    """The request body from `old` to `size` with its consistency proof, and the signed checkpoint."""
    note = signed(size, leaves, origin)
    proof = merkle.consistency_proof(leaves[:size], old) if 0 < old <= size else []
    return body(old, note, proof), note


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


def request(port: int, method: str, path: str, data: bytes | None = None, timeout: float = 10.0) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data)
        r = conn.getresponse()
        return Reply(r.status, r.getheader("Content-Type") or "", r.read())
    finally:
        conn.close()


def too_large(port: int) -> Reply:
    """A request that announces a body above the witness's limit (and never sends it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/add-checkpoint")
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()
        r = conn.getresponse()
        return Reply(r.status, r.getheader("Content-Type") or "", r.read())
    finally:
        conn.close()


def cosignature_ts(note: bytes, reply: Reply, witness: Verifier) -> int | None:
    """The client's check (tlog-witness.md): append the reply to the checkpoint and verify."""
    return verify_cosignature(parse_note(note + reply.body), witness)


# ---------------------------------------------------------------- the witness process


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


class WitnessProcess:
    """`cityledger witness serve --port 0` on a store; its port from the store's `port` file."""

    def __init__(self, store: Path, log_path: Path, *extra: str) -> None:
        self.store, self.log_path, self.extra = store, log_path, extra
        self.child: Child | None = None
        self.port = 0

    def start(self) -> WitnessProcess:
        (self.store / "port").unlink(missing_ok=True)  # a killed one leaves its port behind
        argv = [sys.executable, "-m", "ledger.cli", "witness", "serve", "--store", str(self.store), "--port", "0"]
        child = self.child = start([*argv, *self.extra], cwd=ROOT, stdout=self.log_path, stderr=STDOUT)

        def listening() -> int | None:
            if not child.alive:
                raise AssertionError(f"the witness exited ({child.state()}):\n{self.log()}")
            try:
                port = int((self.store / "port").read_text())
                request(port, "GET", "/status", timeout=2)
            except (FileNotFoundError, ValueError, OSError):
                return None
            return port

        self.port = wait_until(listening, 30, what="the witness to listen")
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def post(self, data: bytes) -> Reply:
        return request(self.port, "POST", "/add-checkpoint", data)

    def status(self) -> dict[str, Any]:
        reply = request(self.port, "GET", "/status")
        assert reply.status == 200 and reply.content_type == "application/json"
        result: dict[str, Any] = json.loads(reply.body)
        return result

    def kill(self) -> None:
        assert self.child is not None
        self.child.send_signal(signal.SIGKILL)
        self.child.wait(15)

    def stop(self) -> int:
        return self.child.stop() if self.child is not None else 0


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A witness store made and set up with the CLI, trusting the log of ORIGIN."""
    path = tmp_path / "witness"
    made = cli("witness", "init", "--store", str(path), "--name", WITNESS_NAME)
    assert made.returncode == 0, made.stderr
    assert (path.stat().st_mode & 0o777) == 0o700 and ((path / "witness.key").stat().st_mode & 0o777) == 0o600
    trusted = cli("witness", "trust", "--store", str(path), log_vkey())
    assert trusted.returncode == 0, trusted.stderr
    return path


@pytest.fixture
def witness_vkey(store: Path) -> Verifier:
    out = cli("witness", "key", "--store", str(store))
    assert out.returncode == 0, out.stderr
    return parse_vkey(out.stdout.strip())


@pytest.fixture
def witness(store: Path, tmp_path: Path) -> Iterator[WitnessProcess]:
    w = WitnessProcess(store, tmp_path / "witness.log").start()
    yield w
    w.stop()


# ---------------------------------------------------------------- setting up


def test_init_refuses_to_replace_a_key_and_trust_refuses_a_non_log_key(store: Path, witness_vkey: Verifier) -> None:
    again = cli("witness", "init", "--store", str(store), "--name", "witness.example/w2")
    assert again.returncode == 2 and "refusing" in again.stderr
    assert cli("witness", "key", "--store", str(store)).stdout.strip() == witness_vkey.vkey()
    assert witness_vkey.name == WITNESS_NAME and witness_vkey.alg == 0x04
    refused = cli("witness", "trust", "--store", str(store), witness_vkey.vkey())  # a cosigner's, type 0x04
    assert refused.returncode == 2 and "0x01" in refused.stderr
    assert cli("witness", "trust", "--store", str(store), "not a vkey").returncode == 2
    assert (store / "logs").read_text() == log_vkey() + "\n"
    assert cli("witness", "trust", "--store", str(store), log_vkey()).returncode == 0  # twice: once on file
    assert (store / "logs").read_text() == log_vkey() + "\n"


# ---------------------------------------------------------------- the protocol on the wire


def test_the_witness_answers_as_tlog_witness_says(witness: WitnessProcess, witness_vkey: Verifier, store: Path) -> None:
    data, note = add(0, 3)
    reply = witness.post(data)
    assert reply.status == 200, reply
    assert reply.content_type.startswith("text/plain")
    ts = cosignature_ts(note, reply, witness_vkey)
    assert ts is not None and abs(ts - time.time()) < 60

    data, note = add(3, 7)
    reply = witness.post(data)
    assert reply.status == 200 and cosignature_ts(note, reply, witness_vkey) is not None
    saved = json.loads((store / "state.json").read_text())
    assert saved == {ORIGIN: {"size": 7, "root_b64": base64.b64encode(merkle.root(LEAVES[:7])).decode()}}

    # A split view: the same size with another root.
    assert witness.post(add(7, 7, FORK)[0]).status == 422
    # The fork ahead, with its own (true) proof from 7: not consistent with what was cosigned.
    assert witness.post(add(7, 9, FORK)[0]).status == 422
    # A stale old size: 409 with the witness's size.
    stale = witness.post(add(3, 9)[0])
    assert (stale.status, stale.content_type, stale.body) == (409, "text/x.tlog.size", b"7\n")
    # A smaller checkpoint: its old size is above its size (400) or not the witness's (409).
    assert witness.post(body(7, signed(5))).status == 400
    assert witness.post(add(5, 5)[0]).status == 409
    # A bad proof.
    bad = add(7, 9)[0].replace(base64.b64encode(merkle.consistency_proof(LEAVES[:9], 7)[0]), b"A" * 43 + b"=")
    assert witness.post(bad).status == 422
    # Unknown origin; a signature by a key it does not trust; a malformed body.
    assert witness.post(body(0, signed(3, origin="cityledger.example/d99"))).status == 404
    assert witness.post(body(7, signed(9, key=OTHER_KEY))).status == 403
    assert witness.post(b"old 7\n").status == 400
    # HTTP around it.
    assert request(witness.port, "GET", "/add-checkpoint").status == 405
    assert request(witness.port, "POST", "/status", b"").status == 405
    assert request(witness.port, "GET", "/nothing").status == 404
    assert too_large(witness.port).status == 413

    status = witness.status()
    assert status["name"] == WITNESS_NAME and status["vkey"] == witness_vkey.vkey()
    assert status["logs"][ORIGIN]["size"] == 7 and status["alarms"] == []
    assert (store / "witness.key").read_text().strip() not in witness.log()

    # And after all those refusals, the log goes on.
    data, note = add(7, 9)
    reply = witness.post(data)
    assert reply.status == 200 and cosignature_ts(note, reply, witness_vkey) is not None


def test_the_state_survives_a_restart(witness: WitnessProcess, witness_vkey: Verifier) -> None:
    assert witness.post(add(0, 6)[0]).status == 200
    assert witness.stop() == 0  # SIGTERM: a clean stop
    assert not (witness.store / "port").exists()

    witness.start()
    status = witness.status()["logs"][ORIGIN]
    assert (status["size"], status["root"]) == (6, base64.b64encode(merkle.root(LEAVES[:6])).decode())
    assert witness.post(add(0, 8)[0]).body == b"6\n"
    assert witness.post(add(6, 6, FORK)[0]).status == 422
    data, note = add(6, 8)
    reply = witness.post(data)
    assert reply.status == 200 and cosignature_ts(note, reply, witness_vkey) is not None


def test_a_log_trusted_while_serving_is_served(witness: WitnessProcess, store: Path) -> None:
    other = "cityledger.example/d02"
    assert witness.post(body(0, signed(3, origin=other))).status == 404
    assert cli("witness", "trust", "--store", str(store), log_vkey(other)).returncode == 0
    assert witness.post(body(0, signed(3, origin=other))).status == 200


# ---------------------------------------------------------------- kill -9 at any moment


@dataclass(frozen=True)
class Received:
    origin: str
    size: int
    root: bytes
    leaves: tuple[bytes, ...]  # the branch it was cut from, to prove consistency with


def _client(
    w: WitnessProcess,
    origin: str,
    leaves: list[bytes],
    seed: float,
    out: list[Received],
    verifier: Verifier,
    errors: list[BaseException],
) -> None:
    try:
        _push(w, origin, leaves, seed, out, verifier)
    except BaseException as exc:  # a failed check in a thread must fail the test, not only warn
        errors.append(exc)


def _push(
    w: WitnessProcess, origin: str, leaves: list[bytes], seed: float, out: list[Received], verifier: Verifier
) -> None:
    """A log (or one branch of a forked log) pushing checkpoints until the witness dies under it."""
    rng = random.Random(seed)
    size = 0  # what this client believes the witness holds
    while True:
        new = min(len(leaves), size + rng.randint(0, 3))
        data, note = add(size, new, leaves, origin)
        try:
            reply = w.post(data)
        except (OSError, http.client.HTTPException):  # killed mid-request: whatever it was, it was not received
            return
        if reply.status == 200:
            ts = cosignature_ts(note, reply, verifier)
            assert ts is not None, reply
            out.append(Received(origin, new, merkle.root(leaves[:new]), tuple(leaves)))
            size = new
        elif reply.status == 409:
            size = int(reply.body)
        else:  # the witness holds the other branch: nothing of this one can be cosigned any more
            assert reply.status == 422, reply


def _consistent(a: Received, b: Received) -> bool:
    if a.size > b.size:
        a, b = b, a
    if a.size == 0:
        return True
    if a.size == b.size:
        return a.root == b.root
    proof = merkle.consistency_proof(list(b.leaves[: b.size]), a.size)
    return merkle.verify_consistency(a.size, b.size, a.root, b.root, proof)


def test_kill_9_at_any_moment_never_yields_two_inconsistent_cosignatures(
    store: Path, tmp_path: Path, witness_vkey: Verifier
) -> None:
    rounds, n_origins = 30, 5
    origins = [f"cityledger.example/fork{i}" for i in range(n_origins)]
    for origin in origins:
        assert cli("witness", "trust", "--store", str(store), log_vkey(origin)).returncode == 0
    # Each origin's log forks after a shared prefix of 4 leaves: branch A to some, branch B to others.
    branches = {
        origin: (
            [merkle.leaf_hash(f"{origin} {i}".encode()) for i in range(40)],
            [merkle.leaf_hash(f"{origin} {i}{'' if i < 4 else ' B'}".encode()) for i in range(40)],
        )
        for origin in origins
    }
    rng = random.Random(20261207)
    received: list[Received] = []
    errors: list[BaseException] = []
    w = WitnessProcess(store, tmp_path / "crash.log")
    started = time.monotonic()
    for n in range(rounds):
        w.start()
        origin = origins[n % n_origins]
        a, b = branches[origin]
        got: list[Received] = []
        threads = [
            threading.Thread(target=_client, args=(w, origin, branch, rng.random(), got, witness_vkey, errors))
            for branch in (a, b, a, b)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.0, 0.3))  # the random moment of the kill
        w.kill()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert not errors, errors
        received.extend(got)
    # One last start: what it holds must be consistent with everything it gave out, and at least as far.
    w.start()
    try:
        final = w.status()["logs"]
    finally:
        assert w.stop() == 0
    elapsed = time.monotonic() - started

    assert len(received) >= rounds, f"only {len(received)} cosignatures in {rounds} rounds"
    assert any(r.size > 4 for r in received), "no round got past the fork point"
    for i, x in enumerate(received):
        for y in received[i + 1 :]:
            if x.origin == y.origin:
                assert _consistent(x, y), f"inconsistent cosignatures for {x.origin}: {x.size} and {y.size}"
    for origin in origins:
        mine = [r for r in received if r.origin == origin]
        if not mine:
            continue
        held = final[origin]
        assert held["size"] >= max(r.size for r in mine)
        root = base64.b64decode(held["root"])
        branch = next(br for br in branches[origin] if merkle.root(br[: held["size"]]) == root)
        now = Received(origin, held["size"], root, tuple(branch))
        assert all(_consistent(r, now) for r in mine)
    print(f"{rounds} kill -9 rounds, {len(received)} cosignatures received, {elapsed:.1f} s")


# ---------------------------------------------------------------- the quiet-log alarm


def test_a_log_gone_quiet_raises_one_alarm_per_silence(store: Path, tmp_path: Path) -> None:
    w = WitnessProcess(store, tmp_path / "alarm.log", "--alarm-after", "1").start()
    try:
        assert w.status()["alarms"] == []  # a log that never submitted does not alarm
        assert w.post(add(0, 3)[0]).status == 200
        alarms = wait_until(lambda: w.status()["alarms"], 10, what="the quiet-log alarm")
        assert len(alarms) == 1
        assert (alarms[0]["origin"], alarms[0]["last_size"]) == (ORIGIN, 3) and alarms[0]["silent_s"] >= 1
        assert w.status()["logs"][ORIGIN]["alarm"] is True
        assert re.search(rf"ERROR ALARM: no new checkpoint from {re.escape(ORIGIN)} for \d+ s \(last size 3\)", w.log())
        on_file = [json.loads(line) for line in (store / "alarms.log").read_text().splitlines()]
        assert on_file == alarms

        # Once per silence: still one while the silence lasts (the alarm is checked every 0.2 s) ...
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert len(w.status()["alarms"]) == 1
            time.sleep(0.1)
        # ... and a new checkpoint ends it, so the next silence alarms again.
        assert w.post(add(3, 5)[0]).status == 200
        assert w.status()["logs"][ORIGIN]["alarm"] is False
        alarms = wait_until(lambda: len(w.status()["alarms"]) == 2 and w.status()["alarms"], 10, what="alarm 2")
        assert alarms[1]["last_size"] == 5
    finally:
        assert w.stop() == 0
