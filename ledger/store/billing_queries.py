"""The SQL billing needs: accounts, meters, parking arrangements, bills, adjustments.

Kept apart from store.py so that the chain's storage and the billing's read
side can change independently; both work on the same DuckDB connection.
Readings and replacements come back as plain tuples, in the field order of
billing's `Point` (ts, value, seq) and `Replacement` (ts, old_final, new_initial),
which billing builds from them (the store does not import billing).
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict

from ledger.documents import document
from ledger.store.store import Store


@document
class Account(TypedDict):
    """A billing account: `customer_class` residential or non-residential, `created_at` epoch ms."""

    account: str
    name: str
    customer_class: str
    created_at: int


@document
class AccountWithDevices(Account):
    """An account as `accounts` lists it: with how many devices (meters, spaces) it holds."""

    devices: int


@document
class Meter(TypedDict):
    """A utility meter an account holds (`kind` water, gas or electricity)."""

    device: str
    kind: str
    district: str


@document
class AdjustmentRow(TypedDict):
    """A sealed adjustment (refund, credit, re-bill) of an account, sealed in block `height`."""

    id: str
    amount: str  # yuan, a decimal string
    reason: str
    operator: str
    created_at: int
    height: int


@document
class IssuedMonth(TypedDict):
    """An issued bill as `issued_months` lists it: `hash` of its body, sealed in block `height`."""

    month: str
    total: str
    hash: str
    height: int
    issued_at: int


def account(store: Store, account_id: str) -> Account | None:
    row = store.con.execute(
        "SELECT account, name, customer_class, created_at FROM accounts WHERE account = ?", [account_id]
    ).fetchone()
    return {"account": row[0], "name": row[1], "customer_class": row[2], "created_at": row[3]} if row else None


def accounts(store: Store) -> list[AccountWithDevices]:
    rows = store.con.execute(
        "SELECT a.account, a.name, a.customer_class, a.created_at, count(d.device) FROM accounts a"
        " LEFT JOIN devices d ON d.account = a.account GROUP BY ALL ORDER BY a.account"
    ).fetchall()
    return [{"account": a, "name": n, "customer_class": c, "created_at": t, "devices": k} for a, n, c, t, k in rows]


def meters(store: Store, account_id: str) -> list[Meter]:
    rows = store.con.execute(
        "SELECT device, kind, district FROM devices WHERE account = ? AND kind <> 'parking' ORDER BY device",
        [account_id],
    ).fetchall()
    return [{"device": d, "kind": k, "district": di} for d, k, di in rows]


def replacements(store: Store, device: str) -> list[tuple[int, int, int]]:
    """(ts, old_final, new_initial) of a meter's recorded replacements, oldest first."""
    return store.con.execute(
        "SELECT ts, old_final, new_initial FROM meter_replacements WHERE device = ? ORDER BY ts", [device]
    ).fetchall()


def spaces_for(store: Store, account_id: str, start: int, end: int) -> list[str]:
    """Parking spaces this account leased or checked in to at some time in [start, end)."""
    rows = store.con.execute(
        "SELECT DISTINCT space FROM parking_leases WHERE account = ? AND from_ts < ?"
        " UNION SELECT DISTINCT space FROM parking_checkins WHERE account = ? AND checked_in_at < ?",
        [account_id, end, account_id, end],
    ).fetchall()
    return sorted(r[0] for r in rows)


def zone_class(store: Store, space: str, at: int, district_default: int) -> int:
    row = store.con.execute(
        "SELECT zone_class FROM parking_zones WHERE space = ? AND from_ts <= ? ORDER BY from_ts DESC LIMIT 1",
        [space, at],
    ).fetchone()
    return row[0] if row else district_default


def lessee(store: Store, space: str, at: int) -> str | None:
    row = store.con.execute(
        "SELECT account FROM parking_leases WHERE space = ? AND from_ts <= ? ORDER BY from_ts DESC LIMIT 1", [space, at]
    ).fetchone()
    return row[0] if row else None


def checkins(store: Store, space: str, start: int, end: int) -> list[tuple[int, str]]:
    return store.con.execute(
        "SELECT checked_in_at, account FROM parking_checkins WHERE space = ?"
        " AND checked_in_at BETWEEN ? AND ? ORDER BY checked_in_at",
        [space, start, end],
    ).fetchall()


def space_district(store: Store, space: str) -> str | None:
    row = store.con.execute("SELECT district FROM devices WHERE device = ?", [space]).fetchone()
    return row[0] if row else None


def parking_spaces(store: Store) -> list[str]:
    return [
        r[0] for r in store.con.execute("SELECT device FROM devices WHERE kind = 'parking' ORDER BY device").fetchall()
    ]


def adjustments(store: Store, account_id: str, start: int, end: int) -> list[AdjustmentRow]:
    rows = store.con.execute(
        "SELECT id, amount, reason, operator, created_at, height FROM adjustments"
        " WHERE account = ? AND created_at >= ? AND created_at < ? ORDER BY created_at",
        [account_id, start, end],
    ).fetchall()
    return [_adjustment(r) for r in rows]


def _adjustment(r: tuple[Any, ...]) -> AdjustmentRow:
    return {"id": r[0], "amount": r[1], "reason": r[2], "operator": r[3], "created_at": r[4], "height": r[5]}


def issued_bill(store: Store, account_id: str, month: str) -> dict[str, Any] | None:
    """The issued bill's body (a bill as billing drafted it, ledger/billing/bills.py `Bill`) with
    where it was sealed; the store does not know the bill's shape, billing does."""
    row = store.con.execute(
        "SELECT body, hash, height, issued_at FROM bills WHERE account = ? AND month = ?", [account_id, month]
    ).fetchone()
    if not row:
        return None
    import json

    return {**json.loads(row[0]), "status": "issued", "hash": row[1], "height": row[2], "issued_at": row[3]}


def issued_months(store: Store, account_id: str) -> list[IssuedMonth]:
    rows = store.con.execute(
        "SELECT month, total, hash, height, issued_at FROM bills WHERE account = ? ORDER BY month DESC", [account_id]
    ).fetchall()
    return [{"month": m, "total": t, "hash": x, "height": h, "issued_at": at} for m, t, x, h, at in rows]


def latest_tariffs(store: Store) -> tuple[int, str, str] | None:
    """(version, source text, sha256) of the tariffs in force, None before any were loaded."""
    row = store.con.execute(
        "SELECT version, source, sha256 FROM tariff_versions ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def boundary_neighbours(
    store: Store, boundaries: tuple[int, ...], within_ms: int
) -> dict[str, list[tuple[int, int, int]]]:
    """For every account meter: the last reading at or before, and the first after, each
    boundary, looking no further than `within_ms` away (a meter silent longer than that
    is checked in full anyway), so only narrow slices of the table are read. Readings
    as (ts, value, seq)."""
    values = ", ".join(f"({int(b)})" for b in boundaries)
    near = " OR ".join(f"ts BETWEEN {int(b) - within_ms} AND {int(b) + within_ms}" for b in boundaries)
    rows = store.con.execute(f"""
        WITH b(ts) AS (VALUES {values}),
        m AS (SELECT device FROM devices WHERE account IS NOT NULL AND kind <> 'parking'),
        probe AS (SELECT m.device, b.ts FROM m CROSS JOIN b),
        r AS (SELECT device, ts, value, seq FROM readings WHERE kind <> 'parking' AND ({near}))
        SELECT probe.device, p.ts, p.value, p.seq, n.ts, n.value, n.seq
        FROM probe
        ASOF LEFT JOIN r p ON probe.device = p.device AND probe.ts >= p.ts
        ASOF LEFT JOIN r n ON probe.device = n.device AND probe.ts < n.ts
        """).fetchall()
    out: dict[str, list[tuple[int, int, int]]] = {}
    for device, pt, pv, ps, nt, nv, ns in rows:
        pts = out.setdefault(device, [])
        if pt is not None:
            pts.append((pt, pv, ps))
        if nt is not None:
            pts.append((nt, nv, ns))
    return out


def meters_needing_checks(store: Store, start: int, end: int, gap_ms: int) -> set[str]:
    """Meters with a drop, a seq gap or a silence longer than `gap_ms` in [start - gap, end + gap],
    or a recorded replacement, or without a neighbour within `gap_ms` of either end."""
    rows = store.con.execute(
        """
        WITH w AS (
            SELECT device, ts, value, seq,
                   lag(ts) OVER (PARTITION BY device ORDER BY ts) AS pts,
                   lag(value) OVER (PARTITION BY device ORDER BY ts) AS pv,
                   lag(seq) OVER (PARTITION BY device ORDER BY ts) AS ps
            FROM readings WHERE kind <> 'parking' AND ts BETWEEN ? AND ?),
        span AS (SELECT device, min(ts) AS first, max(ts) AS last FROM w GROUP BY device)
        SELECT DISTINCT device FROM w
        WHERE pts IS NOT NULL AND (value < pv OR seq - 1 <> ps OR ts - pts > ?)
        UNION SELECT device FROM span WHERE first > ? OR last < ?
        UNION SELECT device FROM meter_replacements
        """,
        [start - gap_ms, end + gap_ms, gap_ms, start, end],
    ).fetchall()
    return {r[0] for r in rows}


def issued_accounts(store: Store, month: str) -> set[str]:
    return {r[0] for r in store.con.execute("SELECT account FROM bills WHERE month = ?", [month]).fetchall()}


def meters_by_account(store: Store) -> dict[str, list[Meter]]:
    out: dict[str, list[Meter]] = {}
    for device, kind, district, acct in store.con.execute(
        "SELECT device, kind, district, account FROM devices WHERE account IS NOT NULL AND kind <> 'parking'"
        " ORDER BY device"
    ).fetchall():
        out.setdefault(acct, []).append({"device": device, "kind": kind, "district": district})
    return out


def accounts_with_parking(store: Store, end: int) -> set[str]:
    rows = store.con.execute(
        "SELECT account FROM parking_leases WHERE account IS NOT NULL AND from_ts < ?"
        " UNION SELECT account FROM parking_checkins WHERE checked_in_at < ?",
        [end, end],
    ).fetchall()
    return {r[0] for r in rows}


def adjustments_by_account(store: Store, start: int, end: int) -> dict[str, list[AdjustmentRow]]:
    out: dict[str, list[AdjustmentRow]] = {}
    for r in store.con.execute(
        "SELECT account, id, amount, reason, operator, created_at, height FROM adjustments"
        " WHERE created_at >= ? AND created_at < ? ORDER BY created_at",
        [start, end],
    ).fetchall():
        out.setdefault(r[0], []).append(_adjustment(r[1:]))
    return out
