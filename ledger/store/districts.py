"""A city of district chains: each district's first key, and the district heads the city chain
anchors (ledger/chain/anchors.py says what an anchor proves)."""

from __future__ import annotations

from ledger.store.store import Store


def districts(store: Store) -> dict[str, str]:
    """Each district chain and its first key."""
    return dict(store.con.execute("SELECT district, ledger_key FROM districts").fetchall())


def add_district(store: Store, district: str, first_key: str, at: int, height: int) -> None:
    store.con.execute("INSERT INTO districts VALUES (?, ?, ?, ?)", [district, first_key, at, height])


def put_district_heads(store: Store, rows: list[tuple[str, int, str, str, str, int, int]]) -> None:
    """(district, height, hash, header, base64 sig, anchored_at, city height) of each head anchored now."""
    if rows:
        store.con.executemany("INSERT OR REPLACE INTO district_heads VALUES (?, ?, ?, ?, ?, ?, ?)", rows)


def district_heads(store: Store) -> list[tuple[str, str, str, str]]:
    """(district, hash, header, sig) of the latest head anchored for each district."""
    return [tuple(r) for r in store.con.execute("SELECT district, hash, header, sig FROM district_heads").fetchall()]


def districts_anchored(store: Store) -> list[tuple[str, str, int, int | None, str | None, int | None]]:
    """(district, first key, added_at, anchored height, anchored block, anchored_at) of each district."""
    return [
        tuple(r)
        for r in store.con.execute(
            "SELECT d.district, d.ledger_key, d.added_at, max(h.height), arg_max(h.hash, h.height),"
            " max(h.anchored_at) FROM districts d LEFT JOIN district_heads h USING (district)"
            " GROUP BY ALL ORDER BY d.district"
        ).fetchall()
    ]


def first_anchor(store: Store, entry_type: str, district: str, height: int) -> tuple[int, int, str] | None:
    """(city height, index, body) of the first anchor entry of `district` at or above its `height`."""
    row = store.con.execute(
        "SELECT height, idx, body FROM entries WHERE type = ? AND json_extract_string(body, '$.district') = ?"
        " AND CAST(json_extract(body, '$.height') AS BIGINT) >= ? ORDER BY height, idx LIMIT 1",
        [entry_type, district, height],
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None
