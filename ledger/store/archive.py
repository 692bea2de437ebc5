"""Sealed blocks as Parquet files that DuckDB reads in place: history for object storage.

Why: the DuckDB file grows with every reading and must sit on the ingest's disk.
Sealed blocks never change, so they can be copied out as immutable Parquet files
(to a bucket, a tape, an auditor), queried where they lie, and checked with the
same structural audit as the live ledger (`sqlaudit.audit_store` over views).

Layout of an archive directory:

    manifest.json                 what is in the archive, written last (see below)
    blocks-000000.parquet         segment 0: headers and signatures exactly as stored
    entries-000000.parquet        segment 0: the ledger's own entries
    readings-000000.parquet       segment 0: readings, sorted by (device, ts)
    blocks-000001.parquet ...

Segments: consecutive sealed blocks, closed at the first block boundary where a
segment holds SEGMENT_LEAVES leaves (readings and entries) or SEGMENT_BLOCKS
blocks: about 65 MB of readings, a good object size, and a bound on the memory a
sort takes. A run appends segments after the archive's last block and never
rewrites one, so a run that finds few new blocks writes a small last segment.

Readings are sorted by (device, ts) inside each file, in row groups of
ROW_GROUP_ROWS, so the min/max statistics of `device` let DuckDB skip every row
group but the ones holding the device asked for. Each file's heights are those of
its segment only, so a query by height skips whole files.

Crash safety: each file is written to a dot-named temporary file, synced and
renamed, and the manifest (also renamed into place) is rewritten after each
segment. A crash leaves at most a segment's files the manifest does not list,
which the next run overwrites (the names depend only on the segment number).

manifest.json: `format`, the archive's first and last height and block hash,
counts, and per segment its height range, first and last block hash, and per
file its name, rows, bytes and SHA-256. Hashes are of the headers (block_hash),
never taken from the stored `hash` column.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
from nacl.signing import VerifyKey
from typing_extensions import TypedDict

from ledger.chain.audit import Progress
from ledger.chain.blocks import GENESIS_PREV, block_hash
from ledger.documents import document
from ledger.errors import Refused
from ledger.store.store import Store
from ledger.store.transactions import snapshot

FORMAT = "cityledger-archive/1"
MANIFEST = "manifest.json"
SEGMENT_LEAVES = 1_000_000
"""Leaves after which a segment is closed (at the next block boundary)."""
SEGMENT_BLOCKS = 50_000
"""Blocks after which a segment is closed: ingest seals at least once a second, often with few leaves."""
ROW_GROUP_ROWS = 32_768
"""Rows per Parquet row group: the unit DuckDB skips by statistics (a device's history)."""
PLAN_CHUNK = 100_000
"""Block sizes fetched at once while planning segments."""

# Column names and DuckDB types of each archived table, as ledger/store/schema.py makes them.
COLUMNS: dict[str, dict[str, str]] = {
    "blocks": {
        "height": "BIGINT",
        "hash": "VARCHAR",
        "prev": "VARCHAR",
        "header": "VARCHAR",
        "sig": "BLOB",
        "size": "INTEGER",
        "sealed_at": "BIGINT",
    },
    "entries": {"height": "BIGINT", "idx": "INTEGER", "type": "VARCHAR", "body": "VARCHAR"},
    "readings": {
        "height": "BIGINT",
        "idx": "INTEGER",
        "device": "VARCHAR",
        "kind": "VARCHAR",
        "seq": "BIGINT",
        "ts": "BIGINT",
        "value": "BIGINT",
        "sig": "BLOB",
        "received_at": "BIGINT",
    },
}
ORDER = {"blocks": "height", "entries": "height, idx", "readings": "device, ts, height, idx"}

# What the audit reads: NULLs (which the DuckDB schema forbids, a Parquet file does not)
# become values the audit rejects and names, so a NULL can never crash it or pass it.
# `height` stays a bare column so a height range still skips files by their statistics;
# a row with no height belongs to no block, which then misses a leaf.
AUDIT_VIEWS = {
    "blocks": "height, coalesce(hash, '') AS hash, coalesce(prev, '') AS prev, coalesce(header, '{}') AS header,"
    " coalesce(sig, ''::BLOB) AS sig, coalesce(size, 0) AS size, coalesce(sealed_at, 0) AS sealed_at",
    "entries": "height, coalesce(idx, -1) AS idx, coalesce(type, '') AS type, coalesce(body, 'null') AS body",
    "readings": "height, coalesce(idx, -1) AS idx, coalesce(device, '') AS device, coalesce(kind, '') AS kind,"
    " coalesce(seq, 0) AS seq, coalesce(ts, -1) AS ts, coalesce(value, -1) AS value,"
    " coalesce(sig, ''::BLOB) AS sig, received_at",
}
# The audit's first read of a range expects (height, idx) order; the files are in (device, ts).
AUDIT_ORDER = {"blocks": "height", "entries": "height, idx", "readings": "height, idx"}


class ArchiveError(Refused):
    """An archive directory or manifest that cannot be used, said plainly."""


@document
class ArchiveWritten(TypedDict):
    """What `write_archive` did: the segments (blocks, readings, entries, bytes) it appended in this
    run, starting at `first_height` (None: nothing new), and where the archive now ends."""

    archive: str
    segments_written: int
    blocks: int
    readings: int
    entries: int
    bytes: int
    first_height: int | None
    last_height: int | None
    last_hash: str | None
    segments: int
    seconds: float


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True, slots=True)
class FileEntry:
    name: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Segment:
    segment: int
    first_height: int
    last_height: int
    first_hash: str
    last_hash: str
    files: dict[str, FileEntry]

    @property
    def blocks(self) -> int:
        return self.last_height - self.first_height + 1


@dataclass(frozen=True, slots=True)
class Manifest:
    segments: list[Segment]

    @property
    def first_height(self) -> int:
        return self.segments[0].first_height

    @property
    def last_height(self) -> int:
        return self.segments[-1].last_height

    @property
    def first_hash(self) -> str:
        return self.segments[0].first_hash

    @property
    def last_hash(self) -> str:
        return self.segments[-1].last_hash

    def rows(self, table: str) -> int:
        return sum(s.files[table].rows for s in self.segments)

    def files(self, table: str) -> list[str]:
        return [s.files[table].name for s in self.segments]

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "first_height": self.first_height,
            "last_height": self.last_height,
            "first_hash": self.first_hash,
            "last_hash": self.last_hash,
            "blocks": self.rows("blocks"),
            "readings": self.rows("readings"),
            "entries": self.rows("entries"),
            "segments": [asdict(s) for s in self.segments],
        }


def manifest_bytes(manifest: Manifest) -> bytes:
    """manifest.json as written: indented JSON, one member per line, so that a reader can
    look at it; tests/golden/manifest.json holds an example, and a change shows there."""
    return json.dumps(manifest.as_dict(), indent=1).encode() + b"\n"


def load_manifest(directory: Path) -> Manifest | None:
    """The archive's manifest; None when the directory holds none yet."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        return parse_manifest(json.loads(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path} is not a cityledger archive manifest: {exc}") from exc


def parse_manifest(data: Any) -> Manifest:
    """Strictly: a manifest this module would have written, or ArchiveError naming what is off."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArchiveError(f"not a {FORMAT} manifest")
    raw = data.get("segments")
    if not isinstance(raw, list) or not raw:
        raise ArchiveError("the manifest lists no segments")
    first = raw[0].get("segment") if isinstance(raw[0], dict) else None
    segments = [_segment(item, n) for n, item in enumerate(raw, first if type(first) is int else 0)]
    for before, after in zip(segments, segments[1:]):
        if after.first_height != before.last_height + 1:
            raise ArchiveError(f"segment {after.segment} does not start right after segment {before.segment}")
    manifest = Manifest(segments)
    summary = manifest.as_dict()
    for key in ("first_height", "last_height", "first_hash", "last_hash", "blocks", "readings", "entries"):
        if data.get(key) != summary[key]:
            raise ArchiveError(f"{key} disagrees with the segments")
    return manifest


def _segment(item: Any, n: int) -> Segment:
    try:
        files = {table: FileEntry(**item["files"][table]) for table in COLUMNS}
        segment = Segment(
            item["segment"], item["first_height"], item["last_height"], item["first_hash"], item["last_hash"], files
        )
    except (KeyError, TypeError) as exc:
        raise ArchiveError(f"segment {n} is malformed ({exc})") from exc
    ints = [
        segment.segment,
        segment.first_height,
        segment.last_height,
        *(f.rows for f in files.values()),
        *(f.bytes for f in files.values()),
    ]
    texts = [segment.first_hash, segment.last_hash, *(f.sha256 for f in files.values())]
    if (
        segment.segment != n
        or any(type(i) is not int or i < 0 for i in ints)
        or segment.last_height < segment.first_height
        or any(not isinstance(t, str) or len(t) != 64 for t in texts)
        or any(f.name != file_name(table, n) for table, f in files.items())
    ):
        raise ArchiveError(f"segment {n} is malformed")
    return segment


def file_name(table: str, segment: int) -> str:
    return f"{table}-{segment:06d}.parquet"


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _quote(path: Path) -> str:
    """A path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


# --------------------------------------------------------------------------- writing


def write_archive(
    store: Store, out: Path, upto_height: int | None = None, progress: Progress | None = None
) -> ArchiveWritten:
    """Append the sealed blocks up to `upto_height` (default: all) that `out` lacks, segment by segment."""
    started = time.perf_counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create the archive directory {out}: {exc}") from exc
    manifest = load_manifest(out)
    head = store.head()
    last = min(head[0], upto_height) if head and upto_height is not None else (head[0] if head else -1)
    start = 0
    if manifest:
        _check_continues(store, manifest)
        start = manifest.last_height + 1
    segments = list(manifest.segments) if manifest else []
    written: list[Segment] = []
    total = max(0, last - start + 1)
    if progress and total:
        progress(0, total)
    for lo, hi in plan_segments(store.con, start, last):
        segment = write_segment(store.con, out, segments[-1].segment + 1 if segments else 0, lo, hi)
        segments.append(segment)
        written.append(segment)
        _write_atomic(out / MANIFEST, manifest_bytes(Manifest(segments)))
        if progress:
            progress(hi - start + 1, total)
    return {
        "archive": str(out),
        "segments_written": len(written),
        "blocks": sum(s.blocks for s in written),
        "readings": sum(s.files["readings"].rows for s in written),
        "entries": sum(s.files["entries"].rows for s in written),
        "bytes": sum(f.bytes for s in written for f in s.files.values()),
        "first_height": written[0].first_height if written else None,
        "last_height": segments[-1].last_height if segments else None,
        "last_hash": segments[-1].last_hash if segments else None,
        "segments": len(segments),
        "seconds": time.perf_counter() - started,
    }


def _check_continues(store: Store, manifest: Manifest) -> None:
    """Refuse to append to an archive of another ledger, or of a ledger since rewritten."""
    block = store.block(manifest.last_height)
    if block is None or block_hash(block["header"]) != manifest.last_hash:
        raise ArchiveError(
            f"the archive's last block {manifest.last_height} is not this ledger's block "
            f"{manifest.last_height}: refusing to append to an archive of another ledger"
        )


def plan_segments(con: duckdb.DuckDBPyConnection, start: int, last: int) -> Iterator[tuple[int, int]]:
    """Height ranges start..last, each closed once it reaches SEGMENT_LEAVES leaves or SEGMENT_BLOCKS blocks."""
    lo, leaves, blocks, height = start, 0, 0, start
    while height <= last:
        rows = con.execute(
            "SELECT height, size FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height",
            [height, min(last, height + PLAN_CHUNK - 1)],
        ).fetchall()
        if not rows:
            break
        for h, size in rows:
            leaves, blocks = leaves + size, blocks + 1
            if leaves >= SEGMENT_LEAVES or blocks >= SEGMENT_BLOCKS:
                yield lo, h
                lo, leaves, blocks = h + 1, 0, 0
        height = rows[-1][0] + 1
    if lo <= min(last, height - 1):
        yield lo, min(last, height - 1)


def write_segment(con: duckdb.DuckDBPyConnection, out: Path, segment: int, lo: int, hi: int) -> Segment:
    """The three files of blocks lo..hi, from one snapshot, each renamed into place once whole."""
    files: dict[str, FileEntry] = {}
    with snapshot(con):  # a read: nothing to keep, and the rollback also ends a transaction a failed COPY aborted
        ends = con.execute(
            "SELECT height, header FROM blocks WHERE height IN (?, ?) ORDER BY height", [lo, hi]
        ).fetchall()
        for table in COLUMNS:
            files[table] = _copy(con, out, table, segment, lo, hi)
    hashes = {height: block_hash(json.loads(header)) for height, header in ends}
    if lo not in hashes or hi not in hashes:
        raise ArchiveError(f"blocks {lo} and {hi} are not both in the ledger")
    return Segment(segment, lo, hi, hashes[lo], hashes[hi], files)


def _copy(con: duckdb.DuckDBPyConnection, out: Path, table: str, segment: int, lo: int, hi: int) -> FileEntry:
    name = file_name(table, segment)
    tmp = out / f".{name}.tmp"
    columns = ", ".join(COLUMNS[table])
    row = con.execute(
        f"COPY (SELECT {columns} FROM {table} WHERE height BETWEEN {int(lo)} AND {int(hi)} ORDER BY {ORDER[table]})"
        f" TO {_quote(tmp)} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS})"
    ).fetchone()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    entry = FileEntry(name, int(row[0]) if row else 0, tmp.stat().st_size, sha256_file(tmp))
    os.replace(tmp, out / name)
    _sync_dir(out)
    return entry


# --------------------------------------------------------------------------- reading in place


def connect(directory: Path, manifest: Manifest | None = None, *, audit: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with views `blocks`, `entries`, `readings` over the manifest's files.

    Nothing is loaded: each query reads what its filters leave of the files. `audit`
    gives the views the audit reads (NULLs made rejectable, readings in (height, idx) order).
    """
    manifest = manifest or load_manifest(directory)
    if manifest is None:
        raise ArchiveError(f"no archive in {directory} (no {MANIFEST})")
    con = duckdb.connect(config={"memory_limit": os.environ.get("CITYLEDGER_DB_MEMORY", "2GB")})
    con.execute("SET parquet_metadata_cache = true")
    for table, columns in COLUMNS.items():
        files = "[" + ", ".join(_quote(directory / name) for name in manifest.files(table)) + "]"
        select = AUDIT_VIEWS[table] if audit else ", ".join(columns)
        order = f" ORDER BY {AUDIT_ORDER[table]}" if audit else ""
        con.execute(f"CREATE VIEW {table} AS SELECT {select} FROM read_parquet({files}){order}")
    return con


def device_readings(
    directory: Path, device: str, start: int | None = None, end: int | None = None
) -> list[dict[str, Any]]:
    """One device's archived readings with start <= ts < end (epoch ms), oldest first.

    Reads only the row groups whose `device` statistics can hold the device.
    """
    con = connect(directory)
    try:
        rows = con.execute(
            "SELECT height, idx, device, kind, seq, ts, value, sig, received_at FROM readings"
            " WHERE device = $device AND ts >= $start AND ts < $end ORDER BY ts, seq",
            {
                "device": device,
                "start": start if start is not None else -(2**63),
                "end": end if end is not None else 2**63 - 1,
            },
        ).fetchall()
    finally:
        con.close()
    keys = ("height", "idx", "device", "kind", "seq", "ts", "value", "sig", "received_at")
    return [{**dict(zip(keys, row)), "sig": base64.b64encode(row[7]).decode()} for row in rows]


# --------------------------------------------------------------------------- verifying


class LiveLedger(Protocol):
    """The two calls of `LedgerAPI` (or `RemoteLedger`) that `verify_archive` makes (their documents,
    `ArchiveAnchor` and `KeyLink`, are the service's: ledger/service/results/chain.py)."""

    def archive_anchor(self, last_height: int) -> Mapping[str, Any]: ...
    def key_chain(self) -> Sequence[Mapping[str, Any]]: ...


LIVE_ERRORS = (OSError, ValueError, LookupError, RuntimeError, duckdb.Error)
"""What a live ledger that cannot be reached raises (ledger/errors.py's families are among these)."""


def verify_archive(
    directory: Path,
    *,
    live: LiveLedger | None = None,
    ledger_key: str | None = None,
    first_key: str | None = None,
    deep: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The structural audit over the archive's files, their hashes against the manifest, and
    the live ledger's link to the archive's last block.

    `ledger_key` is trusted for the archive's first block as given; otherwise `first_key`
    (or the live ledger's first key) is followed along the live ledger's key chain to it.
    """
    started = time.perf_counter()
    report = _empty_report(directory, deep)
    try:
        manifest = load_manifest(directory)
        if manifest is None:
            raise ArchiveError(f"no archive in {directory} (no {MANIFEST})")
    except ArchiveError as exc:
        report["failure"] = str(exc)
        return report
    report.update(first_height=manifest.first_height, last_height=manifest.last_height, segments=len(manifest.segments))
    anchor, reason = _anchor(live, manifest.last_height)
    problems, readable = check_files(directory, manifest)
    report["files_checked"] = 3 * len(manifest.segments)
    report["file_failures"] = problems
    if readable:
        key = _trusted_key(manifest.first_height, ledger_key, first_key, anchor, live)
        con = connect(directory, manifest, audit=True)
        try:
            problems += check_placement(con, directory, manifest)
            audited = _audit(con, manifest, key, deep, progress)
        finally:
            con.close()
        report.update(audited)
        report["audit_seconds"] = report.pop("seconds", 0.0)
    else:
        report["failure"] = "not audited: files missing or unreadable"
    report["link"] = check_link(anchor, reason, manifest.last_height, manifest.last_hash)
    report["ok"] = bool(report["failure"] is None and not problems and report["link"]["ok"] is not False)
    report["seconds"] = time.perf_counter() - started  # everything: hashes, placement, audit, link
    return report


def _empty_report(directory: Path, deep: bool) -> dict[str, Any]:
    return {
        "archive": str(directory),
        "ok": False,
        "blocks": 0,
        "readings": 0,
        "entries": 0,
        "seconds": 0.0,
        "audit_seconds": 0.0,
        "deep": deep,
        "failure": None,
        "failed_block": None,
        "failed_reading": None,
        "first_height": None,
        "last_height": None,
        "segments": 0,
        "files_checked": 0,
        "file_failures": [],
        "link": {"checked": False, "ok": None, "detail": "not checked"},
    }


def _anchor(live: LiveLedger | None, last_height: int) -> tuple[Mapping[str, Any] | None, str]:
    """What the live ledger says about the heights around the archive's end, or why it cannot say."""
    if live is None:
        return None, "no live ledger given"
    try:
        return live.archive_anchor(last_height=last_height), ""
    except LIVE_ERRORS as exc:
        return None, str(exc) or type(exc).__name__


def _trusted_key(
    first_height: int,
    ledger_key: str | None,
    first_key: str | None,
    anchor: Mapping[str, Any] | None,
    live: LiveLedger | None,
) -> VerifyKey:
    """The ledger key the archive's first block must be signed by."""
    from ledger.chain.keychain import key_for_height
    from ledger.keys import verify_key_from_hex

    if ledger_key:
        return verify_key_from_hex(ledger_key)
    first = first_key or (anchor or {}).get("first_key")
    if not first:
        raise FileNotFoundError("no trusted ledger key (and the live ledger is not reachable): pass --ledger-key")
    if first_height:
        try:
            if live is None or anchor is None:
                raise FileNotFoundError("the live ledger is not reachable")
            first = key_for_height(first, live.key_chain(), first_height)
        except LIVE_ERRORS as exc:
            raise FileNotFoundError(
                f"the archive starts at block {first_height} and the key then in force is not "
                f"known ({exc}): pass --ledger-key"
            ) from exc
    return verify_key_from_hex(first)


def check_files(directory: Path, manifest: Manifest) -> tuple[list[str], bool]:
    """Each file against the manifest (size, SHA-256) and as Parquet with the expected columns.

    Returns the problems, each naming its file, and whether every file can be audited.
    """
    problems: list[str] = []
    readable = True
    probe = duckdb.connect()
    try:
        for segment in manifest.segments:
            for table, entry in segment.files.items():
                path = directory / entry.name
                if not path.is_file():
                    problems.append(f"{entry.name}: missing")
                    readable = False
                    continue
                if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
                    problems.append(f"{entry.name}: SHA-256 differs from the manifest (file changed)")
                schema = _schema_problem(probe, path, table)
                if schema:
                    problems.append(f"{entry.name}: {schema}")
                    readable = False
    finally:
        probe.close()
    return problems, readable


def _schema_problem(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> str | None:
    try:
        found = {
            name: kind
            for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_quote(path)})").fetchall()
        }
    except duckdb.Error as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0]})"
    if found != COLUMNS[table]:
        return f"columns {found} are not the {table} columns {COLUMNS[table]}"
    return None


def check_placement(con: duckdb.DuckDBPyConnection, directory: Path, manifest: Manifest) -> list[str]:
    """Row counts and heights of each file against the manifest: a row in the wrong file is named."""
    problems = []
    for table in COLUMNS:
        files = ", ".join(_quote(directory / name) for name in manifest.files(table))
        found = {
            Path(name).name: (n, lo, hi, nulls)
            for name, n, lo, hi, nulls in con.execute(
                f"SELECT filename, count(*), min(height), max(height), count(*) - count(height)"
                f" FROM read_parquet([{files}], filename = true) GROUP BY filename"
            ).fetchall()
        }
        for segment in manifest.segments:
            entry = segment.files[table]
            n, lo, hi, nulls = found.get(entry.name, (0, None, None, 0))
            if n != entry.rows:
                problems.append(f"{entry.name}: holds {n} rows, the manifest says {entry.rows}")
            if nulls or (n and (lo < segment.first_height or hi > segment.last_height)):
                problems.append(
                    f"{entry.name}: holds heights outside its segment's {segment.first_height}..{segment.last_height}"
                )
    return problems


def _audit(
    con: duckdb.DuckDBPyConnection, manifest: Manifest, key: VerifyKey, deep: bool, progress: Progress | None
) -> dict[str, Any]:
    """`audit_store` over the views, then the archive's ends against the manifest: the report's audit part."""
    from ledger.store.sqlaudit import audit_store

    store = Store(con)
    start, total = manifest.first_height, manifest.last_height - manifest.first_height + 1
    if deep and start:
        raise ValueError(f"--deep needs an archive from genesis; this one starts at block {start}")
    try:
        prev = GENESIS_PREV if start == 0 else _prev_of(store, start)
        result: dict[str, Any] = dict(
            audit_store(
                store, key, deep=deep, total=total, progress=progress, start=start, prev=prev, fits=True
            ).as_dict()
        )
        if result["ok"]:
            result["failure"] = _ends_problem(store, manifest, result["blocks"])
    except (ValueError, TypeError, AttributeError, duckdb.Error) as exc:  # e.g. a header that is not JSON
        return {"failure": f"audit stopped: {type(exc).__name__}: {exc}"}
    result.pop("ok")
    return result


def _prev_of(store: Store, height: int) -> str:
    """The `prev` of the archive's first block: trusted once the audit has checked its signature."""
    block = store.block(height)
    prev = block["header"].get("prev") if block and isinstance(block["header"], dict) else None
    return prev if isinstance(prev, str) else GENESIS_PREV


def _ends_problem(store: Store, manifest: Manifest, audited: int) -> str | None:
    """After a passing audit: did it reach the manifest's last block, and are the ends the manifest's?"""
    start = manifest.first_height
    if audited != manifest.last_height - start + 1:
        return f"the archive's blocks end at {start + audited - 1}, the manifest says {manifest.last_height}"
    first, last = store.block(start), store.block(manifest.last_height)
    if (
        first is None
        or last is None
        or block_hash(first["header"]) != manifest.first_hash
        or block_hash(last["header"]) != manifest.last_hash
    ):
        return "the manifest's first or last block hash is not the archive's"
    return None


def check_link(anchor: Mapping[str, Any] | None, reason: str, last_height: int, last_hash: str) -> dict[str, Any]:
    """Does the live ledger continue the archive? Its block last_height + 1 must name the archive's
    last hash as `prev` (or, when the archive reaches the live head, its last block must be the head)."""
    if anchor is None:
        return {"checked": False, "ok": None, "detail": f"live ledger not reachable ({reason}): link not checked"}
    head = anchor.get("head")
    if anchor.get("next_prev") is not None:
        ok = anchor["next_prev"] == last_hash
        detail = (
            f"live block {last_height + 1} names the archive's last block as prev"
            if ok
            else f"live block {last_height + 1} does not name the archive's last block {last_height} as prev"
        )
    elif anchor.get("hash_at") is not None:
        ok = anchor["hash_at"] == last_hash
        detail = (
            f"the live head is the archive's last block {last_height}"
            if ok
            else f"live block {last_height} differs from the archive's last block"
        )
    else:
        ok = False
        detail = (
            f"the live ledger ends at block {head}, before the archive's last block {last_height}"
            if head is not None
            else "the live ledger has no blocks"
        )
    return {"checked": True, "ok": ok, "detail": detail}
