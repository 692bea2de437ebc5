"""The device outbox on real SQLite files: seq allocation, acknowledgements, crashes, a full disk."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge.outbox import Outbox, OutboxFull
from ledger.chain.protocol import Reading, parse_reading, sign_reading, verify_reading
from ledger.processes import PIPE, Child, start

KEY = SigningKey(bytes(range(1, 33)))
REPO = Path(__file__).resolve().parent.parent


def maker(device: str, value: int = 0, ts: int = 1_764_000_000_000):
    def make(seq: int) -> Reading:
        return sign_reading(KEY, device=device, kind="water", seq=seq, ts=ts + seq, value=value + seq)

    return make


def append(outbox: Outbox, device: str, value: int = 0) -> Reading:
    return outbox.append(device, maker(device, value))


# ---------------------------------------------------------------- seq allocation


def test_seqs_start_at_one_and_are_contiguous_per_device(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        assert [append(outbox, "a").seq for _ in range(3)] == [1, 2, 3]
        assert [append(outbox, "b").seq for _ in range(2)] == [1, 2]
        assert append(outbox, "a").seq == 4
        assert outbox.count() == 6 and outbox.count("a") == 4 and outbox.count("b") == 2
        assert outbox.devices() == ["a", "b"]
        state = outbox.state("a")
        assert (state.last_seq, state.acked_seq, state.last_value, state.next_seq) == (4, 0, 4, 5)


def test_stored_payload_is_the_signed_reading(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        reading = append(outbox, "a", value=100)
        (entry,) = outbox.pending("a")
        assert entry.payload == reading.payload() == outbox.get("a", 1)
        parsed = parse_reading(entry.payload)
        assert isinstance(parsed, Reading) and parsed.seq == 1 and verify_reading(KEY.verify_key, parsed)


def test_seqs_are_never_reused_across_reopen_even_when_all_were_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as outbox:
        for _ in range(3):
            append(outbox, "a")
        outbox.acknowledge("a", 3)
        assert outbox.count() == 0
    with Outbox(path) as outbox:
        assert append(outbox, "a").seq == 4
        assert outbox.state("a").acked_seq == 3


def test_a_failed_signing_allocates_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        append(outbox, "a")

        def broken(seq: int) -> Reading:
            raise RuntimeError("key unavailable")

        with pytest.raises(RuntimeError):
            outbox.append("a", broken)
        with pytest.raises(ValueError):
            outbox.append("a", maker("someone-else"))  # the reading must be of this device and seq
        assert append(outbox, "a").seq == 2
        assert outbox.count("a") == 2


# ---------------------------------------------------------------- acknowledgements and order


def test_acknowledge_removes_exactly_up_to_n(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        for _ in range(10):
            append(outbox, "a")
        append(outbox, "b")
        assert outbox.acknowledge("a", 4) == 4
        assert [p.seq for p in outbox.pending("a")] == [5, 6, 7, 8, 9, 10]
        assert outbox.count("b") == 1, "another device's readings are untouched"
        assert outbox.acknowledge("a", 2) == 0, "an older ack changes nothing"
        assert outbox.state("a").acked_seq == 4
        assert outbox.acknowledge("a", 4) == 0
        assert outbox.get("a", 4) is None and outbox.get("a", 5) is not None
        with pytest.raises(ValueError):
            outbox.acknowledge("a", -1)


def test_an_ack_beyond_the_last_seq_moves_allocation_past_it(tmp_path: Path) -> None:
    """A device restored from an old backup must not reuse seqs the ledger already holds."""
    with Outbox(tmp_path / "o.sqlite") as outbox:
        append(outbox, "a")
        outbox.acknowledge("a", 500)
        assert outbox.count("a") == 0
        assert append(outbox, "a").seq == 501


def test_pending_is_oldest_first_with_limit_and_cursor(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        for _ in range(20):
            append(outbox, "a")
        assert [p.seq for p in outbox.pending("a", 5)] == [1, 2, 3, 4, 5]
        assert [p.seq for p in outbox.pending("a", 3, after=17)] == [18, 19, 20]
        assert outbox.pending("a", 3, after=20) == []
        assert outbox.pending("nobody") == []


# ---------------------------------------------------------------- crashes


def test_a_connection_abandoned_without_close_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    abandoned = Outbox(path)
    for _ in range(5):
        append(abandoned, "a")
    abandoned.acknowledge("a", 2)
    # No close(): another opener (the restarted firmware) sees every commit.
    with Outbox(path) as reopened:
        assert [p.seq for p in reopened.pending("a")] == [3, 4, 5]
        assert append(reopened, "a").seq == 6
    assert append(abandoned, "a").seq == 7, "two openers never get the same seq"


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from nacl.signing import SigningKey
    from edge.outbox import Outbox
    from ledger.chain.protocol import sign_reading

    key = SigningKey(bytes(range(1, 33)))
    outbox = Outbox(sys.argv[1])
    limit = int(sys.argv[2])
    n = 0
    while limit < 0 or n < limit:
        device = "dev-" + str(n % 3)
        reading = outbox.append(device, lambda seq: sign_reading(
            key, device=device, kind="water", seq=seq, ts=1_764_000_000_000 + seq, value=seq))
        n += 1
        print(device, reading.seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # die without closing anything
    """
)


def run_child(path: Path, limit: int) -> Child:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return start([sys.executable, "-c", CHILD, str(path), str(limit)], stdout=PIPE, text=True, env=env)


def assert_contiguous_and_signed(outbox: Outbox, device: str) -> int:
    entries = outbox.pending(device, 1_000_000)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    for entry in entries:
        reading = parse_reading(entry.payload)
        assert isinstance(reading, Reading) and reading.seq == entry.seq and reading.device == device
        assert verify_reading(KEY.verify_key, reading)
    assert outbox.state(device).last_seq == len(entries)
    return len(entries)


def test_kill_9_after_commits_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    child = run_child(path, 30)
    assert child.wait(timeout=60) == -signal.SIGKILL
    with Outbox(path) as outbox:
        assert [assert_contiguous_and_signed(outbox, f"dev-{i}") for i in range(3)] == [10, 10, 10]
        assert append(outbox, "dev-0").seq == 11


def test_kill_9_at_an_arbitrary_instruction_never_reuses_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    child = run_child(path, -1)
    assert child.stdout is not None
    printed: dict[str, int] = {}
    for _ in range(200):  # let it run mid-stream, then kill it wherever it is
        device, seq = child.stdout.readline().split()
        printed[device] = int(seq)
    child.stop(signal.SIGKILL, timeout=30)
    with Outbox(path) as outbox:
        for device, last_printed in printed.items():
            stored = assert_contiguous_and_signed(outbox, device)
            assert stored >= last_printed, "a committed (and so maybe published) reading was lost"
            assert outbox.append(device, maker(device)).seq == stored + 1


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_is_outboxfull_and_allocates_nothing(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024) as outbox:
        stored = 0
        with pytest.raises(OutboxFull, match="full"):
            for _ in range(10_000):
                append(outbox, "a")
                stored += 1
        assert stored > 10
        assert outbox.count("a") == stored and outbox.state("a").last_seq == stored
        # Acknowledged readings free their pages for new ones; the seq continues without a gap.
        outbox.acknowledge("a", stored)
        assert append(outbox, "a").seq == stored + 1
