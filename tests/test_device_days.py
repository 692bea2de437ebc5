"""Daily summaries: a history condensed from them bills exactly as every reading would.

The pure `condense` is checked on hand-made days; `history` over a real DuckDB
ledger is checked against a full read of `readings` for random meters and
parking spaces with drops, lost reports, silences and late arrivals, rolled up
at random moments (so some days are summarised, some stale, some not at all).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.billing import rules as billing
from ledger.billing.device_days import DAY_MS, Day, condense, history, meter_quiet, space_quiet
from ledger.billing.rules import Point
from ledger.chain.protocol import sign_reading
from ledger.chain.records import Batch, LedgeredReading
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.writer import LedgerWriter
from ledger.store import device_days
from ledger.store.store import Store

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
HOUR = 3_600_000


def _day(d: int, first: Point, last: Point, **kw: int) -> Day:
    counts = {"drops": 0, "breaks": 0, "changes": 1, "max_gap": HOUR, **kw}
    return Day(d, last.seq - first.seq + 1, first, last, **counts)


def test_a_quiet_day_is_its_first_and_last_reading_with_the_step_between_checked() -> None:
    d = T0 // DAY_MS
    days = [
        _day(d, Point(T0, 10, 1), Point(T0 + 20 * HOUR, 30, 21)),
        _day(d + 1, Point(T0 + DAY_MS, 31, 22), Point(T0 + DAY_MS + 20 * HOUR, 50, 42)),
    ]
    pts, checked = condense(days, [], T0 - DAY_MS, T0 + 3 * DAY_MS, meter_quiet, set())
    assert [p.seq for p in pts] == [1, 21, 22, 42]
    assert checked == {1, 22}
    used = billing.consumption(pts, T0, T0 + 2 * DAY_MS - 1, checked=checked)
    assert used.amount == 40 and not [f for f in used.flags if "missing" in f]


def test_without_the_checked_mark_the_condensed_steps_would_be_flagged_as_lost_readings() -> None:
    d = T0 // DAY_MS
    pts, _ = condense(
        [_day(d, Point(T0, 10, 1), Point(T0 + 20 * HOUR, 30, 21))], [], T0, T0 + DAY_MS, meter_quiet, set()
    )
    assert any("readings missing between seq 1 and 21" in f for f in billing.consumption(pts, T0, T0 + DAY_MS).flags)


def test_a_parking_day_with_a_long_silence_is_not_quiet() -> None:
    # A stay the space said nothing about for more than 6 hours is flagged (billing.sessions), so such a
    # day must be read in full: condensed to its first and last report, the silence would be lost.
    d = T0 // DAY_MS
    taken = _day(d, Point(T0, 1, 1), Point(T0 + 20 * HOUR, 1, 3), changes=0, max_gap=HOUR)
    assert space_quiet(taken)
    assert not space_quiet(_day(d, Point(T0, 1, 1), Point(T0 + 20 * HOUR, 1, 3), changes=0, max_gap=7 * HOUR))
    full = [Point(T0, 1, 1), Point(T0 + 13 * HOUR, 1, 2), Point(T0 + 20 * HOUR, 1, 3), Point(T0 + 21 * HOUR, 0, 4)]
    assert any("no report for 13.0 h after seq 1" in f for f in billing.sessions(full)[0].flags)


def test_a_day_that_is_not_quiet_must_be_read_in_full() -> None:
    d = T0 // DAY_MS
    noisy = _day(d, Point(T0, 10, 1), Point(T0 + 20 * HOUR, 5, 21), drops=1)
    assert not meter_quiet(noisy)
    try:
        condense([noisy], [], T0, T0 + DAY_MS, meter_quiet, set())
    except ValueError as exc:
        assert "not expanded" in str(exc)
    else:
        raise AssertionError("a noisy day was condensed")
    raw = [Point(T0, 10, 1), Point(T0 + HOUR, 5, 2)]
    pts, checked = condense([noisy], raw, T0, T0 + DAY_MS, meter_quiet, {d})
    assert pts == raw and not checked


def test_trimming_keeps_only_the_nearest_reading_either_side_and_drops_broken_checked_steps() -> None:
    d = T0 // DAY_MS
    days = [
        _day(d - 1, Point(T0 - DAY_MS, 0, 1), Point(T0 - HOUR, 9, 24)),
        _day(d + 2, Point(T0 + 2 * DAY_MS, 20, 50), Point(T0 + 2 * DAY_MS + HOUR, 21, 51)),
    ]
    raw = [Point(T0 + HOUR, 10, 25), Point(T0 + 2 * HOUR, 11, 26)]
    pts, checked = condense(days, raw, T0, T0 + DAY_MS, meter_quiet, {d, d + 1})
    assert [p.seq for p in pts] == [24, 25, 26, 50]
    assert not checked  # day d-1 lost its first reading and day d+2 its last


def test_day_ranges_merge_consecutive_days() -> None:
    assert device_days.day_ranges([3, 1, 2, 7]) == [(DAY_MS, 4 * DAY_MS - 1), (7 * DAY_MS, 8 * DAY_MS - 1)]


# ---------------------------------------------------------------- against a full read


def _full(store: Store, device: str, start: int, end: int) -> list[Point]:
    """What billing read before the summaries: every reading in range plus the nearest either side."""
    rows = store.con.execute(
        """
        (SELECT ts, value, seq FROM readings WHERE device = $1 AND ts < $2 ORDER BY ts DESC, seq DESC LIMIT 1)
        UNION ALL (SELECT ts, value, seq FROM readings WHERE device = $1 AND ts BETWEEN $2 AND $3)
        UNION ALL (SELECT ts, value, seq FROM readings WHERE device = $1 AND ts > $3 ORDER BY ts, seq LIMIT 1)
        """,
        [device, start, end],
    ).fetchall()
    return sorted((Point(*r) for r in rows), key=lambda p: (p.ts, p.seq))


STEP = st.tuples(
    st.sampled_from(["ok"] * 12 + ["drop", "lost", "silence", "flip"]),
    st.integers(1, 3),  # 1 = rolled up after this block, 2/3 = not yet
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=4, max_size=60), late=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_history_bills_and_parks_exactly_as_a_full_read(steps: list[tuple[str, int]], late: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp) / "home")
        initialize(home)
        writer = LedgerWriter.open(home)
        try:
            keys = {d: SigningKey(bytes([i + 1]) * 32) for i, d in enumerate(("wm-d01-000001", "ps-d01-000001"))}
            for device, key in keys.items():
                writer.enroll_device(
                    device, "water" if device.startswith("wm") else "parking", "d01", key.verify_key.encode().hex()
                )
            seq = {d: 0 for d in keys}
            value = {"wm-d01-000001": 100_000, "ps-d01-000001": 0}
            ts = T0 + (seed % 24) * HOUR
            held: list[LedgeredReading] = []  # readings that arrive late, in a later block
            for n, (what, roll) in enumerate(steps):
                rows = []
                ts += 4 * HOUR + (9 * HOUR if what == "silence" else 0)
                for device, key in keys.items():
                    seq[device] += 2 if what == "lost" else 1
                    if device.startswith("wm"):
                        value[device] += -50 if what == "drop" else 7
                    elif what == "flip":
                        value[device] = 1 - value[device]
                    r = LedgeredReading(
                        sign_reading(
                            key,
                            device=device,
                            kind="water" if device.startswith("wm") else "parking",
                            seq=seq[device],
                            ts=ts,
                            value=value[device],
                        ),
                        ts,
                    )
                    (held if n % 5 == late and late else rows).append(r)
                if n % 7 == 6 and held:
                    rows, held = rows + held, []
                if rows:
                    writer.commit(Batch(readings=rows))
                if roll == 1:
                    billing_ops.roll_up(writer, max_readings=7)
            if held:
                writer.commit(Batch(readings=held))
            store = writer.store
            for device, quiet in (("wm-d01-000001", meter_quiet), ("ps-d01-000001", space_quiet)):
                for start, end in ((T0, ts), (T0 + DAY_MS + 5 * HOUR, ts - DAY_MS), (T0 + 2 * DAY_MS, T0 + 3 * DAY_MS)):
                    if end <= start:
                        continue
                    full = _full(store, device, start, end)
                    pts, checked = history(store, device, start, end, quiet)
                    assert {p.seq for p in full} <= {p.seq for p in pts} | _inside_checked(pts, checked)
                    if quiet is meter_quiet:
                        a = billing.consumption(full, start, end)
                        b = billing.consumption(pts, start, end, checked=checked)
                        assert (a.amount, a.flags, a.rests_on) == (b.amount, b.flags, b.rests_on)
                    else:
                        a = [vars(s) for s in billing.sessions(full)]
                        assert a == [vars(s) for s in billing.sessions(pts, checked=checked)]
        finally:
            writer.close()


def _inside_checked(pts: list[Point], checked: frozenset[int]) -> set[int]:
    """Seqs strictly inside a checked step: left out of the history on purpose."""
    out: set[int] = set()
    for a, b in zip(pts, pts[1:]):
        if a.seq in checked:
            out |= set(range(a.seq + 1, b.seq))
    return out


def test_roll_up_catches_up_in_chunks_and_then_has_nothing_to_do(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    try:
        key = SigningKey(b"\x07" * 32)
        writer.enroll_device("em-d01-000001", "electricity", "d01", key.verify_key.encode().hex())
        for block in range(6):
            writer.commit(
                Batch(
                    readings=[
                        LedgeredReading(
                            sign_reading(
                                key,
                                device="em-d01-000001",
                                kind="electricity",
                                seq=block * 10 + i + 1,
                                ts=T0 + (block * 10 + i) * HOUR,
                                value=block * 10 + i,
                            ),
                            T0,
                        )
                        for i in range(10)
                    ]
                )
            )
        seen: list[tuple[int, int]] = []
        first = billing_ops.roll_up(writer, max_readings=25, progress=lambda h, top: seen.append((h, top)))
        assert first["readings"] == 60 and first["chunks"] > 1 and first["height"] == writer.height
        assert [h for h, _ in seen] == sorted(h for h, _ in seen)
        assert billing_ops.roll_up(writer) == {"height": writer.height, "chunks": 0, "readings": 0}
        rows = writer.store.con.execute(
            "SELECT day, n, first_seq, last_seq, breaks, max_gap FROM device_days ORDER BY day"
        ).fetchall()
        assert [r[1] for r in rows] == [24, 24, 12]  # 60 hourly readings over three UTC days
        assert rows[0][2:] == (1, 24, 0, HOUR)
    finally:
        writer.close()


def test_the_scheduler_job_rolls_up_through_the_ledger_api(tmp_path: Path) -> None:
    from ledger.service.scheduler import roll_up_job

    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    key = SigningKey(b"\x09" * 32)
    writer.enroll_device("gm-d01-000001", "gas", "d01", key.verify_key.encode().hex())
    writer.commit(
        Batch(
            readings=[
                LedgeredReading(
                    sign_reading(key, device="gm-d01-000001", kind="gas", seq=i + 1, ts=T0 + i * HOUR, value=i), T0
                )
                for i in range(30)
            ]
        )
    )
    height = writer.height
    writer.close()  # no ingest: the job opens the file itself
    assert roll_up_job(home) == {"height": height, "chunks": 1, "readings": 30}
    store = Store.open(home.database, read_only=True)
    try:
        pts, checked = history(store, "gm-d01-000001", T0 + 2 * DAY_MS, T0 + 3 * DAY_MS, meter_quiet)
        assert device_days.rolled_up(store) == height and pts[-1].seq == 30 and not checked
    finally:
        store.close()


def test_a_seq_at_the_protocols_limit_followed_by_another_reading_rolls_up_and_bills(tmp_path: Path) -> None:
    """A meter sending seq 2^63-1 and then one more reading must not break the roll-up or the bills."""
    from ledger.chain.protocol import SEQ_MAX
    from ledger.store.billing_queries import meters_needing_checks

    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    try:
        key = SigningKey(b"\x0b" * 32)
        writer.enroll_device("em-d01-000009", "electricity", "d01", key.verify_key.encode().hex())
        seqs = [1, SEQ_MAX, 2]
        writer.commit(
            Batch(
                readings=[
                    LedgeredReading(
                        sign_reading(
                            key, device="em-d01-000009", kind="electricity", seq=seq, ts=T0 + i * HOUR, value=100 + i
                        ),
                        T0,
                    )
                    for i, seq in enumerate(seqs)
                ]
            )
        )
        assert billing_ops.roll_up(writer)["readings"] == 3
        breaks = writer.store.con.execute("SELECT breaks FROM device_days WHERE device = 'em-d01-000009'").fetchall()
        assert breaks == [(2,)]  # 1 -> 2^63-1 and 2^63-1 -> 2 are both breaks
        assert meters_needing_checks(writer.store, T0, T0 + DAY_MS, HOUR) == {"em-d01-000009"}
    finally:
        writer.close()
