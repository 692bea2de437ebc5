"""The anomaly scan, a district's devices of one kind at a time, with the detectors in a child process.

Why: the scan reads every active device's readings of the last two weeks (a
city's millions) and runs pure-Python detectors over them. Inside the ingest
process, which owns the DuckDB file and so has to serve the reads, that put
every reading into Python objects in the sealer's memory and held the GIL
against sealing for as long as the detectors ran.

Now:
- Every detector compares a device only with itself or with the active devices
  of its own district and kind (`anomalies._by_district_kind`: night flows,
  hourly medians, clock lags). So the scan runs group by group, each group with
  all its peers, and the findings are the same as one `detect` over everything
  (`detect_by_group`, checked against `detect` in the tests).
- A group's readings leave DuckDB as one Arrow table (built by DuckDB's threads,
  without the GIL) and go to a child process, which turns them into `Obs` and
  runs the detectors. Ingest holds at most two groups' Arrow tables at a time
  (one being detected, the next being read) and no Python object per reading.
- Findings (a few hundred at most) come back; the caller records them as before.
- The child runs at a lower priority (`NICENESS`): on a box that ingest keeps
  busy, the detectors take what the sealing pipeline leaves.

A daemonic process cannot have children, so there (and when asked) the groups
are detected in the calling process, one at a time, with the same results.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pyarrow as pa

from ledger.anomalies.detectors import TYPES, AnomalyConfig, DeviceInfo, Finding, Obs, detect
from ledger.defaults import DEFAULT_TIMEZONE
from ledger.store import anomaly_queries
from ledger.store.store import Store

Rejects = Mapping[str, Sequence[tuple[int, str, int]]]
Replacements = Mapping[str, Sequence[tuple[int, int, int]]]
READ_AHEAD = 2
"""Groups in flight at once: one detected in the child while the next is read."""
NICENESS = 10
"""The child yields the cores to ingest and its workers: the scan may take longer, sealing must not."""
COLUMNS = ("device", "seq", "ts", "value", "received_at")


# ---------------------------------------------------------------- what the detectors are given (read from the store)


def active_devices(store: Store) -> list[DeviceInfo]:
    """Every active device as the detectors see it, with its last status."""
    statuses = store.device_statuses()
    return [
        DeviceInfo(d.device, d.kind, d.district, d.account, *statuses.get(d.device, (None, None)))
        for d in store.devices()
        if d.status == "active"
    ]


def inputs(
    store: Store, since: int
) -> tuple[list[DeviceInfo], dict[str, list[Obs]], dict[str, list[tuple[int, str, int]]]]:
    """(devices, readings by device since `since`, rejects by device) for `detect`, all at once.

    For tests and small ledgers: the scan itself reads a group at a time (`anomaly_queries.readings_table`).
    """
    readings: dict[str, list[Obs]] = {}
    for device, seq, ts, value, received in anomaly_queries.look_back_readings(store, since):
        readings.setdefault(device, []).append(Obs(device, seq, ts, value, received))
    return active_devices(store), readings, anomaly_queries.rejects(store, since)


# ---------------------------------------------------------------- the scan


def groups(devices: Iterable[DeviceInfo]) -> list[list[DeviceInfo]]:
    """The devices by (district, kind), in a stable order: the peers every detector compares with."""
    out: dict[tuple[str, str], list[DeviceInfo]] = {}
    for d in devices:
        out.setdefault((d.district, d.kind), []).append(d)
    return [out[k] for k in sorted(out)]


def observations(table: pa.Table) -> dict[str, list[Obs]]:
    """device -> its readings as `Obs`, in the table's order (the query sorts by device, ts, seq)."""
    cols = [table.column(c).to_pylist() for c in COLUMNS]
    out: dict[str, list[Obs]] = {}
    for device, seq, ts, value, received in zip(*cols):
        out.setdefault(device, []).append(Obs(device, seq, ts, value, received))
    return out


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """`detect`'s order: type, device, window, key."""
    order = {t: i for i, t in enumerate(TYPES)}
    return sorted(findings, key=lambda f: (order[f.type], f.device, f.window_start, f.key))


def detect_group(
    table: pa.Table,
    devices: Sequence[DeviceInfo],
    rejects: Rejects,
    now: int,
    tz: str,
    config: AnomalyConfig,
    replacements: Replacements,
    lag_ms: int,
) -> list[Finding]:
    """`detect` over one group (runs in the child process)."""
    return detect(devices, observations(table), rejects, now, tz, config, replacements=replacements, lag_ms=lag_ms)


def detect_by_group(
    devices: Sequence[DeviceInfo],
    read: Callable[[list[str]], pa.Table],
    rejects: Rejects,
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
    *,
    replacements: Replacements | None = None,
    lag_ms: int = 0,
    in_process: bool = False,
) -> list[Finding]:
    """The findings of `detect` over `devices`, reading and detecting one group at a time.

    `read(device ids)` returns those devices' readings of the look-back as an Arrow
    table with COLUMNS, sorted by device, ts, seq.
    """
    parts = groups(devices)
    swaps = dict(replacements or {})
    if in_process or multiprocessing.current_process().daemon or len(parts) == 0:
        found: list[Finding] = []
        for group in parts:
            found += detect_group(
                read([d.device for d in group]),
                group,
                _only(rejects, group),
                now,
                tz,
                config,
                _only(swaps, group),
                lag_ms,
            )
        return sort_findings(found)
    found = []
    pending: deque[Future[list[Finding]]] = deque()
    with ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice, initargs=(NICENESS,)
    ) as pool:
        for group in parts:
            table = read([d.device for d in group])
            pending.append(
                pool.submit(
                    detect_group, table, group, _only(rejects, group), now, tz, config, _only(swaps, group), lag_ms
                )
            )
            del table  # the child has its copy; ours goes as soon as the call is sent
            while len(pending) >= READ_AHEAD:
                found += pending.popleft().result()
        while pending:
            found += pending.popleft().result()
    return sort_findings(found)


def _only(by_device: Mapping[str, Any], group: Sequence[DeviceInfo]) -> dict[str, Any]:
    return {d.device: by_device[d.device] for d in group if d.device in by_device}
