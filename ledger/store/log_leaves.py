"""The leaf data of stored blocks, in log order (PROTOCOL.md sections 4 and 7), many blocks per query.

Why here: the transparency log is rebuilt from the blocks when an existing ledger gains it
(the migration replays every leaf) and when the tile directory falls behind the ledger (a
crash between a commit and its tiles). Both want every leaf in order, fast: DuckDB writes each
stored reading's canonical JSON itself (the same expression the SQL audit hashes), and only a
block whose rows it cannot vouch for is rebuilt in Python, leaf by leaf, as the audit would.
"""

from __future__ import annotations

from collections.abc import Iterator

from ledger.store.sqlaudit import READING_LEAF_SQL, READING_PARSES
from ledger.store.store import Store

BLOCKS_PER_QUERY = 200
READING_DATA_SQL = READING_LEAF_SQL.replace("concat(chr(0), ", "concat(", 1)  # the leaf data, without its 0x00


def block_leaves(store: Store, lo: int, hi: int) -> Iterator[tuple[int, list[bytes]]]:
    """(height, the block's leaf data in log order) for every block lo..hi, in height order."""
    start = lo
    while start <= hi:
        end = min(hi, start + BLOCKS_PER_QUERY - 1)
        sizes = dict(
            store.con.execute("SELECT height, size FROM blocks WHERE height BETWEEN ? AND ?", [start, end]).fetchall()
        )
        grouped: dict[int, list[tuple[int, bytes | None]]] = {h: [] for h in sizes}
        for height, idx, body in store.con.execute(
            "SELECT height, idx, body FROM entries WHERE height BETWEEN ? AND ? ORDER BY height, idx", [start, end]
        ).fetchall():
            grouped.setdefault(height, []).append((idx, body.encode()))
        for height, idx, ok, data in store.con.execute(
            f"SELECT height, idx, {READING_PARSES}, {READING_DATA_SQL} FROM readings"
            " WHERE height BETWEEN ? AND ? ORDER BY height, idx",
            [start, end],
        ).fetchall():
            grouped.setdefault(height, []).append((idx, data.encode() if ok else None))
        for height in sorted(grouped):
            leaves = grouped[height]
            clean = all(data is not None for _, data in leaves) and [i for i, _ in leaves] == list(range(len(leaves)))
            yield height, ([d for _, d in leaves] if clean else _slow(store, height))  # type: ignore[misc]
        start = end + 1


def _slow(store: Store, height: int) -> list[bytes]:
    """A block with a row SQL cannot write as JSON: the Python audit's reading of it, leaf by leaf.

    A row that makes no valid reading at all has no leaf data; it is left out, and the log's
    root then differs from the header's, which `verify` reports."""
    out: list[bytes] = []
    for _, obj, raw in store.leaves(height):
        if raw is not None:
            out.append(raw)
        elif obj is not None and not isinstance(obj, dict):
            out.append(obj.leaf_data())
    return out
