"""The structural audit with the leaf hashing done in DuckDB, many blocks per query.

Why: the Python audit rebuilds every stored reading as a pydantic `Reading`, dumps
it to JSON and hashes it: about 74,000 readings/s. Here DuckDB writes each
reading's canonical JSON (PROTOCOL.md section 2) and hashes it, for a range of
heights per query, and Python only pairs raw 32-byte digests into each block's
RFC 9162 tree with hashlib. (Per hash, hashlib with the CPU's SHA extensions beats
DuckDB's software sha256, about 0.4 against 0.6 us here, but it holds the GIL; so the
many long leaves go to DuckDB, which runs beside Python, and the nodes to hashlib.)
Ranges are fetched in worker threads while the main thread checks the previous one:
DuckDB releases the GIL, and a range this small is hashed on one core, so two
fetches at once keep both cores busy.

The header checks are `audit.check_header`, and what a block teaches the chain
(device keys, revocations, ledger key hand-over) is `audit.learn`: the same code
as the Python audit. A (device, seq) ledgered twice is found by one GROUP BY over
the readings of each plan of ranges (`first_duplicate`), in DuckDB's bounded memory,
and reported at the block holding the second one, as the Python audit reports it.

SQL only vouches for a block's leaves when every one of them sits at its index,
parses as the Python audit would parse it (so needs no JSON escaping), is not from
a revoked device, the count matches the header's size and the root its root.
Anything else sends that one block through `audit.check_leaves`, so a failure
names the same block, reading and message as it always has.
"""

from __future__ import annotations

import binascii
import json
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from nacl.signing import VerifyKey

from ledger.chain import merkle
from ledger.chain.audit import (
    DUPLICATE,
    Chain,
    Failure,
    Leaf,
    Progress,
    Report,
    audit,
    check_header,
    check_leaves,
    check_log,
    learn,
)
from ledger.chain.blocks import GENESIS_PREV, block_hash
from ledger.chain.tlog import CompactRange
from ledger.store import registry_check
from ledger.store.store import Store

BATCH_LEAVES = 100_000
"""Leaves per query: big enough that query overhead vanishes, small enough to pipeline."""
BATCH_BLOCKS = 2_000
"""Blocks per query, for ledgers of many tiny blocks (ingest seals at least once a second)."""
FETCH_AHEAD = 2
"""Ranges fetched at once, one per core: a query over a range this small runs on one core."""

# Canonical JSON of a stored reading, after the 0x00 leaf marker. Keys in JCS order;
# `concat` writes BIGINTs in plain decimal and `base64` is RFC 4648 padded. Exact only
# for rows READING_PARSES accepts: no member of those needs JSON escaping.
READING_LEAF_SQL = (
    'concat(chr(0), \'{"device":"\', device, \'","kind":"\', kind, \'","seq":\', seq,'
    ' \',"sig":"\', base64(sig), \'","ts":\', ts, \',"v":1,"value":\', value, \'}\')'
)
# True exactly when `Reading(...)` accepts the stored columns (see store._reading_or_none):
# the device pattern, a kind, the ranges, parking 0/1, a 64-byte signature. NULL is false.
READING_PARSES = (
    "coalesce(regexp_full_match(device, '[A-Za-z0-9._-]{1,64}')"
    " AND kind IN ('water', 'gas', 'electricity', 'parking')"
    " AND seq >= 1 AND ts >= 0 AND value >= 0"
    " AND (kind <> 'parking' OR value IN (0, 1)) AND octet_length(sig) = 64, false)"
)
# The hash stays hex: Python's unhexlify of the whole column is a third of DuckDB's unhex.
READINGS_QUERY = (
    f"SELECT height, idx, {READING_PARSES}::UTINYINT AS ok, sha256({READING_LEAF_SQL}) AS h"
    " FROM readings WHERE height BETWEEN $lo AND $hi"
)

# The second reading of a (device, seq), earliest in chain order, among blocks $start..$hi.
# `{keys}`: the (device, seq) that occur more than once there. The first plan groups every
# reading; a later plan (blocks sealed while the audit ran) only the keys of its new blocks
# $lo..$hi, so chasing the head costs a scan, not a GROUP BY of the whole chain each time.
TWICE_ALL = (
    "SELECT device, seq FROM readings WHERE height BETWEEN $start AND $hi GROUP BY device, seq HAVING count(*) > 1"
)
TWICE_NEW = (
    "SELECT device, seq FROM readings SEMI JOIN (SELECT DISTINCT device, seq FROM readings"
    " WHERE height BETWEEN $lo AND $hi) USING (device, seq) WHERE height BETWEEN $start AND $hi"
    " GROUP BY device, seq HAVING count(*) > 1"
)
SECOND_READING = (
    "SELECT height, idx, device, seq FROM ("
    " SELECT height, idx, device, seq, row_number() OVER (PARTITION BY device, seq ORDER BY height, idx) AS n"
    " FROM readings SEMI JOIN ({keys}) USING (device, seq) WHERE height BETWEEN $start AND $hi)"
    " WHERE n = 2 ORDER BY height, idx LIMIT 1"
)

# Column types the SQL relies on (an integer stored as text would be hashed as if it
# were one, where the Python audit rejects it). Any other schema: the Python audit.
EXPECTED_COLUMNS: dict[str, dict[str, str]] = {
    "readings": {
        "height": "BIGINT",
        "idx": "INTEGER",
        "device": "VARCHAR",
        "kind": "VARCHAR",
        "seq": "BIGINT",
        "ts": "BIGINT",
        "value": "BIGINT",
        "sig": "BLOB",
    },
    "entries": {"height": "BIGINT", "idx": "INTEGER", "body": "VARCHAR"},
}

_H = merkle.HASH_SIZE


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True, slots=True)
class Span:
    """Where one block's readings sit in a batch, and whether SQL vouches for all of them."""

    start: int  # first reading, counted in the batch
    count: int
    clean: bool  # idx run on from the block's entries without a gap, and every reading parses


def reading_spans(
    heights: np.ndarray, idx: np.ndarray, ok: np.ndarray, first_idx: Mapping[int, int]
) -> dict[int, Span] | None:
    """Per height, from per-reading columns; None when a block's rows are not together.

    A block's readings must be idx first_idx[height] (its number of entries) onwards,
    one apart, in the order given.
    """
    if not len(heights):
        return {}
    if np.any(heights[1:] < heights[:-1]):
        return None
    starts = np.flatnonzero(np.r_[True, heights[1:] != heights[:-1]])
    counts = np.diff(np.r_[starts, len(heights)])
    offsets = np.array([first_idx.get(int(h), 0) for h in heights[starts]], np.int64)
    expected = np.arange(len(heights), dtype=np.int64) - np.repeat(starts - offsets, counts)
    dirty = np.logical_or.reduceat((idx != expected) | (ok == 0), starts)
    return {int(heights[s]): Span(int(s), int(c), not bool(d)) for s, c, d in zip(starts, counts, dirty)}


@dataclass(frozen=True, slots=True)
class Entries:
    """A block's registry entries as `Store.leaves` gives them, and their packed leaf hashes."""

    leaves: list[Leaf]
    packed: bytes


def parse_entries(rows: list[tuple[int, int, str]]) -> tuple[dict[int, Entries | None], dict[int, int], frozenset[str]]:
    """Entries per height (rows sorted by height, idx), how many each height has, and every
    device they revoke. A height maps to None when its bodies are not JSON objects at
    idx 0, 1, ...: that block takes the Python path, and fails or raises as it does there."""
    grouped: dict[int, list[tuple[int, str]]] = {}
    for height, idx, body in rows:
        grouped.setdefault(height, []).append((idx, body))
    out: dict[int, Entries | None] = {}
    revoking: set[str] = set()
    for height, items in grouped.items():
        leaves: list[Leaf] = []
        bodies: list[bytes] = []
        vouched = True
        for position, (idx, body) in enumerate(items):
            try:
                obj = json.loads(body)
            except ValueError:
                obj = None
            if not isinstance(obj, dict):
                vouched = False
                continue
            if obj.get("entry") == "device_revoked" and isinstance(obj.get("device"), str):
                revoking.add(obj["device"])  # even from a block SQL does not vouch for: Python may pass it
            vouched = vouched and idx == position
            bodies.append(body.encode())
            leaves.append((idx, obj, bodies[-1]))
        out[height] = Entries(leaves, b"".join(merkle.leaf_hash(raw) for raw in bodies)) if vouched else None
    return out, {height: len(items) for height, items in grouped.items()}, frozenset(revoking)


def _ints(column: pa.ChunkedArray, dtype: type[np.generic]) -> np.ndarray:
    """A fixed-width column as one numpy array, read off the Arrow buffers.

    (`to_numpy` would import pandas, a fifth of a second, on its first call.)
    """
    width = np.dtype(dtype).itemsize
    parts = [
        np.frombuffer(chunk.buffers()[1], dtype, len(chunk), chunk.offset * width)
        for chunk in column.chunks
        if len(chunk)
    ]
    if any(chunk.null_count for chunk in column.chunks):
        raise ValueError("unexpected NULL in an audit column")
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def _packed(column: pa.ChunkedArray) -> bytes:
    """A column of hex SHA-256 digests as the raw 32-byte digests back to back,
    decoded in one call instead of a Python object per hash."""
    parts = []
    for chunk in column.chunks:
        if not len(chunk):
            continue
        if chunk.type not in (pa.string(), pa.large_string()):  # e.g. string_view, if the connection asks for it
            chunk = chunk.cast(pa.large_string())
        width = 4 if chunk.type == pa.string() else 8
        if chunk.null_count:
            raise ValueError("unexpected NULL leaf hash")
        offsets = np.frombuffer(chunk.buffers()[1], f"<i{width}", len(chunk) + 1, chunk.offset * width)
        first, last = int(offsets[0]), int(offsets[-1])
        if last - first != 2 * _H * len(chunk):
            raise ValueError("a leaf hash is not 64 hex digits")
        parts.append(binascii.unhexlify(memoryview(chunk.buffers()[2])[first:last]))
    return b"".join(parts)


# --------------------------------------------------------------------------- SQL


def schema_fits(con: duckdb.DuckDBPyConnection) -> bool:
    """True when readings and entries have the column types and NOT NULLs the SQL assumes."""
    rows = con.execute(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_catalog = current_database() AND table_schema = current_schema()"
        " AND table_name IN ('readings', 'entries')"
    ).fetchall()
    found = {(t, c): (d, n) for t, c, d, n in rows}
    return all(
        found.get((table, column)) == (kind, "NO")
        for table, columns in EXPECTED_COLUMNS.items()
        for column, kind in columns.items()
    )


def reading_leaf_hashes(
    con: duckdb.DuckDBPyConnection, lo: int, hi: int, ordered: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes]:
    """height, idx, parses (0/1) and packed leaf hashes of the readings of blocks lo..hi.

    Unordered, rows come in the order they are stored (DuckDB keeps insertion order),
    which the writer makes (height, idx); `ordered` sorts instead, for when it does not.
    """
    query = READINGS_QUERY + (" ORDER BY height, idx" if ordered else "")
    table = con.sql(query, params={"lo": lo, "hi": hi}).to_arrow_table()
    return (
        _ints(table.column("height"), np.int64),
        _ints(table.column("idx"), np.int32),
        _ints(table.column("ok"), np.uint8),
        _packed(table.column("h")),
    )


def first_duplicate(con: duckdb.DuckDBPyConnection, start: int, lo: int, hi: int) -> Failure | None:
    """The earliest reading, among blocks start..hi, of a (device, seq) an earlier reading holds,
    looking only at keys that occur in blocks lo..hi (lo == start: all of them).

    As `audit.check_unique` names it: the audit stops at the first failure, so only the
    earliest matters, and it is reported when its block is reached (after that block's own checks).
    """
    keys = TWICE_ALL if lo <= start else TWICE_NEW
    row = con.execute(
        SECOND_READING.format(keys=keys), {"start": start, "hi": hi, **({"lo": lo} if lo > start else {})}
    ).fetchone()
    return None if row is None else Failure(int(row[0]), DUPLICATE, f"{row[2]}#{row[3]}")


@dataclass(frozen=True, slots=True)
class Batch:
    """A range of blocks with the leaf hashes of all their readings and their entries."""

    blocks: list[tuple[int, str, bytes]]  # height, header JSON, header signature
    hashes: bytes  # readings' leaf hashes, Span.start indexes them
    readings: dict[int, Span]
    entries: dict[int, Entries | None]
    revoking: frozenset[str]  # devices that entries in this range revoke: their readings get a closer look


def plan(con: duckdb.DuckDBPyConnection, start: int, lookahead: int = 100 * BATCH_BLOCKS) -> list[tuple[int, int]]:
    """Height ranges from `start` of about BATCH_LEAVES leaves (at most BATCH_BLOCKS blocks) each.

    Planned ahead so that several ranges can be fetched at once. The stored `size`
    only steers batching; every check counts the leaves actually stored.
    """
    return con.execute(
        """SELECT min(height), max(height) FROM (
               SELECT height,
                      sum(greatest(coalesce(size, 1), 1)) OVER (ORDER BY height) // $leaves AS by_leaves,
                      (row_number() OVER (ORDER BY height) - 1) // $blocks AS by_blocks
               FROM (SELECT height, size FROM blocks WHERE height >= $start ORDER BY height LIMIT $lookahead))
           GROUP BY by_leaves, by_blocks ORDER BY 1""",
        {"start": start, "leaves": BATCH_LEAVES, "blocks": BATCH_BLOCKS, "lookahead": lookahead},
    ).fetchall()


def fetch_batch(con: duckdb.DuckDBPyConnection, lo: int, hi: int) -> Batch:
    """Blocks lo..hi with their leaves and entries."""
    blocks = [
        (h, header, bytes(sig))
        for h, header, sig in con.execute(
            "SELECT height, header, sig FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height", [lo, hi]
        ).fetchall()
    ]
    entries, first_idx, revoking = parse_entries(
        con.execute(
            "SELECT height, idx, body FROM entries WHERE height BETWEEN ? AND ? ORDER BY height, idx", [lo, hi]
        ).fetchall()
    )
    heights, idx, ok, hashes = reading_leaf_hashes(con, lo, hi)
    spans = reading_spans(heights, idx, ok, first_idx)
    if spans is None or not all(span.clean for span in spans.values()):
        # Stored out of order, or something is off: sort, so that only real faults remain.
        heights, idx, ok, hashes = reading_leaf_hashes(con, lo, hi, ordered=True)
        spans = reading_spans(heights, idx, ok, first_idx)
    return Batch(blocks, hashes, spans or {}, entries, revoking)


def _fetch_on(cursor: duckdb.DuckDBPyConnection, lo: int, hi: int) -> Batch:
    """`fetch_batch` in a worker thread, on a cursor of its own that it then closes."""
    try:
        return fetch_batch(cursor, lo, hi)
    finally:
        cursor.close()


def revoked_devices_by_height(
    con: duckdb.DuckDBPyConnection, lo: int, hi: int, devices: set[str]
) -> dict[int, set[str]]:
    """Which of `devices` have readings in each block lo..hi (asked only once any is revoked)."""
    if not devices:
        return {}
    rows = con.execute(
        "SELECT height, list(DISTINCT device) FROM readings WHERE height BETWEEN ? AND ?"
        " AND device IN (SELECT unnest(?::VARCHAR[])) GROUP BY height",
        [lo, hi, sorted(devices)],
    ).fetchall()
    return {height: set(found) for height, found in rows}


def _batches(
    store: Store, ahead: int | None = None, start: int = 0, on_plan: Callable[[int, int], None] | None = None
) -> Generator[Batch, None, None]:
    """Batches in height order from `start`, the next `ahead` fetched in worker threads while this one is checked.

    Planned again from the last height when a plan runs out, so blocks sealed while
    the audit runs are checked too (as `Store.iter_blocks` does). `on_plan(lo, hi)`
    runs in this thread for each plan, while its first ranges are being fetched.
    """
    ahead = ahead or FETCH_AHEAD
    pool = ThreadPoolExecutor(ahead, thread_name_prefix="sqlaudit")
    pending: deque[tuple[Future[Batch], duckdb.DuckDBPyConnection]] = deque()

    def submit(lo: int, hi: int) -> None:
        cursor = store.con.cursor()  # made here, in the thread that owns `store`
        pending.append((pool.submit(_fetch_on, cursor, lo, hi), cursor))

    try:
        while ranges := plan(store.con, start):
            todo = iter(ranges)
            for lo, hi in islice(todo, ahead):
                submit(lo, hi)
            if on_plan:
                on_plan(ranges[0][0], ranges[-1][1])
            while pending:
                batch = pending.popleft()[0].result()
                for lo, hi in islice(todo, 1):
                    submit(lo, hi)
                if batch.blocks:
                    yield batch
            start = ranges[-1][1] + 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for _, cursor in pending:  # fetches cancelled before they started
            cursor.close()


# --------------------------------------------------------------------------- the audit


def audit_store(
    store: Store,
    ledger_key: VerifyKey,
    *,
    deep: bool = False,
    total: int = 0,
    progress: Progress | None = None,
    workers: int | None = None,
    start: int = 0,
    prev: str = GENESIS_PREV,
    fits: bool | None = None,
) -> Report:
    """`audit.audit` over a store: hashed in SQL for the structural audit; the Python audit
    for `deep` (it rebuilds every reading to check its signature anyway) or an odd schema.
    `deep` also compares the registry tables with the chain (ledger/chain/registry_audit.py).

    `start`/`prev`: begin at a later block, trusting `ledger_key` there (an archive that
    starts after genesis; SQL path only). `workers`: signature checkers for `deep`; on the SQL
    path, how many ranges DuckDB hashes at once (each on about one core; default FETCH_AHEAD).
    `fits`: the caller has checked the column types
    and NULLs itself (views over Parquet files report every column as nullable).
    """
    # The tables first, in a snapshot up to the head: every entry compared is then in a block
    # the audit below checks (or the comparison is dropped, when the chain fails first).
    registry = registry_check.check_store(store.con) if deep else None
    if deep or not (schema_fits(store.con) if fits is None else fits):
        if start:
            raise ValueError("the Python audit starts at genesis only")
        report = audit(
            store.iter_blocks(), store.leaves, ledger_key, deep=deep, total=total, progress=progress, workers=workers
        )
    else:
        report = _sql_audit(store, ledger_key, total, progress, workers, start, prev)
    return with_registry(report, registry)


def with_registry(report: Report, registry: registry_check.Outcome | None) -> Report:
    """The chain's report with the registry comparison, if the chain holds up to where the tables were read."""
    if registry is None or (report.failure is not None and report.failure.height <= registry.upto):
        return report
    return replace(
        report,
        ok=report.ok and not registry.found,
        disagreements=registry.disagreements,
        disagreements_found=registry.found,
        registry_checked=True,
    )


@dataclass
class _Duplicates:
    """The earliest second reading of a (device, seq) found so far, asked of DuckDB once per plan."""

    con: duckdb.DuckDBPyConnection
    start: int
    found: Failure | None = None

    def plan(self, lo: int, hi: int) -> None:
        if self.found is None:  # else the audit stops there, or earlier
            self.found = first_duplicate(self.con, self.start, lo, hi)


def _sql_audit(
    store: Store,
    ledger_key: VerifyKey,
    total: int,
    progress: Progress | None,
    workers: int | None,
    start: int,
    prev: str,
) -> Report:
    started = time.perf_counter()
    chain = Chain(ledger_key, log=None if start else CompactRange())
    expected_height, expected_prev = start, prev
    counts = [0, 0, 0]  # blocks, readings, entries
    failure: Failure | None = None
    duplicates = _Duplicates(store.con, start)
    # the SQL path's workers: ranges hashed at once
    batches = _batches(store, ahead=workers, start=start, on_plan=duplicates.plan)
    try:
        for batch in batches:
            outcome = _check_batch(
                store, batch, chain, counts, expected_height, expected_prev, total, progress, duplicates.found
            )
            if isinstance(outcome, Failure):
                failure = outcome
                break
            expected_height, expected_prev = outcome
    finally:
        batches.close()
    if progress:
        progress(counts[0], total)
    blocks_ok = counts[0] if failure is None else min(counts[0], failure.height - start)
    return Report(failure is None, blocks_ok, counts[1], counts[2], time.perf_counter() - started, False, failure)


def _check_batch(
    store: Store,
    batch: Batch,
    chain: Chain,
    counts: list[int],
    expected_height: int,
    expected_prev: str,
    total: int,
    progress: Progress | None,
    duplicate: Failure | None = None,
) -> Failure | tuple[int, str]:
    """Check a batch's blocks in order: the first failure, or where the chain now stands.

    `duplicate`: the earliest second reading of a (device, seq); it fails its block once
    that block has passed its own checks, as `audit.check_unique` does in the Python audit.
    """
    lo, hi = batch.blocks[0][0], batch.blocks[-1][0]
    suspects = revoked_devices_by_height(
        store.con, lo, hi, {d for d in chain.revoked | batch.revoking if isinstance(d, str)}
    )
    for height, header_json, sig in batch.blocks:
        try:
            header = json.loads(header_json)
        except ValueError:
            header = None  # check_header names it
        block = {"height": height, "header": header, "sig": sig}
        failure = check_header(block, expected_height, expected_prev, chain)
        if failure:
            return failure
        vouched = _vouched(batch, height, header, chain, suspects.get(height))
        if vouched is None:  # SQL cannot vouch for this block: the Python audit decides, and names the leaf
            leaves = store.leaves(height)
            failure = check_leaves(block, leaves, chain, deep=False)
            if failure:
                return failure
            readings = sum(1 for _, _, raw in leaves if raw is None)
            entries = len(leaves) - readings
        else:
            leaves, readings, packed = vouched
            entries = len(leaves)
            failure = check_log(chain, header, height, (packed[i : i + _H] for i in range(0, len(packed), _H)))
            if failure:
                return failure
        if duplicate is not None and duplicate.height == height:
            return duplicate
        learn(chain, header, leaves, height)
        counts[0] += 1
        counts[1] += readings
        counts[2] += entries
        expected_height, expected_prev = height + 1, block_hash(header)
        if progress and counts[0] % 100 == 0:
            progress(counts[0], total)
    return expected_height, expected_prev


def _vouched(
    batch: Batch, height: int, header: dict[str, Any], chain: Chain, devices: set[str] | None
) -> tuple[list[Leaf], int, bytes] | None:
    """(the block's entry leaves, its number of readings, its packed leaf hashes) when SQL clears
    every leaf of it; None sends the block to the Python audit."""
    entries, span = batch.entries.get(height, Entries([], b"")), batch.readings.get(height)
    if entries is None or (span is not None and not span.clean):
        return None
    readings = span.count if span else 0
    size = len(entries.leaves) + readings
    if size == 0 or size != header.get("size"):
        return None
    if devices and devices & chain.revoked:
        return None
    packed = entries.packed + (batch.hashes[span.start * _H : (span.start + span.count) * _H] if span else b"")
    if merkle.packed_root(packed).hex() != header.get("root"):
        return None
    return entries.leaves, readings, packed
