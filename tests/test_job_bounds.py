"""The heavy jobs let go of the writer's lock (issue 14): the roll-up summarises before it takes the
lock, and the close issues its bills a block per lock hold, without ever issuing one twice.

Real DuckDB files through the real writer; how long sealing waits is measured in
bench/jobs.py (`cityledger bench --job ...`), not here.
"""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from bench.jobs import history_values, previous_month, window_gaps
from ledger.chain.protocol import sign_reading
from ledger.chain.records import Batch, LedgeredReading
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.writer import LedgerWriter, Sealed
from ledger.store import device_days

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
HOUR = 3_600_000


def _writer(tmp_path: Path, blocks: int = 6) -> LedgerWriter:
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    key = SigningKey(b"\x05" * 32)
    writer.enroll_device("wm-d01-000001", "water", "d01", key.verify_key.encode().hex())
    for block in range(blocks):
        writer.commit(
            Batch(
                readings=[
                    LedgeredReading(
                        sign_reading(
                            key,
                            device="wm-d01-000001",
                            kind="water",
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
    return writer


def _days(writer: LedgerWriter) -> list[tuple[object, ...]]:
    return writer.store.con.execute("SELECT * FROM device_days ORDER BY device, day").fetchall()


def test_a_summary_made_without_the_lock_writes_what_the_locked_roll_up_wrote(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    try:
        con = writer.store.con
        con.execute("BEGIN TRANSACTION")
        while device_days.roll_up_next(writer.store, 25) is not None:
            pass
        expected = _days(writer)
        con.execute("ROLLBACK")
        assert expected and _days(writer) == [] and device_days.rolled_up(writer.store) == -1
        done = billing_ops.roll_up(writer, max_readings=25)
        assert done["chunks"] > 1 and done["readings"] == 60 and done["height"] == writer.height
        assert _days(writer) == expected
    finally:
        writer.close()


def test_a_summary_is_not_stored_once_another_roll_up_moved_the_mark(tmp_path: Path) -> None:
    writer = _writer(tmp_path, blocks=2)
    try:
        stale = device_days.summarise_next(writer.store, 1_000)
        assert stale is not None and stale.lo == -1 and stale.hi == writer.height and stale.readings == 20
        billing_ops.roll_up(writer)
        assert device_days.store_summary(writer.store, stale) is False
        assert device_days.summarise_next(writer.store, 1_000) is None
    finally:
        writer.close()


def test_a_roll_up_stops_at_the_head_it_started_from(tmp_path: Path) -> None:
    writer = _writer(tmp_path, blocks=3)
    try:
        capped = device_days.summarise_next(writer.store, 1_000, upto=writer.height - 1)
        assert capped is not None and capped.hi == writer.height - 1 and capped.readings == 20
        assert device_days.store_summary(writer.store, capped)
        assert device_days.summarise_next(writer.store, 1_000, upto=writer.height - 1) is None
        assert billing_ops.roll_up(writer)["height"] == writer.height
    finally:
        writer.close()


def _bills(n: int) -> list[dict[str, object]]:
    return [{"account": f"hh-{i:03d}", "total": f"{i}.00", "lines": []} for i in range(n)]


def test_bills_are_issued_a_block_at_a_time_and_never_twice(tmp_path: Path) -> None:
    writer = _writer(tmp_path, blocks=0)
    try:
        height = writer.height

        # Another close issues hh-004 while this one is between blocks: it must not be issued again.
        def meanwhile(sealed: Sealed) -> None:
            if sealed.height == height + 1:
                writer.store.con.execute(
                    "INSERT INTO bills VALUES ('hh-004', '2026-01', 0, '4.00', '{}', 'x', ?)", [sealed.height]
                )

        writer.on_sealed.append(meanwhile)
        first = billing_ops.issue_bills(writer, "2026-01", _bills(5), per_block=2)
        assert first == {"month": "2026-01", "issued": 4, "already_issued": 0}
        assert writer.height == height + 2  # hh-000/001, then hh-002/003; hh-004's block had nothing left
        rows = writer.store.con.execute("SELECT account, height FROM bills ORDER BY account").fetchall()
        assert rows == [
            ("hh-000", height + 1),
            ("hh-001", height + 1),
            ("hh-002", height + 2),
            ("hh-003", height + 2),
            ("hh-004", height + 1),
        ]
        again = billing_ops.issue_bills(writer, "2026-01", _bills(6), per_block=2)
        assert again == {"month": "2026-01", "issued": 1, "already_issued": 5} and writer.height == height + 3
    finally:
        writer.close()


def test_the_bench_measures_gaps_ending_in_the_window_and_the_one_across_its_end() -> None:
    sealed = [(1, 1_000), (2, 1_400), (3, 2_100), (4, 2_300), (5, 5_000), (6, 5_200)]
    assert window_gaps(sealed, 1_500, 3_000) == [700, 200, 2_700]
    assert window_gaps(sealed, 6_000, 7_000) == []
    assert previous_month(T0) == "2025-12"
    values = history_values("water", 3, 96 * 2)
    assert len(values) == 192 and all(b >= a for a, b in zip(values, values[1:]))
