"""What the anomaly detectors look at, read from the store as plain data (tuples and Arrow):
ledger/anomalies/scan.py builds the detectors' `Obs` and `DeviceInfo` from it."""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from ledger.store.store import Store

# The look-back's readings: stamped since `since`, and those received since then with an older stamp.
# A clock reset to the epoch (ts 0 is a valid ts) stamps its readings 1970: selected by ts alone, they
# were never seen, so the device looked silent though it kept talking, and the clock rule (behind, or
# backwards from the reading before) could not see them. Two selects, not one OR, so that each is
# still skipped row group by row group on its own column's min/max.
_LOOK_BACK = """
    SELECT device, seq, ts, value, received_at FROM readings WHERE ts >= $since
    UNION ALL SELECT device, seq, ts, value, received_at FROM readings WHERE received_at >= $since AND ts < $since"""


def look_back_readings(store: Store, since: int) -> list[tuple[str, int, int, int, int]]:
    """(device, seq, ts, value, received_at) of the look-back's readings, by device, ts, seq, all at once.

    For tests and small ledgers: the scan itself reads a group at a time (`readings_table`).
    """
    return store.con.execute(
        f"SELECT device, seq, ts, value, received_at FROM ({_LOOK_BACK}) ORDER BY device, ts, seq", {"since": since}
    ).fetchall()


def rejects(store: Store, since: int) -> dict[str, list[tuple[int, str, int]]]:
    """device -> (epoch minute, reason, count) of its rejected messages since `since` (ms)."""
    out: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for device, minute, reason, count in store.con.execute(
        "SELECT device, minute, reason, count FROM reject_counts WHERE minute >= ? ORDER BY device, minute",
        [since // 60_000],
    ).fetchall():
        out[device].append((minute, reason, count))
    return dict(out)


def readings_table(store: Store, devices: list[str], since: int) -> pa.Table:
    """The readings of `devices` since `since` as Arrow (device, seq, ts, value, received_at), by device, ts, seq.

    DuckDB builds the table on its own threads, without Python objects per reading;
    the device list joins as a set (a hash semi-join, not a list search per row).
    """
    return store.con.sql(
        f"SELECT device, seq, ts, value, received_at FROM ({_LOOK_BACK})"
        " WHERE device IN (SELECT unnest($devices::VARCHAR[])) ORDER BY device, ts, seq",
        params={"since": since, "devices": devices},
    ).to_arrow_table()


def replacements(store: Store) -> dict[str, list[tuple[int, int, int]]]:
    """Recorded meter replacements, so that the jump they explain is not raised as a rollback."""
    out: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for device, ts, old_final, new_initial in store.con.execute(
        "SELECT device, ts, old_final, new_initial FROM meter_replacements ORDER BY device, ts"
    ).fetchall():
        out[device].append((ts, old_final, new_initial))
    return dict(out)
