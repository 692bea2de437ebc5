"""The transparency log of a running city (PROTOCOL.md section 7), end to end: Mosquitto, ingest,
`cityledger serve`, and the receipt a citizen gets, checked by our verifier and by the Go team's.

Everything runs as a user would run it: real processes on free ports, the CLI, HTTP.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.chain import merkle
from ledger.chain.notes import parse_checkpoint, parse_note
from ledger.chain.protocol import ChainTopics
from ledger.processes import Child, start
from tests.gotools import Tlogcheck
from tests.support.broker import client_log, close_client, connect_client, free_port, subscribe, wait_for
from tests.support.stack import SimDevice, Stack


def published(stack: Stack) -> tuple[int, bytes]:
    """(size, checkpoint file) of the newest published checkpoint."""
    data = (stack.home.tlog / "checkpoint").read_bytes()
    return parse_checkpoint(parse_note(data).text).size, data


def wait_for_checkpoint_of_everything(stack: Stack) -> bytes:
    """The checkpoint, once one covers every leaf the chain holds."""

    def covered() -> bool:
        log = stack.status()["log"]
        return log["checkpoint_size"] is not None and log["checkpoint_size"] == log["size"]

    wait_for(covered, 20, "a checkpoint of the whole log")
    return published(stack)[1]


@pytest.fixture
def served(stack: Stack) -> Iterator[str]:
    """`cityledger serve` on a free port; its URL."""
    port = free_port()
    log = stack.home.logs / "serve.log"
    child: Child = start(
        [sys.executable, "-m", "ledger.cli", "serve", "--port", str(port)], env=stack.env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(f"{url}/checkpoint", timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True  # serving, just no checkpoint yet
        except OSError:
            return False

    wait_for(up, 20, "cityledger serve")
    yield url
    child.stop()


def ledger_some(stack: Stack, dev: SimDevice, count: int) -> None:
    stack.ledger_readings(dev, count)


def test_a_citizens_tlog_proof_verifies_with_ours_and_with_go(
    stack: Stack, tmp_path: Path, tlogcheck: Tlogcheck
) -> None:
    dev = stack.enroll("wm-d01-000001")
    ledger_some(stack, dev, 300)  # past one full tile of 256
    wait_for_checkpoint_of_everything(stack)
    proof = tmp_path / "reading.tlog-proof"
    stack.cli("receipt", dev.device, "7", "--format", "tlog-proof", "--out", str(proof), check=True)
    vkey = stack.cli("tlog", "vkey", check=True).stdout.strip()
    device_key = dev.key.verify_key.encode().hex()

    ours = stack.cli("verify-receipt", str(proof), "--ledger-key", vkey, "--device-key", device_key)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert "receipt valid" in ours.stdout
    bare = stack.cli("verify-receipt", str(proof), "--ledger-key", stack.cli("tlog", "vkey").stdout.split("+")[0])
    assert bare.returncode == 2  # no device key: said so, not guessed
    hex_key = stack.api.ledger_key()
    assert stack.cli("verify-receipt", str(proof), "--ledger-key", hex_key, "--device-key", device_key).returncode == 0

    go = tlogcheck("tlogproof", vkey, str(proof))
    assert go.returncode == 0, go.stdout + go.stderr

    # Another device's key, another ledger's key, one changed byte: refused, naming the step.
    other = stack.cli("verify-receipt", str(proof), "--ledger-key", vkey, "--device-key", "11" * 32)
    assert other.returncode == 1 and "FAIL device_signature" in other.stdout
    data = bytearray(proof.read_bytes())
    data[len(data) // 2] ^= 0x01
    proof.write_bytes(bytes(data))
    assert stack.cli("verify-receipt", str(proof), "--ledger-key", vkey, "--device-key", device_key).returncode == 1
    assert tlogcheck("tlogproof", vkey, str(proof)).returncode == 1


def test_served_tiles_prove_inclusion_and_consistency_to_go(
    stack: Stack, served: str, tmp_path: Path, tlogcheck: Tlogcheck
) -> None:
    dev = stack.enroll("wm-d01-000002")
    ledger_some(stack, dev, 280)
    first = wait_for_checkpoint_of_everything(stack)
    ledger_some(stack, dev, 300)
    second = wait_for_checkpoint_of_everything(stack)
    old, new = parse_checkpoint(parse_note(first).text), parse_checkpoint(parse_note(second).text)
    assert new.size > old.size > 256

    vkey = stack.cli("tlog", "vkey", check=True).stdout.strip()
    served_checkpoint = urllib.request.urlopen(f"{served}/checkpoint", timeout=5).read()
    (tmp_path / "checkpoint").write_bytes(served_checkpoint)
    out = tlogcheck("checkpoint", vkey, str(tmp_path / "checkpoint"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:3] == [new.origin, str(new.size)]

    b64 = __import__("base64").b64encode
    consistency = tlogcheck(
        "consistency", served, str(old.size), b64(old.root).decode(), str(new.size), b64(new.root).decode()
    )
    assert consistency.returncode == 0, consistency.stderr
    for index in (0, 255, 256, new.size - 1):
        leaf = tmp_path / f"leaf-{index}"
        leaf.write_bytes(leaf_data(stack, index))
        inclusion = tlogcheck("inclusion", served, str(index), f"@{leaf}", str(new.size), b64(new.root).decode())
        assert inclusion.returncode == 0, inclusion.stderr


def leaf_data(stack: Stack, index: int) -> bytes:
    """The index-th leaf of the log, as the served entry bundle holds it."""
    from ledger.chain.tlog import TILE_WIDTH, Tile
    from ledger.service.tiles import TileDirectory

    size = stack.status()["log"]["size"]
    n = index // TILE_WIDTH
    tile = Tile(0, n, min(TILE_WIDTH, size - n * TILE_WIDTH))
    return TileDirectory(stack.home.tlog).bundle(tile)[index % TILE_WIDTH]


def test_serve_answers_with_the_cache_headers_of_tlog_tiles_and_nothing_else(stack: Stack, served: str) -> None:
    dev = stack.enroll("wm-d01-000003")
    ledger_some(stack, dev, 270)
    wait_for_checkpoint_of_everything(stack)

    def get(path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"{served}/{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    status, headers, body = get("tile/0/000")
    assert status == 200 and len(body) == 256 * 32
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["Content-Type"] == "application/octet-stream"
    size = stack.status()["log"]["checkpoint_size"]
    status, headers, body = get(f"tile/0/001.p/{size - 256}")
    assert status == 200 and len(body) == (size - 256) * 32
    assert "immutable" not in headers["Cache-Control"]
    status, headers, body = get("checkpoint")
    assert status == 200 and headers["Cache-Control"] == "public, max-age=5"
    assert parse_checkpoint(parse_note(body).text).size >= size
    status, _, body = get("tile/entries/000")
    assert status == 200
    for path in ("../ledger.duckdb", ".state", "tile/0/0", "tile/00/000", "keys/ledger.key", "tile/0/000.p/256"):
        assert get(path)[0] == 404, path
    assert get("checkpoint", "POST")[0] == 405
    assert get("checkpoint", "DELETE")[0] == 405


def test_the_checkpoint_is_published_retained_over_mqtt(stack: Stack) -> None:
    dev = stack.enroll("wm-d01-000004")
    ledger_some(stack, dev, 5)
    expected = wait_for_checkpoint_of_everything(stack)
    secret = __import__("json").loads(stack.home.service_secret("dashboard").read_text())
    watcher = connect_client(stack.broker.port, secret["username"], secret["password"], client_id="tlog-observer")
    topic = ChainTopics().tlog_checkpoint
    try:
        subscribe(watcher, topic)
        wait_for(
            lambda: expected in [m.payload for m in client_log(watcher).received(topic)], 10, "retained checkpoint"
        )
    finally:
        close_client(watcher)


def test_a_checkpoint_covers_new_leaves_within_seconds(stack: Stack) -> None:
    """The checkpoint follows the head: every leaf is under a published checkpoint soon after it is sealed."""
    dev = stack.enroll("wm-d01-000005")
    started = time.monotonic()
    ledger_some(stack, dev, 3)
    wait_for_checkpoint_of_everything(stack)
    leaves = stack.status()["log"]["size"]
    root = parse_checkpoint(parse_note(published(stack)[1]).text).root
    from ledger.chain.tlog import root_at
    from ledger.service.tiles import TileDirectory

    assert root_at(TileDirectory(stack.home.tlog), leaves) == root
    assert merkle.HASH_SIZE == len(root)
    assert time.monotonic() - started < 60


def test_a_monitor_follows_the_citys_log_over_http_alone(stack: Stack, served: str, tmp_path: Path) -> None:
    """`cityledger monitor` with nothing but the URL and the log key: every reading re-verified against
    the enrolments in the log itself, then only what is new; a served bundle altered is an alarm."""
    dev = stack.enroll("wm-d01-000006")
    ledger_some(stack, dev, 300)
    wait_for_checkpoint_of_everything(stack)
    vkey = stack.cli("tlog", "vkey", check=True).stdout.strip()
    state = tmp_path / "monitor"
    monitor = ("monitor", "--url", served, "--ledger-key", vkey, "--state", str(state), "--once")
    first = stack.cli(*monitor)
    assert first.returncode == 0, first.stdout + first.stderr
    size = stack.status()["log"]["size"]
    assert f"size {size}: {size} new entries checked, 300 readings" in first.stdout, first.stdout

    ledger_some(stack, dev, 20)
    wait_for_checkpoint_of_everything(stack)
    second = stack.cli(*monitor)
    assert second.returncode == 0, second.stdout + second.stderr
    grown = stack.status()["log"]["size"]
    assert f"size {grown}: {grown - size} new entries checked, 20 readings" in second.stdout, second.stdout

    # Someone with write access to the public copy alters one byte of a full entry bundle.
    bundle = stack.home.tlog / "tile" / "entries" / "000"
    data = bytearray(bundle.read_bytes())
    data[100] ^= 0x01
    bundle.write_bytes(bytes(data))
    fresh = stack.cli("monitor", "--url", served, "--ledger-key", vkey, "--state", str(tmp_path / "m2"), "--once")
    assert fresh.returncode == 3, fresh.stdout + fresh.stderr
    assert "ALARM" in fresh.stderr
