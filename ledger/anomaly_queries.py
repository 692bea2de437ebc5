"""What the anomaly detectors look at, read from the store as plain data."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ledger.store import Store


def inputs(store: Store, since: int) -> tuple[list[Any], dict[str, list[Any]], dict[str, list[tuple[int, str, int]]]]:
    """(devices, readings by device since `since`, rejects by device) for `anomalies.detect`."""
    from ledger.anomalies import DeviceInfo, Obs

    statuses = store.device_statuses()
    devices = [DeviceInfo(d.device, d.kind, d.district, d.account, *statuses.get(d.device, (None, None)))
               for d in store.devices() if d.status == "active"]
    readings: dict[str, list[Any]] = defaultdict(list)
    for device, seq, ts, value, received in store.con.execute(
            "SELECT device, seq, ts, value, received_at FROM readings WHERE ts >= ? ORDER BY device, ts, seq",
            [since]).fetchall():
        readings[device].append(Obs(device, seq, ts, value, received))
    rejects: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for device, minute, reason, count in store.con.execute(
            "SELECT device, minute, reason, count FROM reject_counts WHERE minute >= ? ORDER BY device, minute",
            [since // 60_000]).fetchall():
        rejects[device].append((minute, reason, count))
    return devices, dict(readings), dict(rejects)


def replacements(store: Store) -> dict[str, list[tuple[int, int, int]]]:
    """Recorded meter replacements, so that the jump they explain is not raised as a rollback."""
    out: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for device, ts, old_final, new_initial in store.con.execute(
            "SELECT device, ts, old_final, new_initial FROM meter_replacements ORDER BY device, ts").fetchall():
        out[device].append((ts, old_final, new_initial))
    return dict(out)
