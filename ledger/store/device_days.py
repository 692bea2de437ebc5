"""Per-device daily summaries of `readings` (the `device_days` table): the roll-up that writes
them, and the reads a device's history is rebuilt from (ledger/billing/device_days.py).

`readings` is stored in arrival order with no index, so one device's readings
over a year means reading the `device` column of the whole year. A bill does
not need most of them: on a day with no drop, no lost report and no long
silence, the register rose steadily from the day's first reading to its last,
and only those two (plus the checks already done) matter. `device_days` keeps,
per device and UTC day, the first and last reading and what the billing checks
would look for in between; a history is then the summaries of quiet days plus
every reading of the days that need a closer look.

The summaries are derived data, never trusted for integrity: `verify` ignores
them, and any day touched by a block sealed after the last roll-up is read in
full, so a stale summary can make a query slower, never wrong.

Readings come back as (ts, value, seq) tuples and summaries as `device_days` rows;
billing builds its `Point` and `Day` from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ledger.store.store import Store

DAY_MS = 86_400_000
ROLLED_UP = "device_days_height"  # meta key: every block up to this height is summarised


def day_ranges(days: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive days as inclusive ts ranges, so a scan can skip by `ts` min/max."""
    out: list[tuple[int, int]] = []
    for d in sorted(set(days)):
        if out and out[-1][1] == d * DAY_MS - 1:
            out[-1] = (out[-1][0], (d + 1) * DAY_MS - 1)
        else:
            out.append((d * DAY_MS, (d + 1) * DAY_MS - 1))
    return out


def _ts_filter(days: Iterable[int]) -> str:
    ranges = day_ranges(days)
    return " OR ".join(f"ts BETWEEN {a} AND {b}" for a, b in ranges) if ranges else "FALSE"


# ---------------------------------------------------------------- reading (a device's history, in three narrow reads)


def rolled_up(store: Store) -> int:
    row = store.con.execute("SELECT value FROM meta WHERE key = ?", [ROLLED_UP]).fetchone()
    return int(row[0]) if row else -1


def unsummarised_readings(store: Store, device: str) -> list[tuple[int, int, int]]:
    """(ts, value, seq) of the device's readings sealed since the last roll-up (skipped by `height`)."""
    return store.con.execute(
        "SELECT ts, value, seq FROM readings WHERE height > ? AND device = ?", [rolled_up(store), device]
    ).fetchall()


def summaries(store: Store, device: str, d0: int, d1: int) -> list[tuple[Any, ...]]:
    """The device's `device_days` rows (`cols` below) of days d0 to d1, and the nearest one either side."""
    cols = "day, n, first_ts, first_value, first_seq, last_ts, last_value, last_seq, drops, breaks, changes, max_gap"
    return store.con.execute(
        f"""
        (SELECT {cols} FROM device_days WHERE device = $1 AND day < $2 ORDER BY day DESC LIMIT 1)
        UNION ALL (SELECT {cols} FROM device_days WHERE device = $1 AND day BETWEEN $2 AND $3)
        UNION ALL (SELECT {cols} FROM device_days WHERE device = $1 AND day > $3 ORDER BY day LIMIT 1)
        """,
        [device, d0, d1],
    ).fetchall()


def readings_on_days(store: Store, device: str, days: Iterable[int]) -> list[tuple[int, int, int]]:
    """(ts, value, seq) of every reading of the device on `days` (skipped by `ts`)."""
    return store.con.execute(
        f"SELECT ts, value, seq FROM readings WHERE device = ? AND ({_ts_filter(days)})", [device]
    ).fetchall()


# ---------------------------------------------------------------- writing (the writer's transaction)


@dataclass(frozen=True)
class Summary:
    """The day summaries of the blocks after `lo` up to `hi`, made without holding the writer's lock."""

    lo: int
    hi: int
    readings: int  # in those blocks
    days: tuple[int, ...]  # every day they touch, summarised again from all its readings
    rows: pa.Table  # device_days rows of those days


def summarise_next(store: Store, max_readings: int, upto: int | None = None) -> Summary | None:
    """What `roll_up_next` writes, computed on a read snapshot; None when caught up.

    Only reads: the caller can run it without the writer's lock (ingest keeps sealing,
    DuckDB does the work on its own threads) and hold the lock for `store_summary`
    alone. Readings sealed meanwhile are in blocks after `hi`, so the next roll-up
    summarises their days again, as it does for a late reading. `upto`: no block above
    this height (the head when the roll-up began, so that it does not chase the sealer).
    """
    con = store.con
    lo = rolled_up(store)
    top = store.one(_TOP_SQL, [lo, (1 << 62) if upto is None else upto, max_readings])[0]
    if top is None:
        return None
    hi = int(top)
    per_day = con.execute(_PER_DAY_SQL, [DAY_MS, lo, hi]).fetchall()
    days = tuple(sorted(int(d) for d, _ in per_day))
    rows = con.sql(_summary_sql(days)).to_arrow_table() if days else pa.table({})
    return Summary(lo, hi, sum(n for _, n in per_day), days, rows)


def store_summary(store: Store, summary: Summary) -> bool:
    """Write a `summarise_next` result, inside the caller's transaction; False (nothing written) if another
    roll-up moved the mark since it was made."""
    if rolled_up(store) != summary.lo:
        return False
    con = store.con
    if summary.days:
        con.execute(f"DELETE FROM device_days WHERE day IN ({', '.join(str(d) for d in summary.days)})")
        con.register("_device_days", summary.rows)
        try:
            con.execute("INSERT INTO device_days SELECT * FROM _device_days")
        finally:
            con.unregister("_device_days")
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [ROLLED_UP, str(summary.hi)])
    return True


_TOP_SQL = """
    SELECT max(height) FROM (
        SELECT height, size, sum(size) OVER (ORDER BY height) AS upto FROM blocks WHERE height > ? AND height <= ?)
    WHERE upto - size < ?"""
_PER_DAY_SQL = "SELECT ts // ?, count(*) FROM readings WHERE height > ? AND height <= ? GROUP BY 1"


def _summary_sql(days: Iterable[int]) -> str:
    """device_days rows of `days`, from every reading of those days.

    A break is `seq - 1 <> ps`, never `seq <> ps + 1`: a seq of 2^63-1, which the protocol
    allows, would overflow BIGINT there and fail every roll-up after it.
    """
    return f"""
        SELECT device, day, count(*)::INTEGER, min(ts), arg_min(value, ord), arg_min(seq, ord),
               max(ts), arg_max(value, ord), arg_max(seq, ord),
               count(*) FILTER (WHERE value < pv)::INTEGER, count(*) FILTER (WHERE seq - 1 <> ps)::INTEGER,
               count(*) FILTER (WHERE value <> pv)::INTEGER, coalesce(max(ts - pts), 0)
        FROM (SELECT device, ts // {DAY_MS} AS day, ts, value, seq, (ts::HUGEINT << 64) + seq AS ord,
                     lag(ts) OVER w AS pts, lag(value) OVER w AS pv, lag(seq) OVER w AS ps
              FROM readings WHERE {_ts_filter(days)}
              WINDOW w AS (PARTITION BY device, ts // {DAY_MS} ORDER BY ts, seq))
        GROUP BY device, day ORDER BY day, device"""


def roll_up_next(store: Store, max_readings: int) -> tuple[int, int] | None:
    """Summarise the blocks after the last roll-up, about `max_readings` readings' worth.

    Every day those blocks touch is summarised again from all its readings, so a
    reading arriving days late still lands in the right day's summary. Returns
    (height now summarised, readings in those blocks), or None when caught up.
    Runs inside the caller's transaction (the writer's `roll_up` instead reads
    first and holds the lock only to write: `summarise_next`, `store_summary`).
    """
    summary = summarise_next(store, max_readings)
    if summary is None:
        return None
    store_summary(store, summary)
    return summary.hi, summary.readings
