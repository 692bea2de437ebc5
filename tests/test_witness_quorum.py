"""A city's checkpoints cosigned by independent witnesses (C2SP tlog-witness, tlog-policy), end to end.

Three `cityledger witness serve` processes, each with a key made in its own store, trust the
city's log key; the city's policy asks for 2 of the 3. Ingest publishes a checkpoint only with
a quorum of cosignatures, a citizen's receipt carries them, and with the quorum gone nothing is
published and the ledger alarms. Then the ledger key's holder tries to show two histories: a
split view cannot gather a quorum, and a checkpoint inconsistent with what the witnesses
cosigned is refused by every one of them.
"""

from __future__ import annotations

import base64
import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import Checkpoint, make_verifier, parse_checkpoint, parse_note, parse_vkey, signed_checkpoint
from ledger.chain.tlog import TILE_WIDTH, Tile, tile_hashes
from ledger.processes import Child, start
from ledger.service.tiles import TileDirectory
from tests.gotools import Tlogcheck
from tests.support.broker import wait_for
from tests.support.stack import Stack


@dataclass
class Witness:
    name: str
    store: Path
    vkey: str
    child: Child | None = None

    @property
    def port(self) -> int:
        return int((self.store / "port").read_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def start_witness(w: Witness) -> None:
    (w.store / "port").unlink(missing_ok=True)
    log = w.store.parent / f"{w.store.name}.log"
    w.child = start(
        [sys.executable, "-m", "ledger.cli", "witness", "serve", "--store", str(w.store), "--port", "0"],
        stdout=log,
        stderr=log,
    )
    wait_for(lambda: (w.store / "port").exists(), 20, f"witness {w.name} listening")


def stop_witness(w: Witness) -> None:
    if w.child is not None and w.child.alive:
        w.child.stop(signal.SIGTERM)


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{url}/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, list[Witness]]]:
    monkeypatch.setenv("CITYLEDGER_WITNESS_ALARM_AFTER", "1")
    with Stack(tmp_path / "home") as stack:
        log_vkey = stack.cli("tlog", "vkey", check=True).stdout.strip()
        witnesses = []
        for i in (1, 2, 3):
            store = tmp_path / f"w{i}"
            vkey = cli("witness", "init", "--store", str(store), "--name", f"witness.example/w{i}").strip()
            cli("witness", "trust", "--store", str(store), log_vkey)
            w = Witness(f"w{i}", store, vkey)
            start_witness(w)
            witnesses.append(w)
        policy = tmp_path / "policy"
        policy.write_text(
            f"log {log_vkey}\n"
            + "".join(f"witness {w.name} {w.vkey} {w.url}\n" for w in witnesses)
            + "group civic 2 w1 w2 w3\nquorum civic\n"
        )
        stack.cli("tlog", "policy", "--set", str(policy), check=True)
        try:
            yield stack, witnesses
        finally:
            for w in witnesses:
                stop_witness(w)


def cosigned_checkpoint(stack: Stack, at_least: int) -> dict[str, object]:
    def ready() -> bool:
        log = stack.status()["log"]
        return log["checkpoint_size"] == log["size"] and len(log["cosigners"]) >= at_least

    wait_for(ready, 30, f"a checkpoint of the whole log cosigned by {at_least} witnesses")
    return stack.status()["log"]


def test_receipts_carry_a_quorum_of_witnesses_and_without_one_nothing_is_published(
    city: tuple[Stack, list[Witness]], tmp_path: Path, tlogcheck: Tlogcheck
) -> None:
    stack, witnesses = city
    dev = stack.enroll("wm-d01-000001")
    stack.ledger_readings(dev, 20)
    log = cosigned_checkpoint(stack, 2)
    assert log["policy"] == "2 of w1, w2, w3"
    note = parse_note((stack.home.tlog / "checkpoint").read_bytes())
    for w in witnesses:
        if w.name in log["cosigners"]:  # type: ignore[operator]
            # The Go cross-check of each witness's cosignature.
            (tmp_path / "cp").write_bytes(note.encode())
            out = tlogcheck("cosig", w.vkey, str(tmp_path / "cp"))
            assert out.returncode == 0, out.stderr

    proof = tmp_path / "r.tlog-proof"
    stack.cli("receipt", dev.device, "3", "--format", "tlog-proof", "--out", str(proof), check=True)
    args = ["verify-receipt", str(proof), "--ledger-key", stack.cli("tlog", "vkey").stdout.strip()]
    args += ["--device-key", dev.key.verify_key.encode().hex(), "--policy", str(tmp_path / "policy")]
    ok = stack.cli(*args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok   cosignatures" in ok.stdout
    # The same receipt against a policy whose quorum is a witness that never saw it: refused.
    strict = tmp_path / "strict-policy"
    other = SigningKey.generate().verify_key.encode()
    strict.write_text(
        (tmp_path / "policy").read_text().replace("quorum civic\n", "")
        + f"witness elsewhere {make_verifier('witness.example/x', other, 4).vkey()}\nquorum elsewhere\n"
    )
    refused = stack.cli(*args[:-1], str(strict))
    assert refused.returncode == 1 and "FAIL cosignatures" in refused.stdout, refused.stdout + refused.stderr

    # Two witnesses down: the quorum cannot be met, nothing new is published, and the ledger alarms.
    stop_witness(witnesses[0])
    stop_witness(witnesses[1])
    published = stack.status()["log"]["checkpoint_size"]
    stack.ledger_readings(dev, 5)
    wait_for(lambda: stack.status()["log"]["alarm"] is not None, 30, "the ledger's alarm")
    assert stack.status()["log"]["checkpoint_size"] == published
    assert "no checkpoint has met the witness policy" in stack.cli("status").stdout

    # Back: publication resumes where it stopped, and the alarm clears.
    start_witness(witnesses[0])
    start_witness(witnesses[1])
    policy = tmp_path / "policy"
    text = policy.read_text()
    for w in witnesses[:2]:  # a restarted witness may listen on another port: the policy follows it
        text = "\n".join(
            f"witness {w.name} {w.vkey} {w.url}" if line.startswith(f"witness {w.name} ") else line
            for line in text.splitlines()
        )
    policy.write_text(text + "\n")
    stack.cli("tlog", "policy", "--set", str(policy), check=True)
    log = cosigned_checkpoint(stack, 2)
    assert log["alarm"] is None and log["checkpoint_size"] > published  # type: ignore[operator]


def test_a_split_view_gathers_no_quorum_and_a_rewritten_history_no_cosignature(
    city: tuple[Stack, list[Witness]],
) -> None:
    """The ledger key's holder forks the log after what every witness cosigned: one branch shown
    to two witnesses, the other to the third and then to the first two. The other branch never
    reaches 2 of 3; a checkpoint of a history rewritten below the cosigned size gets nothing."""
    stack, witnesses = city
    dev = stack.enroll("wm-d01-000002")
    stack.ledger_readings(dev, 40)
    cosigned_checkpoint(stack, 3)  # every witness at the same size
    stack.stop_ingest()
    note = parse_note((stack.home.tlog / "checkpoint").read_bytes())
    held = parse_checkpoint(note.text)
    files = TileDirectory(stack.home.tlog)
    leaves: list[bytes] = []
    for n in range((held.size + TILE_WIDTH - 1) // TILE_WIDTH):
        tile = Tile(0, n, min(TILE_WIDTH, held.size - n * TILE_WIDTH))
        leaves += tile_hashes(tile, files.tile(tile))
    assert merkle.root(leaves) == held.root
    key = SigningKey(bytes.fromhex(stack.home.ledger_key.read_text().strip()))
    origin = held.origin

    def submit(w: Witness, branch: list[bytes], old: int = held.size) -> int:
        checkpoint = signed_checkpoint(Checkpoint(origin, len(branch), merkle.root(branch)), [key])
        proof = merkle.consistency_proof(branch, old) if 0 < old < len(branch) else []
        body = f"old {old}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n"
        return post(w.url, body + checkpoint.encode())[0]

    a = leaves + [merkle.leaf_hash(b'{"entry":"note","text":"branch a"}')]
    b = leaves + [merkle.leaf_hash(b'{"entry":"note","text":"branch b"}')]
    w1, w2, w3 = witnesses
    assert submit(w1, a) == 200 and submit(w2, a) == 200
    assert submit(w3, b) == 200
    # w1 and w2 now hold size a; the old they are asked from must be theirs, and b is not a's.
    assert submit(w1, b, old=len(a)) == 422 and submit(w2, b, old=len(a)) == 422
    assert submit(w1, b) == 409  # asked from the size they held before: they say where they are

    # A history rewritten below what they cosigned: no valid consistency proof exists for it.
    rewritten = [merkle.leaf_hash(b"other")] + leaves[1:] + [merkle.leaf_hash(b"more")] * 3
    for w in witnesses:
        size = json.loads(urllib.request.urlopen(f"{w.url}/status", timeout=5).read())["logs"][origin]["size"]
        forged = signed_checkpoint(Checkpoint(origin, len(rewritten), merkle.root(rewritten)), [key])
        proof = merkle.consistency_proof(leaves + [merkle.leaf_hash(b"x")] * 3, size) if size < len(rewritten) else []
        body = f"old {size}\n".encode() + b"".join(base64.b64encode(h) + b"\n" for h in proof) + b"\n"
        assert post(w.url, body + forged.encode())[0] == 422, w.name
    assert parse_vkey(w1.vkey).alg == 4
