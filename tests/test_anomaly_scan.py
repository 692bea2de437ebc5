"""The anomaly scan group by group (ledger/anomalies/scan.py) finds exactly what one `detect` finds.

The scan reads a district's devices of one kind at a time and runs the detectors
in a child process, so that weeks of readings never sit in the sealing process.
That is only sound because every detector compares a device with its own
district's devices of its own kind; the simulated city here (faults of every
type, four districts, all kinds) is the check, in process and through the child.
"""

from __future__ import annotations

import pyarrow as pa

from ledger.anomalies.detectors import DeviceInfo, Obs, detect
from ledger.anomalies.scan import COLUMNS, active_devices, detect_by_group, groups, inputs, observations
from tests.test_anomaly_accuracy import _ms, city


def _table(readings: dict[str, list[Obs]]) -> pa.Table:
    rows = sorted((o for obs in readings.values() for o in obs), key=lambda o: (o.device, o.ts, o.seq))
    return pa.table({c: [getattr(o, c) for o in rows] for c in COLUMNS})


def _reader(table: pa.Table):
    import pyarrow.compute as pc

    def read(ids: list[str]) -> pa.Table:
        return table.filter(pc.is_in(table.column("device"), pa.array(ids)))

    return read


def test_groups_are_each_district_and_kind_with_every_device_once() -> None:
    devices = [DeviceInfo(f"x{i}", ("water", "gas")[i % 2], ("d02", "d01")[i % 3 % 2], None) for i in range(9)]
    parts = groups(devices)
    assert [(g[0].district, g[0].kind) for g in parts] == sorted({(d.district, d.kind) for d in devices})
    assert all(len({(d.district, d.kind) for d in g}) == 1 for g in parts)
    assert sorted(d.device for g in parts for d in g) == sorted(d.device for d in devices)
    assert groups([]) == []


def test_arrow_rows_come_back_as_the_same_observations_in_order() -> None:
    readings = {"a": [Obs("a", 1, 10, 5, 11), Obs("a", 2, 20, 6, 21)], "b": [Obs("b", 7, 5, 0, 6)]}
    assert observations(_table(readings)) == readings
    assert observations(_table({})) == {}


def test_the_scan_by_group_finds_exactly_what_detect_finds() -> None:
    devices, readings, rejects, _, now = city(_ms("2025-01-06"), devices=240, days=10)
    swaps = {devices[0].device: [(now - 3 * 86_400_000, 10, 0)]}
    expected = detect(devices, readings, rejects, now, replacements=swaps, lag_ms=60_000)
    assert {f.type for f in expected} >= {"leak", "rollback", "silent", "hostile"}, "the city must exercise peers"
    read = _reader(_table(readings))
    in_process = detect_by_group(devices, read, rejects, now, replacements=swaps, lag_ms=60_000, in_process=True)
    assert in_process == expected
    in_child = detect_by_group(devices, read, rejects, now, replacements=swaps, lag_ms=60_000)
    assert in_child == expected


def test_a_groups_readings_come_from_duckdb_as_the_whole_query_gives_them(tmp_path) -> None:
    from ledger.store import anomaly_queries
    from ledger.store.store import Store
    from tests.support.ledgers import build_ledger

    built = build_ledger(tmp_path / "home", devices=4, per_device=9, block_size=5)
    store = Store.open(built.home.database, read_only=True)
    try:
        devices, readings, rejects = inputs(store, 0)
        assert active_devices(store) == devices and anomaly_queries.rejects(store, 0) == rejects
        some = sorted(readings)[1:3]
        table = anomaly_queries.readings_table(store, some, 0)
        assert observations(table) == {d: readings[d] for d in some}
        later = readings[some[0]][4].ts
        assert observations(anomaly_queries.readings_table(store, some, later)) == {
            d: [o for o in readings[d] if o.ts >= later] for d in some
        }
        assert anomaly_queries.readings_table(store, [], 0).num_rows == 0
    finally:
        store.close()


def test_readings_stamped_before_the_look_back_but_received_in_it_are_judged(tmp_path) -> None:
    """A clock reset to the epoch (ts 0 is a ts the protocol accepts) stamps its readings 1970. Read by
    ts alone, the scan never saw them: the device looked silent though it kept talking, and the clock
    rule could not see its readings going back. They are read by when they arrived as well."""
    from nacl.signing import SigningKey

    from ledger.chain.protocol import sign_reading
    from ledger.chain.records import Batch, LedgeredReading
    from ledger.home import Home
    from ledger.service.homes import initialize
    from ledger.service.writer import LedgerWriter
    from ledger.store import anomaly_queries

    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    try:
        key = SigningKey(b"\x15" * 32)
        writer.enroll_device("wm-d01-000015", "water", "d01", key.verify_key.encode().hex())
        now, minute = 1_780_000_000_000, 60_000
        stamps = [now - 40 * minute, now - 30 * minute, 0, 1]  # then the clock resets to the epoch
        writer.commit(
            Batch(
                readings=[
                    LedgeredReading(
                        sign_reading(key, device="wm-d01-000015", kind="water", seq=i + 1, ts=ts, value=100 + i),
                        now - (3 - i) * 10 * minute,
                    )
                    for i, ts in enumerate(stamps)
                ]
            )
        )
        since = now - 14 * 86_400_000
        devices, readings, rejects = inputs(writer.store, since)
        assert [o.ts for o in readings["wm-d01-000015"]] == [0, 1, now - 40 * minute, now - 30 * minute]
        table = anomaly_queries.readings_table(writer.store, ["wm-d01-000015"], since)
        assert observations(table) == readings
        found = {(f.type, f.device) for f in detect(devices, readings, rejects, now)}
        assert ("clock", "wm-d01-000015") in found and ("silent", "wm-d01-000015") not in found
    finally:
        writer.close()
