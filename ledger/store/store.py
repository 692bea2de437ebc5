"""The DuckDB file: the one place that knows table layouts and SQL.

Everything a commit writes goes in one transaction, so a crash leaves a block
whole or absent. Bulk rows go in as Arrow tables (about 150x faster here than
executemany).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from typing_extensions import TypedDict

from ledger.chain.keyspans import KeySpan, key_for
from ledger.chain.protocol import Reading
from ledger.chain.records import DeviceRecord, QuarantineRow, Readings, ServiceRecord
from ledger.documents import document
from ledger.store.schema import migrate
from ledger.store.transactions import transaction

# ------------------------------------------------------------ rows as the API answers them


@document
class DeviceKey(TypedDict):
    """One of `device_key_history`: a key the device was given in block `from_height` at `since`,
    signing its readings from seq `from_seq` on (0: every reading sealed after it)."""

    public_key: str
    from_height: int
    since: int
    from_seq: int


@document
class WriteOff(TypedDict):
    """One of `write_offs`: seqs an operator settled for good, sealed in block `height`."""

    device: str
    from_seq: int
    to_seq: int
    reason: str
    operator: str
    at: int
    height: int


@document
class RecentBlock(TypedDict):
    """One of `recent_blocks`."""

    height: int
    hash: str
    size: int
    sealed_at: int


@document
class RecentReading(TypedDict):
    """One of `recent_readings`; `district` is None for a device no longer in the registry."""

    device: str
    kind: str
    district: str | None
    seq: int
    ts: int
    value: int
    height: int
    received_at: int


@document
class QuarantineEntry(TypedDict):
    """One of `quarantine`: a message refused, with why."""

    received_at: int
    topic: str
    reason: str
    device: str | None
    detail: str | None
    payload: str  # as text, undecodable bytes escaped


@document
class LedgerCounts(TypedDict):
    """The ledger's totals (`counts`); `devices` counts the active ones."""

    blocks: int
    readings: int
    quarantined: int
    duplicates: int
    devices: int
    quarantine_dropped: int


@document
class Suspension(TypedDict):
    """A device's latest budget suspension (`suspensions`): its `device_suspended` entry's when, until
    when, rule and messages over budget, the device's status now, and when it was reinstated."""

    at: int
    until: int
    # The budget rule the entry names, as recorded in the chain: ledger/service/budget.py's
    # `BudgetRule`, which this layer cannot import.
    rule: dict[str, Any]
    over_budget: int
    status: str  # the device's now: suspended while the suspension is in force
    reinstated_at: int | None


@document
class FlaggedDevice(TypedDict):
    """One of `flagged_devices`: a device's rejects since a minute (the peak per minute, the total,
    the first and last minute, `reason:count,...`, those over budget), and its latest suspension.
    A device suspended now with rejects below the threshold has zeros and Nones."""

    device: str
    peak_rejects_per_minute: int
    rejects: int
    first_minute: int | None
    last_minute: int | None
    reasons: str | None
    over_budget: int
    suspension: Suspension | None


@document
class WitnessReportRow(TypedDict):
    """One of `witness_reports`: what a witness said (`kind`: alarm, ...), as it sent it."""

    witness: str
    kind: str
    body: str
    received_at: int


@dataclass
class Commit:
    """Everything one transaction writes; `block` is None when there are no leaves."""

    block: dict[str, Any] | None = None  # height, hash, prev, header (canonical JSON), sig, size, sealed_at
    readings: Readings = field(default_factory=Readings)
    entries: list[dict[str, Any]] = field(default_factory=list)  # canonical body + type, leaves before readings
    quarantine: list[QuarantineRow] = field(default_factory=list)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    witness_reports: list[tuple[str, str, str, int]] = field(default_factory=list)
    rejects: dict[tuple[str, int, str], int] = field(default_factory=dict)
    duplicate_counts: dict[tuple[str, int], int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)  # `meta` rows to set: the log's right edge


class Store:
    """A DuckDB connection with the project's queries. Not thread-safe: one per thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> Store:
        """Open the file with a memory cap: DuckDB would otherwise take up to 80% of RAM
        (and spills to disk beyond the cap instead)."""
        config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": os.environ.get("CITYLEDGER_DB_MEMORY", "2GB")
        }
        con = duckdb.connect(str(path), read_only=read_only, config=config)
        store = cls(con)
        if not read_only:
            migrate(con)
        return store

    def one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...]:
        """The one row a query always answers (an aggregate: count, sum, max)."""
        row = self.con.execute(sql, list(args)).fetchone()
        if row is None:
            raise AssertionError(f"no row for {sql!r}: an aggregate query answers one")
        return tuple(row)

    def cursor(self) -> Store:
        """A store on a new cursor of the same database, for another thread."""
        return Store(self.con.cursor())

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    # ------------------------------------------------------------ registry

    def devices(self) -> list[DeviceRecord]:
        rows = self.con.execute(
            "SELECT device, kind, district, account, public_key, status, mqtt_hash, enrolled_at, revoked_at"
            " FROM devices ORDER BY device"
        ).fetchall()
        spans = self._key_spans()
        return [self._with_keys(DeviceRecord(*row), spans.get(row[0])) for row in rows]

    def device_page(self, districts: list[str] | None, after: str | None, limit: int) -> list[tuple[Any, ...]]:
        """Devices in id order after `after`: (device, kind, district, account, public_key, status,
        enrolled_at, revoked_at, last known online status), a page, in SQL."""
        where, args = ["(? IS NULL OR d.device > ?)"], [after, after]
        if districts is not None:
            where.append(f"d.district IN ({', '.join('?' * len(districts)) or 'NULL'})")
            args += districts
        rows = self.con.execute(
            "SELECT d.device, d.kind, d.district, d.account, d.public_key, d.status, d.enrolled_at, d.revoked_at,"
            " coalesce(s.status, 'unknown') FROM devices d LEFT JOIN device_status s USING (device)"
            f" WHERE {' AND '.join(where)} ORDER BY d.device LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [tuple(r) for r in rows]

    def device(self, device: str) -> DeviceRecord | None:
        row = self.con.execute(
            "SELECT device, kind, district, account, public_key, status, mqtt_hash, enrolled_at, revoked_at"
            " FROM devices WHERE device = ?",
            [device],
        ).fetchone()
        return self._with_keys(DeviceRecord(*row), self._key_spans(device).get(device)) if row else None

    def _key_spans(self, device: str | None = None) -> dict[str, list[KeySpan]]:
        """Key histories of the devices that rotated with a `from_seq` (the only ones that need one)."""
        rows = self.con.execute(
            "SELECT device, public_key, from_seq, from_height FROM device_keys WHERE device IN"
            " (SELECT device FROM device_keys WHERE from_seq > 0 AND (? IS NULL OR device = ?))"
            " ORDER BY device, from_height",
            [device, device],
        ).fetchall()
        spans: dict[str, list[KeySpan]] = {}
        for dev, key, from_seq, height in rows:
            spans.setdefault(dev, []).append(KeySpan(key, from_seq, height))
        return spans

    @staticmethod
    def _with_keys(rec: DeviceRecord, spans: list[KeySpan] | None) -> DeviceRecord:
        if not spans or spans[-1].public_key != rec.public_key:
            return rec
        return replace(rec, earlier_keys=tuple(spans[:-1]), key_from_seq=spans[-1].from_seq)

    def public_key_owner(self, public_key: str) -> str | None:
        """Which device has ever held this key (a key is never reused, not even after revocation)."""
        row = self.con.execute("SELECT device FROM device_keys WHERE public_key = ? LIMIT 1", [public_key]).fetchone()
        return row[0] if row else None

    def add_device_key(self, device: str, public_key: str, from_height: int, since: int, from_seq: int = 0) -> None:
        self.con.execute(
            "INSERT INTO device_keys (device, public_key, from_height, since, from_seq) VALUES (?, ?, ?, ?, ?)",
            [device, public_key, from_height, since, from_seq],
        )

    def set_public_key(self, device: str, public_key: str) -> None:
        self.con.execute("UPDATE devices SET public_key = ? WHERE device = ?", [public_key, device])

    def device_key_for(self, device: str, seq: int, height: int) -> str | None:
        """The key that signed reading `seq` of a device, sealed in block `height` (ledger/chain/keyspans.py)."""
        rows = self.con.execute(
            "SELECT public_key, from_seq, from_height FROM device_keys WHERE device = ?", [device]
        ).fetchall()
        return key_for((KeySpan(*row) for row in rows), seq, height)

    def device_key_history(self, device: str) -> list[DeviceKey]:
        rows = self.con.execute(
            "SELECT public_key, from_height, since, from_seq FROM device_keys WHERE device = ? ORDER BY from_height",
            [device],
        ).fetchall()
        return [{"public_key": k, "from_height": h, "since": t, "from_seq": f} for k, h, t, f in rows]

    def ledger_key_at(self, height: int) -> str:
        """The ledger key that signed block `height`: the last rotation before it decides."""
        row = self.con.execute(
            "SELECT json_extract_string(header, '$.next_key') FROM blocks"
            " WHERE height < ? AND json_extract_string(header, '$.next_key') IS NOT NULL"
            " ORDER BY height DESC LIMIT 1",
            [height],
        ).fetchone()
        if row:
            return row[0]
        first = self.get_meta("first_ledger_key")
        assert first is not None, "ledger has no first key"
        return first

    def rotation_headers(self) -> list[dict[str, Any]]:
        """Every header that hands signing to a new key, oldest first: a verifier's key chain."""
        rows = self.con.execute(
            "SELECT height, hash, header, sig FROM blocks WHERE json_extract_string(header, '$.next_key')"
            " IS NOT NULL ORDER BY height"
        ).fetchall()
        return [_block_dict(r) for r in rows]

    def reading_position(self, device: str, seq: int) -> tuple[int, int] | None:
        row = self.con.execute(
            "SELECT height, idx FROM readings WHERE device = ? AND seq = ?", [device, seq]
        ).fetchone()
        return (row[0], row[1]) if row else None

    def log_index(self, height: int, idx: int) -> int:
        """The log index (PROTOCOL.md section 7) of leaf `idx` of block `height`: every leaf sealed before it."""
        below = self.one("SELECT coalesce(sum(size), 0) FROM blocks WHERE height < ?", [height])[0]
        return int(below) + idx

    def insert_device(self, rec: DeviceRecord) -> None:
        self.con.execute(
            "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                rec.device,
                rec.kind,
                rec.district,
                rec.account,
                rec.public_key,
                rec.status,
                rec.mqtt_hash,
                rec.enrolled_at,
                rec.revoked_at,
            ],
        )

    def set_mqtt_hash(self, device: str, mqtt_hash: str) -> None:
        self.con.execute("UPDATE devices SET mqtt_hash = ? WHERE device = ?", [mqtt_hash, device])

    def mark_revoked(self, device: str, at: int) -> None:
        self.con.execute("UPDATE devices SET status = 'revoked', revoked_at = ? WHERE device = ?", [at, device])

    def services(self) -> list[ServiceRecord]:
        rows = self.con.execute("SELECT username, role, mqtt_hash FROM services ORDER BY username").fetchall()
        return [ServiceRecord(*row) for row in rows]

    def upsert_service(self, rec: ServiceRecord) -> None:
        self.con.execute("INSERT OR REPLACE INTO services VALUES (?, ?, ?)", [rec.username, rec.role, rec.mqtt_hash])

    def first_enrolled(self, devices: list[str]) -> str | None:
        """One of `devices` that is enrolled already, if any."""
        row = self.con.execute(
            "SELECT device FROM devices WHERE list_contains(?, device) LIMIT 1", [devices]
        ).fetchone()
        return row[0] if row else None

    def first_key_owner(self, public_keys: list[str]) -> str | None:
        """A device that any of `public_keys` was ever enrolled for, if any."""
        row = self.con.execute(
            "SELECT device FROM device_keys WHERE list_contains(?, public_key) LIMIT 1", [public_keys]
        ).fetchone()
        return row[0] if row else None

    def set_status(self, device: str, status: str) -> None:
        """Suspend or reinstate (revocation also stamps the time: `mark_revoked`)."""
        self.con.execute("UPDATE devices SET status = ? WHERE device = ?", [status, device])

    def set_account(self, device: str, account: str | None) -> None:
        self.con.execute("UPDATE devices SET account = ? WHERE device = ?", [account, device])

    def latest_entry(self, entry_type: str) -> tuple[int, dict[str, Any]] | None:
        """The height and body of the newest entry of a type (a policy in force, say)."""
        row = self.con.execute(
            "SELECT height, body FROM entries WHERE type = ? ORDER BY height DESC LIMIT 1", [entry_type]
        ).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    # ------------------------------------------------------------ seqs written off

    def write_off_overlapping(self, device: str, from_seq: int, to_seq: int) -> tuple[int, int] | None:
        row = self.con.execute(
            "SELECT from_seq, to_seq FROM write_offs WHERE device = ? AND from_seq <= ? AND to_seq >= ? LIMIT 1",
            [device, to_seq, from_seq],
        ).fetchone()
        return (row[0], row[1]) if row else None

    def write_offs(self, device: str | None = None) -> list[WriteOff]:
        """Seqs written off (of one device, or of all), oldest first."""
        rows = self.con.execute(
            "SELECT device, from_seq, to_seq, reason, operator, written_at, height"
            " FROM write_offs WHERE ? IS NULL OR device = ? ORDER BY written_at",
            [device, device],
        ).fetchall()
        return [
            {
                "device": d,
                "from_seq": lo,
                "to_seq": hi,
                "reason": reason,
                "operator": operator,
                "at": at,
                "height": height,
            }
            for d, lo, hi, reason, operator, at, height in rows
        ]

    def add_write_off(
        self, device: str, from_seq: int, to_seq: int, reason: str, operator: str, at: int, height: int
    ) -> None:
        self.con.execute(
            "INSERT INTO write_offs VALUES (?, ?, ?, ?, ?, ?, ?)",
            [device, from_seq, to_seq, reason, operator, at, height],
        )

    # ------------------------------------------------------------ writing

    def commit(self, c: Commit, also: Callable[[Store], None] | None = None) -> None:
        """Write everything in `c` atomically, together with what `also` writes (a registry change)."""
        with self.transaction():
            if also is not None:
                also(self)
            self._write(c)

    def transaction(self) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A write transaction on this cursor (ledger/store/transactions.py)."""
        return transaction(self.con)

    def _write(self, c: Commit) -> None:
        con = self.con
        for key, value in c.meta.items():
            self.set_meta(key, value)
        if c.block is not None:
            b = c.block
            con.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [b["height"], b["hash"], b["prev"], b["header"], b["sig"], b["size"], b["sealed_at"]],
            )
            height, n_entries = b["height"], len(c.entries)
            if c.entries:
                self.insert_table(
                    "entries",
                    pa.table(
                        {
                            "height": pa.array([height] * n_entries, pa.int64()),
                            "idx": pa.array(range(n_entries), pa.int32()),
                            "type": [e["type"] for e in c.entries],
                            "body": [e["body"] for e in c.entries],
                        }
                    ),
                )
            if c.readings:
                self.insert_table("readings", _readings_table(height, n_entries, c.readings))
        elif c.readings or c.entries:
            raise ValueError("leaves without a block")
        if c.quarantine:
            q = c.quarantine
            self.insert_table(
                "quarantine",
                pa.table(
                    {
                        "received_at": pa.array([r.received_at for r in q], pa.int64()),
                        "topic": [r.topic for r in q],
                        "reason": [r.reason for r in q],
                        "device": pa.array([r.device for r in q], pa.string()),
                        "detail": [r.detail for r in q],
                        "payload": pa.array([r.payload for r in q], pa.binary()),
                    }
                ),
            )
        if c.duplicates:
            d = c.duplicates
            self.insert_table(
                "duplicates",
                pa.table(
                    {
                        "device": [x[0] for x in d],
                        "seq": pa.array([x[1] for x in d], pa.int64()),
                        "received_at": pa.array([x[2] for x in d], pa.int64()),
                    }
                ),
            )
        if c.statuses:
            latest = {device: (status, at) for device, status, at in sorted(c.statuses, key=lambda x: x[2])}
            self.insert_table(
                "device_status",
                pa.table(
                    {
                        "device": list(latest),
                        "status": [v[0] for v in latest.values()],
                        "changed_at": pa.array([v[1] for v in latest.values()], pa.int64()),
                    }
                ),
                on_conflict="ON CONFLICT DO UPDATE SET status = excluded.status, changed_at = excluded.changed_at",
            )
        if c.duplicate_counts:
            keys = list(c.duplicate_counts)
            self.insert_table(
                "duplicate_counts",
                pa.table(
                    {
                        "device": [k[0] for k in keys],
                        "minute": pa.array([k[1] for k in keys], pa.int64()),
                        "count": pa.array([c.duplicate_counts[k] for k in keys], pa.int64()),
                    }
                ),
                on_conflict="ON CONFLICT DO UPDATE SET count = count + excluded.count",
            )
        for row in c.witness_reports:
            con.execute("INSERT INTO witness_reports VALUES (?, ?, ?, ?)", list(row))
        if c.rejects:
            rejects = list(c.rejects)
            self.insert_table(
                "reject_counts",
                pa.table(
                    {
                        "device": [k[0] for k in rejects],
                        "minute": pa.array([k[1] for k in rejects], pa.int64()),
                        "reason": [k[2] for k in rejects],
                        "count": pa.array([c.rejects[k] for k in rejects], pa.int64()),
                    }
                ),
                on_conflict="ON CONFLICT DO UPDATE SET count = count + excluded.count",
            )

    def insert_table(self, table: str, data: pa.Table, on_conflict: str = "") -> None:
        """Insert an Arrow table's rows into `table` (about 150x faster here than executemany)."""
        self.con.register("_batch", data)
        try:
            self.con.execute(f"INSERT INTO {table} SELECT * FROM _batch {on_conflict}")
        finally:
            self.con.unregister("_batch")

    # ------------------------------------------------------------ chain

    def block_hashes(self, heights: Iterable[int] | None = None) -> dict[int, str]:
        """Each block's hash by height (only at `heights` when given)."""
        if heights is None:
            return dict(self.con.execute("SELECT height, hash FROM blocks").fetchall())
        return dict(
            self.con.execute(
                "SELECT height, hash FROM blocks WHERE list_contains(?, height)", [sorted(set(heights))]
            ).fetchall()
        )

    def headers(self, first: int, last: int) -> list[str]:
        """The canonical header JSON of blocks `first`..`last`, oldest first."""
        return [
            h
            for (h,) in self.con.execute(
                "SELECT header FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height", [first, last]
            ).fetchall()
        ]

    def entries_of(self, *types: str) -> list[tuple[int, str, str]]:
        """(height, type, body) of every entry of these types, in chain order."""
        return [
            tuple(r)
            for r in self.con.execute(
                "SELECT height, type, body FROM entries WHERE list_contains(?, type) ORDER BY height, idx",
                [list(types)],
            ).fetchall()
        ]

    def head(self) -> tuple[int, str] | None:
        row = self.con.execute("SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def block(self, height: int) -> dict[str, Any] | None:
        row = self.con.execute("SELECT height, hash, header, sig FROM blocks WHERE height = ?", [height]).fetchone()
        return _block_dict(row) if row else None

    def iter_blocks(self, start: int = 0, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every block from `start` in height order, with its header parsed."""
        height = start
        while True:
            rows = self.con.execute(
                "SELECT height, hash, header, sig FROM blocks WHERE height >= ? ORDER BY height LIMIT ?",
                [height, batch],
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _block_dict(row)
            height = rows[-1][0] + 1

    def recent_blocks(self, limit: int = 20) -> list[RecentBlock]:
        rows = self.con.execute(
            "SELECT height, hash, size, sealed_at FROM blocks ORDER BY height DESC LIMIT ?", [limit]
        ).fetchall()
        return [{"height": h, "hash": x, "size": s, "sealed_at": t} for h, x, s, t in rows]

    def leaves(self, height: int) -> list[tuple[int, Reading | dict[str, Any] | None, bytes | None]]:
        """(idx, reading or entry object, entry leaf bytes) of a block, by idx.

        A stored reading whose columns no longer make a valid reading comes back
        as None, so an audit can name it instead of crashing on it.
        """
        out: list[tuple[int, Reading | dict[str, Any] | None, bytes | None]] = []
        for idx, body in self.con.execute(
            "SELECT idx, body FROM entries WHERE height = ? ORDER BY idx", [height]
        ).fetchall():
            out.append((idx, _object_or_none(body), body.encode()))
        for idx, device, kind, seq, ts, value, sig in self.con.execute(
            "SELECT idx, device, kind, seq, ts, value, sig FROM readings WHERE height = ? ORDER BY idx", [height]
        ).fetchall():
            out.append((idx, _reading_or_none(device, kind, seq, ts, value, sig), None))
        out.sort(key=lambda leaf: leaf[0])
        return out

    # ------------------------------------------------------------ readings

    def seq_state(self) -> dict[str, tuple[int, list[int]]]:
        """Per device: (highest seq with no gap below it, settled seqs above it).

        Settled: ledgered, or written off by an operator (`write_offs`); the ack counts both.
        """
        state: dict[str, tuple[int, list[int]]] = {}
        written_off: dict[str, list[tuple[int, int]]] = {}
        for device, lo, hi in self.con.execute("SELECT device, from_seq, to_seq FROM write_offs").fetchall():
            written_off.setdefault(device, []).append((lo, hi))
        rows = self.con.execute("SELECT device, max(seq), count(*) FROM readings GROUP BY device").fetchall()
        gappy = set(written_off)
        for device, max_seq, count in rows:
            if max_seq == count and device not in gappy:
                state[device] = (max_seq, [])
            else:
                gappy.add(device)
        for device in sorted(gappy):
            seqs = {
                r[0]
                for r in self.con.execute("SELECT DISTINCT seq FROM readings WHERE device = ?", [device]).fetchall()
            }
            for lo, hi in written_off.get(device, ()):
                seqs.update(range(lo, hi + 1))  # at most WRITE_OFF_MAX each (ledger/service/writer.py)
            ordered = sorted(seqs)
            hwm = i = 0
            while i < len(ordered) and ordered[i] == hwm + 1:
                hwm += 1
                i += 1
            state[device] = (hwm, ordered[i:])
        return state

    def highest_seq(self, device: str) -> int:
        """The highest seq of the device's ledgered readings, 0 if none."""
        return int(self.one("SELECT coalesce(max(seq), 0) FROM readings WHERE device = ?", [device])[0])

    def ledgered_seqs(self, device: str, lo: int, hi: int, limit: int = 6) -> list[int]:
        """Up to `limit` seqs of the device ledgered within lo..hi."""
        return [
            r[0]
            for r in self.con.execute(
                "SELECT DISTINCT seq FROM readings WHERE device = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                [device, lo, hi, limit],
            ).fetchall()
        ]

    def stored_readings(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int, str]]:
        """(ts, value, sig base64) of already-ledgered readings, for duplicate checks."""
        keys = list(keys)
        if not keys:
            return {}
        probe = pa.table({"device": [k[0] for k in keys], "seq": pa.array([k[1] for k in keys], pa.int64())})
        self.con.register("_probe", probe)
        try:
            rows = self.con.execute(
                "SELECT r.device, r.seq, r.ts, r.value, r.sig FROM readings r"
                " JOIN _probe p ON r.device = p.device AND r.seq = p.seq"
            ).fetchall()
        finally:
            self.con.unregister("_probe")
        return {(d, s): (ts, v, base64.b64encode(sig).decode()) for d, s, ts, v, sig in rows}

    def recent_readings(self, limit: int = 50) -> list[RecentReading]:
        rows = self.con.execute(
            "SELECT r.device, r.kind, d.district, r.seq, r.ts, r.value, r.height, r.received_at"
            " FROM readings r LEFT JOIN devices d USING (device)"
            " ORDER BY r.height DESC, r.idx DESC LIMIT ?",
            [limit],
        ).fetchall()
        return [
            {
                "device": device,
                "kind": kind,
                "district": district,
                "seq": seq,
                "ts": ts,
                "value": value,
                "height": height,
                "received_at": received_at,
            }
            for device, kind, district, seq, ts, value, height, received_at in rows
        ]

    # ------------------------------------------------------------ quarantine & stats

    def quarantine(
        self, *, reason: str | None = None, device: str | None = None, limit: int = 100
    ) -> list[QuarantineEntry]:
        sql = "SELECT received_at, topic, reason, device, detail, payload FROM quarantine WHERE 1=1"
        args: list[Any] = []
        if reason:
            sql += " AND reason = ?"
            args.append(reason)
        if device:
            sql += " AND device = ?"
            args.append(device)
        sql += " ORDER BY received_at DESC LIMIT ?"
        args.append(limit)
        return [
            {
                "received_at": received_at,
                "topic": topic,
                "reason": why,
                "device": sender,
                "detail": detail,
                "payload": bytes(payload).decode("utf-8", errors="backslashreplace"),
            }
            for received_at, topic, why, sender, detail, payload in self.con.execute(sql, args).fetchall()
        ]

    def counts(self) -> LedgerCounts:
        """Totals; `quarantine_dropped` counts rejects beyond the per-device cap (counted, not stored)."""
        row = self.con.execute(
            "SELECT (SELECT count(*) FROM blocks), (SELECT count(*) FROM readings),"
            " (SELECT count(*) FROM quarantine), (SELECT coalesce(sum(count), 0) FROM duplicate_counts),"
            " (SELECT count(*) FROM devices WHERE status = 'active'),"
            " (SELECT coalesce(sum(count), 0) FROM reject_counts)"
        ).fetchone()
        assert row is not None
        blocks, readings, quarantined, duplicates, devices, rejected = row
        return {
            "blocks": blocks,
            "readings": readings,
            "quarantined": quarantined,
            "duplicates": duplicates,
            "devices": devices,
            "quarantine_dropped": max(0, rejected - quarantined),
        }

    def quarantine_stored_since(self, since_ms: int) -> dict[str, int]:
        """Stored quarantine entries per device since a time: where the cap stands after a restart."""
        rows = self.con.execute(
            "SELECT coalesce(device, '?'), count(*) FROM quarantine WHERE received_at >= ? GROUP BY 1", [since_ms]
        ).fetchall()
        return dict(rows)

    def flagged_devices(self, since_minute: int, threshold: int) -> list[FlaggedDevice]:
        """Devices whose rejects reached `threshold` in some minute since `since_minute`."""
        rows = self.con.execute(
            """
            WITH per_minute AS (
                SELECT device, minute, sum(count) AS n FROM reject_counts WHERE minute >= ? GROUP BY device, minute),
            hostile AS (
                SELECT device, max(n) AS peak, sum(n) AS total, min(minute) AS first_minute, max(minute) AS last_minute
                FROM per_minute GROUP BY device HAVING max(n) >= ?)
            SELECT h.device, h.peak, h.total, h.first_minute, h.last_minute,
                   (SELECT string_agg(reason || ':' || c, ',' ORDER BY c DESC) FROM (
                        SELECT reason, sum(count) AS c FROM reject_counts r
                        WHERE r.device = h.device AND r.minute >= ? GROUP BY reason)) AS reasons,
                   (SELECT coalesce(sum(count), 0) FROM reject_counts r WHERE r.device = h.device AND r.minute >= ?
                        AND r.reason IN ('over_budget', 'suspended')) AS over_budget
            FROM hostile h ORDER BY h.peak DESC
            """,
            [since_minute, threshold, since_minute, since_minute],
        ).fetchall()
        suspensions = self.suspensions()
        out: list[FlaggedDevice] = [
            {
                "device": device,
                "peak_rejects_per_minute": peak,
                "rejects": rejects,
                "first_minute": first,
                "last_minute": last,
                "reasons": reasons,
                "over_budget": int(over_budget),
                "suspension": suspensions.pop(device, None),
            }
            for device, peak, rejects, first, last, reasons, over_budget in rows
        ]
        # A device suspended is listed even when its rejects are below the threshold now.
        out += [
            {
                "device": d,
                "peak_rejects_per_minute": 0,
                "rejects": 0,
                "first_minute": None,
                "last_minute": None,
                "reasons": None,
                "over_budget": 0,
                "suspension": s,
            }
            for d, s in suspensions.items()
            if s["status"] == "suspended"
        ]
        return out

    def suspensions(self) -> dict[str, Suspension]:
        """Each device's latest budget suspension (ledger/service/budget.py): when, until when, under which
        rule, and whether it is still in force (`status` suspended) or ended (`reinstated_at`)."""
        rows = self.con.execute(
            """
            WITH s AS (SELECT json_extract_string(body, '$.device') AS device, arg_max(body, height) AS body,
                              max(height) AS height FROM entries WHERE type = 'device_suspended' GROUP BY 1),
            r AS (SELECT json_extract_string(body, '$.device') AS device, max(height) AS height,
                         arg_max(json_extract(body, '$.at')::BIGINT, height) AS at
                  FROM entries WHERE type = 'device_reinstated' GROUP BY 1)
            SELECT s.device, s.body, d.status, CASE WHEN r.height > s.height THEN r.at END
            FROM s JOIN devices d USING (device) LEFT JOIN r USING (device) ORDER BY s.device
            """
        ).fetchall()
        out: dict[str, Suspension] = {}
        for device, body, status, reinstated_at in rows:
            entry = json.loads(body)
            out[device] = {
                "at": entry.get("at"),
                "until": entry.get("until"),
                "rule": entry.get("rule"),
                "over_budget": entry.get("over_budget"),
                "status": status,
                "reinstated_at": reinstated_at,
            }
        return out

    def witness_reports(self, kind: str | None = None, limit: int = 100) -> list[WitnessReportRow]:
        sql = "SELECT witness, kind, body, received_at FROM witness_reports"
        args: list[Any] = []
        if kind:
            sql += " WHERE kind = ?"
            args.append(kind)
        rows = self.con.execute(sql + " ORDER BY received_at DESC LIMIT ?", [*args, limit]).fetchall()
        return [{"witness": w, "kind": k, "body": b, "received_at": t} for w, k, b, t in rows]

    def device_statuses(self) -> dict[str, tuple[str, int]]:
        return {
            d: (s, at)
            for d, s, at in self.con.execute("SELECT device, status, changed_at FROM device_status").fetchall()
        }


def _block_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    height, hash_, header, sig = row
    return {
        "height": height,
        "hash": hash_,
        "header_json": header,
        "header": _object_or_none(header),
        "sig": bytes(sig),
    }


def _object_or_none(text: str) -> dict[str, Any] | None:
    """A stored JSON object, or None when the text is not one: an audit names it, never crashes on it."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _reading_or_none(device: str, kind: str, seq: int, ts: int, value: int, sig: bytes) -> Reading | None:
    try:
        return Reading(
            v=1,
            device=device,
            kind=kind,  # type: ignore[arg-type]  # a stored kind, which pydantic checks again as a string
            seq=seq,
            ts=ts,
            value=value,
            sig=base64.b64encode(sig).decode(),
        )
    except ValueError:
        return None


def _readings_table(height: int, first_idx: int, rows: Readings) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "height": pa.array([height] * n, pa.int64()),
            "idx": pa.array(range(first_idx, first_idx + n), pa.int32()),
            "device": rows.device,
            "kind": rows.kind,
            "seq": pa.array(rows.seq, pa.int64()),
            "ts": pa.array(rows.ts, pa.int64()),
            "value": pa.array(rows.value, pa.int64()),
            "sig": pa.array(rows.sig_bytes, pa.binary()),
            "received_at": pa.array(rows.received_at, pa.int64()),
        }
    )
