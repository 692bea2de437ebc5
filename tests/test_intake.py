"""PROTOCOL.md section 3's outcome table as a pure function (no broker, no database)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pytest
from nacl.signing import SigningKey

from ledger.chain.keyspans import KeySpan
from ledger.chain.protocol import FUTURE_TOLERANCE_MS, Reading, device_topic, sign_reading
from ledger.chain.records import Batch, DeviceRecord, LedgeredReading, QuarantineRow, Readings
from ledger.ingest.intake import Incoming, Intake, QuarantineCap, Screened, Screener, SeqState
from ledger.ingest.workers import pack, unpack

NOW = 1_764_000_000_000
KEY = SigningKey(bytes(range(32)))
DEV = DeviceRecord("wm-d01-000001", "water", "d01", None, KEY.verify_key.encode().hex(), "active", "-", 0)
TOPIC = device_topic("d01", "water", DEV.device, "reading")


def reading(seq: int, value: int = 10, ts: int = NOW, device: str = DEV.device, kind: str = "water") -> Reading:
    return sign_reading(KEY, device=device, kind=kind, seq=seq, ts=ts, value=value)


def msg(payload: bytes, topic: str = TOPIC) -> Incoming:
    return Incoming(topic, payload, NOW)


class FakeLedger:
    """What is "already ledgered", as the lookup sees it."""

    def __init__(self, rows: Iterable[Reading] = ()) -> None:
        self.rows = {(r.device, r.seq): (r.ts, r.value, r.sig) for r in rows}
        self.asked: list[list[tuple[str, int]]] = []

    def __call__(self, keys: Iterable[tuple[str, int]]) -> dict:
        keys = list(keys)
        self.asked.append(keys)
        return {k: self.rows[k] for k in keys if k in self.rows}


def classify(*messages: Incoming, ledgered: Iterable[Reading] = (), registry: dict | None = None):
    ledgered = list(ledgered)
    seqs = {}
    for r in ledgered:
        seqs.setdefault(r.device, SeqState()).add(r.seq)
    intake = Intake(seqs, FakeLedger(ledgered))
    return intake.classify(messages, registry if registry is not None else {DEV.device: DEV}, NOW)


def reasons(batch) -> list[str]:
    return [q.reason for q in batch.quarantine]


def test_a_good_reading_is_ledgered() -> None:
    batch = classify(msg(reading(1).payload()))
    assert [r.reading.seq for r in batch.readings] == [1] and not batch.quarantine


def test_a_late_reading_that_fills_a_gap_is_accepted() -> None:
    batch = classify(msg(reading(2).payload()), ledgered=[reading(1), reading(3)])
    assert [r.reading.seq for r in batch.readings] == [2]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"x" * 1025, "too_large"),
        (b"not json", "malformed"),
        (b"[1,2]", "malformed"),
        (reading(1).payload().replace(b'"seq":1', b'"seq":1.0'), "malformed"),
        (reading(1).payload()[:-1] + b',"extra":1}', "malformed"),
    ],
)
def test_shape_errors(payload: bytes, reason: str) -> None:
    assert reasons(classify(msg(payload))) == [reason]


def test_unknown_revoked_and_mismatched_devices() -> None:
    assert reasons(classify(msg(reading(1).payload()), registry={})) == ["unknown_device"]
    gone = DeviceRecord(DEV.device, "water", "d01", None, DEV.public_key, "revoked", "-", 0, 5)
    assert reasons(classify(msg(reading(1).payload()), registry={DEV.device: gone})) == ["revoked_device"]
    other_topic = device_topic("d02", "water", DEV.device, "reading")
    assert reasons(classify(msg(reading(1).payload(), topic=other_topic))) == ["topic_mismatch"]


def test_signature_then_future_then_accept() -> None:
    forged = reading(1).model_copy(update={"value": 11})
    assert reasons(classify(msg(forged.payload()))) == ["bad_signature"]
    ahead = reading(1, ts=NOW + FUTURE_TOLERANCE_MS + 1)
    assert reasons(classify(msg(ahead.payload()))) == ["future_timestamp"]
    edge = reading(1, ts=NOW + FUTURE_TOLERANCE_MS)
    assert len(classify(msg(edge.payload())).readings) == 1


def test_duplicate_versus_replay_versus_forgery_of_a_ledgered_seq() -> None:
    first = reading(1, value=10)
    batch = classify(msg(first.payload()), ledgered=[first])
    assert batch.duplicates == [(DEV.device, 1, NOW)] and not batch.quarantine and not batch.readings
    other = reading(1, value=99)  # validly signed, different contents
    assert reasons(classify(msg(other.payload()), ledgered=[first])) == ["replay"]
    forged = first.model_copy(update={"value": 99})
    assert reasons(classify(msg(forged.payload()), ledgered=[first])) == ["bad_signature"]


def test_a_duplicate_within_one_batch_is_counted_once() -> None:
    r = reading(1)
    batch = classify(msg(r.payload()), msg(r.payload()))
    assert len(batch.readings) == 1 and len(batch.duplicates) == 1


def test_status_messages() -> None:
    topic = device_topic("d01", "water", DEV.device, "status")
    batch = classify(msg(b"online", topic), msg(b"offline", topic), msg(b"<script>", topic))
    assert [s[1] for s in batch.statuses] == ["online", "offline"]
    assert reasons(batch) == ["malformed"]


def test_quarantine_keeps_at_most_4_kib_of_raw_bytes() -> None:
    batch = classify(msg(b"y" * 10_000))
    assert len(batch.quarantine[0].payload) == 4096


def test_seq_state_tracks_the_contiguous_prefix() -> None:
    s = SeqState()
    for seq in (1, 2, 5, 4):
        s.add(seq)
    assert s.hwm == 2 and s.above == {4, 5} and 3 not in s and 5 in s
    s.add(3)
    assert s.hwm == 5 and s.above == set()


def test_rejects_are_all_counted_but_stored_only_up_to_the_cap() -> None:
    from ledger.ingest.intake import QuarantineCap

    intake = Intake({}, FakeLedger(), QuarantineCap(per_hour=3))
    batch = intake.classify([msg(b"garbage %d" % i) for i in range(10)], {DEV.device: DEV}, NOW)
    assert len(batch.quarantine) == 3
    assert batch.rejects == {(DEV.device, NOW // 60_000, "malformed"): 10}
    later = intake.classify([msg(b"more")], {DEV.device: DEV}, NOW)
    assert later.quarantine == [] and sum(later.rejects.values()) == 1
    next_hour = Incoming(TOPIC, b"x", NOW + 3_600_000)
    assert len(intake.classify([next_hour], {DEV.device: DEV}, NOW).quarantine) == 1


def test_rejects_are_attributed_to_the_sender_not_to_the_claimed_device() -> None:
    claims_other = reading(1, device="wm-d01-999999")  # not enrolled, sent on DEV's topic
    batch = classify(msg(claims_other.payload()))
    assert reasons(batch) == ["unknown_device"] and batch.quarantine[0].device == DEV.device


def test_duplicates_are_all_counted_but_stored_only_up_to_the_cap() -> None:
    from ledger.ingest.intake import QuarantineCap

    first = reading(1)
    intake = Intake({DEV.device: SeqState(1)}, FakeLedger([first]), QuarantineCap(per_hour=2))
    batch = intake.classify([msg(first.payload()) for _ in range(5)], {DEV.device: DEV}, NOW)
    assert len(batch.duplicates) == 2 and batch.duplicate_counts == {(DEV.device, NOW // 60_000): 5}


# ---------------------------------------------------------------- screened elsewhere, settled here


def test_a_reading_screened_before_its_device_was_revoked_settles_as_revoked() -> None:
    screened = Screener().screen(msg(reading(1).payload()), {DEV.device: DEV}, NOW)
    assert isinstance(screened, Screened)
    gone = DeviceRecord(DEV.device, "water", "d01", None, DEV.public_key, "revoked", "-", 0, 5)
    intake = Intake({}, FakeLedger([]))
    batch = intake.settle([intake.recheck(screened, {DEV.device: gone}, NOW)])
    assert reasons(batch) == ["revoked_device"] and not batch.readings


def test_a_reading_screened_under_a_rotated_out_key_is_screened_again() -> None:
    screened = Screener().screen(msg(reading(1).payload()), {DEV.device: DEV}, NOW)
    rotated = DeviceRecord(
        DEV.device, "water", "d01", None, SigningKey(b"\x05" * 32).verify_key.encode().hex(), "active", "-", 0
    )
    intake = Intake({}, FakeLedger([]))
    batch = intake.settle([intake.recheck(screened, {DEV.device: rotated}, NOW)])
    assert reasons(batch) == ["bad_signature"]


def test_a_rejection_from_an_older_registry_is_screened_again() -> None:
    refused = Screener().screen(msg(reading(1).payload()), {}, NOW)  # the worker had not heard of the device yet
    assert isinstance(refused, QuarantineRow) and refused.reason == "unknown_device"
    intake = Intake({}, FakeLedger([]))
    again = intake.recheck(refused, {DEV.device: DEV}, NOW)
    assert isinstance(again, Screened)
    assert len(intake.settle([again]).readings) == 1
    malformed = Screener().screen(msg(b"{"), {}, NOW)
    assert intake.recheck(malformed, {DEV.device: DEV}, NOW) is malformed  # nothing the registry could change


def test_the_quarantine_cap_holds_per_hour_when_a_batch_goes_back_and_forth_across_the_hour() -> None:
    """A replay settled after later messages can be older than them: the cap must not reset on it."""
    cap = QuarantineCap(per_hour=3)
    hour = 3_600_000
    times = [10 * hour - 1, 10 * hour + 1] * 10  # 10:59:59.999, 11:00:00.001, 10:59:59.999, ...
    admitted = [t // hour for t in times if cap.admit("wm-d01-000001", t)]
    assert admitted.count(9) == 3 and admitted.count(10) == 3
    assert cap.admit("wm-d01-000002", 10 * hour + 2)  # per device


def test_a_reading_of_a_written_off_seq_that_arrives_after_all_is_ledgered_once() -> None:
    state = SeqState(1)
    state.settle_range(2, 3)  # an operator wrote seqs 2-3 off: the ack passes them
    intake = Intake({DEV.device: state}, FakeLedger([reading(1)]))
    first = intake.classify([msg(reading(2).payload()), msg(reading(2).payload())], {DEV.device: DEV}, NOW)
    assert [r.reading.seq for r in first.readings] == [2] and len(first.duplicates) == 1 and not first.quarantine
    assert state.hwm == 3


def test_readings_before_a_rotations_from_seq_verify_under_the_earlier_key() -> None:
    new = SigningKey(b"\x05" * 32)
    rotated = replace(
        DEV, public_key=new.verify_key.encode().hex(), key_from_seq=3, earlier_keys=(KeySpan(DEV.public_key, 0, 1),)
    )
    late_old = msg(reading(2).payload())  # signed before the rotation, sent after it
    new_key = msg(sign_reading(new, device=DEV.device, kind="water", seq=3, ts=NOW, value=10).payload())
    old_key_past = msg(reading(4).payload())  # the old key may not sign from seq 3 on
    batch = classify(late_old, new_key, old_key_past, registry={DEV.device: rotated})
    assert [r.reading.seq for r in batch.readings] == [2, 3] and reasons(batch) == ["bad_signature"]


def _settled(batch) -> tuple:
    return (
        [(r.reading.as_dict(), r.received_at) for r in batch.readings],
        sorted(batch.duplicates),
        sorted((q.reason, q.payload) for q in batch.quarantine),
    )


@pytest.mark.parametrize("chunks", [1, 2, 5])
def test_readings_settled_as_a_workers_columns_settle_as_they_would_one_by_one(chunks: int) -> None:
    """The hand-over's columns (ledger/ingest/workers.py) take the same path through the outcome table:
    fresh, a duplicate within the batch, a duplicate and a replay of what is ledgered, a written-off seq."""
    ledgered = [reading(1), reading(2)]
    sent = [reading(3), reading(4), reading(3), reading(1), reading(2, value=99), reading(6), reading(4, value=7)]
    screener = Screener()

    def fresh() -> Intake:
        seqs = {DEV.device: SeqState(2)}
        seqs[DEV.device].settle_range(5, 5)  # seq 5 written off, and then comes 6; 5 arrives below
        return Intake(seqs, FakeLedger(ledgered))

    outcomes = [screener.screen(msg(r.payload()), {DEV.device: DEV}, NOW) for r in [*sent, reading(5)]]
    one_by_one = fresh().settle(outcomes)
    size = -(-len(outcomes) // chunks)
    columns = [unpack(pack(outcomes[i : i + size]))[0] for i in range(0, len(outcomes), size)]
    assert _settled(fresh().settle([], [c for c in columns if c is not None])) == _settled(one_by_one)
    assert [r.reading.seq for r in one_by_one.readings] == [3, 4, 6, 5]
    assert sorted(seq for _, seq, _ in one_by_one.duplicates) == [1, 3]
    assert reasons(one_by_one) == ["replay", "replay"]


def test_readings_as_columns_and_as_rows_are_the_same_readings() -> None:
    rows = [LedgeredReading(reading(s, value=s * 10), NOW + s) for s in (1, 2, 3)]
    columns = Readings.of(rows)
    assert list(columns) == rows and columns[1] == rows[1] and len(columns) == 3
    assert columns.leaf == [r.reading.leaf_data() for r in rows]
    more = Readings()
    more.extend(columns, [0, 2])
    assert list(more) == [rows[0], rows[2]]
    assert Batch(readings=rows).readings == columns  # rows, as tests and tools give them
