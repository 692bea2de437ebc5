"""The registry tables against the chain, read from DuckDB for `verify --deep` (issue 15).

The comparison itself is pure and lives in ledger/chain/registry_audit.py; here the
entries and the tables are read in one snapshot, a partition of rows at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import duckdb

from ledger.chain.registry_audit import TABLES, Disagreement, Entry, Row, Table, chain_rows, compare
from ledger.store.transactions import snapshot

MAX_KEPT = 1000
"""Disagreements kept for the report; beyond that they are counted (a table rewritten whole
would otherwise print a line per row)."""
PARTITION_ROWS = 200_000
"""Rows (or entries) per partition: what the comparison holds in memory at once."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `check_store` found: the first MAX_KEPT disagreements, how many in all, up to which height."""

    disagreements: tuple[Disagreement, ...]
    found: int
    upto: int


def check_store(con: duckdb.DuckDBPyConnection) -> Outcome | None:
    """Compare every registry table with the entries of blocks up to the head, in one snapshot
    (a cursor of its own in one read transaction); None when there is no registry (an archive)."""
    cur = con.cursor()
    try:
        with snapshot(cur):
            return _check(cur)
    finally:
        cur.close()


def _check(cur: duckdb.DuckDBPyConnection) -> Outcome | None:
    columns = _columns(cur)
    if "devices" not in columns:
        return None
    head = cur.execute("SELECT max(height) FROM blocks").fetchone()
    upto = -1 if head is None or head[0] is None else int(head[0])
    counts = dict(
        cur.execute(f"SELECT {_member('entry')}, count(*) FROM entries WHERE height <= ? GROUP BY 1", [upto]).fetchall()
    )
    kept: list[Disagreement] = []
    found = 0
    for table in TABLES:
        for found_here in _check_table(cur, table, columns.get(table.name), counts, upto):
            found += 1
            if len(kept) < MAX_KEPT:
                kept.append(found_here)
    return Outcome(tuple(kept), found, upto)


def _columns(cur: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    rows = cur.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_catalog = current_database() AND table_schema = current_schema()"
    ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


def _check_table(
    cur: duckdb.DuckDBPyConnection, table: Table, present: set[str] | None, counts: Mapping[str | None, int], upto: int
) -> Iterator[Disagreement]:
    """One table, a partition at a time. A table an older schema lacks counts as empty."""
    entries = sum(counts.get(kind, 0) for kind in table.entries)
    rows = cur.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0] if present else 0  # type: ignore[index]
    parts = 1 + max(entries, rows) // PARTITION_ROWS
    for part in range(parts):
        expected = chain_rows(table, _entries(cur, table, upto, part, parts))
        stored = _rows(cur, table, present, part, parts) if present else []
        yield from compare(table, expected, stored)


def _member(name: str) -> str:
    """SQL for an entry body's member as text; NULL, not an error, for a body that is not JSON."""
    return f"CASE WHEN json_valid(body) THEN json_extract_string(body, '$.{name}') END"


def _part(expr: str, parts: int) -> str:
    return f" AND hash(coalesce(CAST({expr} AS VARCHAR), '')) % {parts} = $part" if parts > 1 else ""


def _entries(cur: duckdb.DuckDBPyConnection, table: Table, upto: int, part: int, parts: int) -> list[Entry]:
    """The table's entries in chain order, read as the audit reads them (Python's JSON parser);
    the SQL filter on the `entry` member only narrows what is read."""
    found = cur.execute(
        "SELECT height, body FROM entries WHERE height <= $upto"
        f" AND {_member('entry')} IN (SELECT unnest($kinds::VARCHAR[]))"
        + _part(_member(table.member), parts)
        + " ORDER BY height, idx",
        {"upto": upto, "kinds": list(table.entries), **({"part": part} if parts > 1 else {})},
    ).fetchall()
    out = []
    for height, body in found:
        try:
            entry = json.loads(body)
        except ValueError:
            continue  # the chain audit names a body that is not JSON
        if isinstance(entry, dict):
            out.append((height, entry))
    return out


def _rows(cur: duckdb.DuckDBPyConnection, table: Table, present: set[str], part: int, parts: int) -> list[Row]:
    first = (table.select or table.key)[0]
    return cur.execute(
        f"SELECT {table.sql(present)} FROM {table.name} WHERE true" + _part(first, parts),
        {"part": part} if parts > 1 else {},
    ).fetchall()
