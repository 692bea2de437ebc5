"""Readings as the HTTP API lists them: some devices' readings in a time range, a page at a time.

Order is (ts, device, seq), and a page starts after the last position of the one before
(keyset), so a listing neither repeats nor skips a reading however long it is. Every page
of one listing reads the ledger as of the same block height (`as_of`, taken by the first
page and carried in the cursor): a reading sealed later, even one dated inside the range,
does not appear in the middle of a listing, so the pages add up to one consistent set.

`readings` has no index and is stored in arrival order (ledger/store/views.py says why
filtering on time is what keeps a query small). A page therefore reads the range in time
windows, from a day wide and widening with the density it finds, and stops at the window
that fills the page: a page costs about the readings it returns, not the whole range.
"""

from __future__ import annotations

import math
from typing import Any

from typing_extensions import TypedDict

from ledger.documents import document
from ledger.errors import NotFound, Refused
from ledger.store import views
from ledger.store.store import Store

DAY_MS = 86_400_000
MAX_PAGE = 10_000
FIRST_WINDOW_MS = DAY_MS
INT64_MAX = 2**63 - 1


@document
class ReadingSource(TypedDict):
    """A device whose readings a listing holds, from `since` (ms) on: the time its account took it over."""

    device: str
    district: str
    since: int


@document
class ReadingRow(TypedDict):
    device: str
    seq: int
    kind: str
    ts: int
    value: int  # the register as ledgered, in base units (litres, watt-hours; parking: 0 free, 1 taken)
    received_at: int
    height: int
    district: str


@document
class ReadingPosition(TypedDict):
    """Where a page ended: the next page starts after this (ts, device, seq)."""

    ts: int
    device: str
    seq: int


@document
class ReadingPage(TypedDict):
    items: list[ReadingRow]
    next: ReadingPosition | None  # None: the listing is complete
    as_of: int  # the block height the listing reads up to (-1: no block yet)


@document
class ReadingCount(TypedDict):
    count: int
    as_of: int


def device_source(store: Store, device: str) -> list[ReadingSource]:
    """A device's readings, all of them (NotFound for a device never enrolled)."""
    district = views.device_district(store, device)
    if district is None:
        raise NotFound(f"no device {device!r}")
    return [{"device": device, "district": district, "since": 0}]


def account_sources(store: Store, account: str) -> list[ReadingSource]:
    """The devices an account holds now, each from the time it took it over (a meter that changed
    hands keeps the earlier readings with the earlier holder). NotFound for no such account."""
    if store.con.execute("SELECT 1 FROM accounts WHERE account = ?", [account]).fetchone() is None:
        raise NotFound(f"no account {account!r}")
    out: list[ReadingSource] = []
    for d in views.devices_of_account(store, account):
        since = views.held_since(store, d["device"], account)
        if since is not None:
            out.append({"device": d["device"], "district": d["district"], "since": since})
    return out


def head_height(store: Store) -> int:
    return int(store.one("SELECT coalesce(max(height), -1) FROM blocks")[0])


def _check(sources: list[ReadingSource], start: int, end: int) -> None:
    if not 0 <= start < end <= INT64_MAX:
        raise Refused("a range is 0 <= from < to (epoch ms)")
    if any(not 0 <= s["since"] <= INT64_MAX for s in sources):
        raise Refused("a source's `since` is epoch ms")


def _rows(
    store: Store,
    sources: list[ReadingSource],
    lo: int,
    hi: int,
    as_of: int,
    after: ReadingPosition | None,
    limit: int,
) -> list[tuple[Any, ...]]:
    """Rows in [lo, hi), after `after`, in order: (ts, device, seq, kind, value, received_at, height)."""
    sql = """
        SELECT r.ts, r.device, r.seq, r.kind, r.value, r.received_at, r.height
        FROM readings r
        JOIN (SELECT unnest(?::VARCHAR[]) AS device, unnest(?::BIGINT[]) AS since) s ON r.device = s.device
        WHERE r.ts >= ? AND r.ts < ? AND r.height <= ? AND r.ts >= s.since"""
    args: list[Any] = [[s["device"] for s in sources], [s["since"] for s in sources], lo, hi, as_of]
    if after is not None:
        sql += " AND (r.ts, r.device, r.seq) > (?, ?, ?)"
        args += [after["ts"], after["device"], after["seq"]]
    return store.con.execute(sql + " ORDER BY r.ts, r.device, r.seq LIMIT ?", [*args, limit]).fetchall()


def page(
    store: Store,
    sources: list[ReadingSource],
    start: int,
    end: int,
    after: ReadingPosition | None = None,
    limit: int = 1000,
    as_of: int | None = None,
) -> ReadingPage:
    """The readings of `sources` with start <= ts < end, after `after`, at most `limit` (<= MAX_PAGE),
    as of block `as_of` (None: the head now)."""
    _check(sources, start, end)
    limit = max(1, min(int(limit), MAX_PAGE))
    as_of = head_height(store) if as_of is None else int(as_of)
    district = {s["device"]: s["district"] for s in sources}
    rows: list[tuple[Any, ...]] = []
    lo = start if after is None else max(start, int(after["ts"]))
    width = FIRST_WINDOW_MS
    while sources and lo < end and len(rows) <= limit:
        hi = min(end, lo + width)
        found = _rows(store, sources, lo, hi, as_of, after, limit + 1 - len(rows))
        rows += found
        need = limit + 1 - len(rows)
        # Widen by the density seen: enough for what is still needed, at least doubling.
        width = 4 * width if not found else max(2 * width, math.ceil(width * need / len(found) * 1.25))
        lo = hi
    items: list[ReadingRow] = [
        {
            "device": device,
            "seq": seq,
            "kind": kind,
            "ts": ts,
            "value": value,
            "received_at": received_at,
            "height": height,
            "district": district[device],
        }
        for ts, device, seq, kind, value, received_at, height in rows[:limit]
    ]
    more = len(rows) > limit
    last = items[-1] if items else None
    position: ReadingPosition | None = (
        {"ts": last["ts"], "device": last["device"], "seq": last["seq"]} if more and last else None
    )
    return {"items": items, "next": position, "as_of": as_of}


def count(
    store: Store,
    sources: list[ReadingSource],
    start: int,
    end: int,
    after: ReadingPosition | None = None,
    as_of: int | None = None,
) -> ReadingCount:
    """How many readings `page` would list in all, as of block `as_of` (None: the head now)."""
    _check(sources, start, end)
    as_of = head_height(store) if as_of is None else int(as_of)
    if not sources:
        return {"count": 0, "as_of": as_of}
    lo = start if after is None else max(start, int(after["ts"]))
    sql = """
        SELECT count(*) FROM readings r
        JOIN (SELECT unnest(?::VARCHAR[]) AS device, unnest(?::BIGINT[]) AS since) s ON r.device = s.device
        WHERE r.ts >= ? AND r.ts < ? AND r.height <= ? AND r.ts >= s.since"""
    args: list[Any] = [[s["device"] for s in sources], [s["since"] for s in sources], lo, end, as_of]
    if after is not None:
        sql += " AND (r.ts, r.device, r.seq) > (?, ?, ?)"
        args += [after["ts"], after["device"], after["seq"]]
    return {"count": int(store.one(sql, args)[0]), "as_of": as_of}
