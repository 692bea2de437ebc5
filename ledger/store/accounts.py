"""What billing writes: accounts, tariff versions, parking arrangements, meter replacements,
adjustments and their approvals, and issued bills.

Each write here runs inside the transaction that seals the entry standing for it
(`LedgerWriter.seal`), so the row and its entry are on disk together or not at all.
The reads billing needs for drafting bills are in the store's billing queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pyarrow as pa
from typing_extensions import TypedDict

from ledger.documents import document
from ledger.store.store import Store


def add_account(store: Store, account: str, name: str, customer_class: str, at: int) -> None:
    store.con.execute("INSERT INTO accounts VALUES (?, ?, ?, ?)", [account, name, customer_class, at])


def add_tariffs(store: Store, version: int, at: int, source: str, sha256: str) -> None:
    store.con.execute("INSERT INTO tariff_versions VALUES (?, ?, ?, ?)", [version, at, source, sha256])


def add_zone(store: Store, space: str, zone_class: int, from_ts: int) -> None:
    store.con.execute("INSERT INTO parking_zones VALUES (?, ?, ?)", [space, zone_class, from_ts])


def add_lease(store: Store, space: str, account: str | None, from_ts: int) -> None:
    store.con.execute("INSERT INTO parking_leases VALUES (?, ?, ?)", [space, account, from_ts])


def add_checkin(store: Store, space: str, account: str, at: int) -> None:
    store.con.execute("INSERT INTO parking_checkins VALUES (?, ?, ?)", [space, account, at])


def add_replacement(
    store: Store, device: str, ts: int, old_final: int, new_initial: int, operator: str, at: int
) -> None:
    store.con.execute(
        "INSERT INTO meter_replacements VALUES (?, ?, ?, ?, ?, ?)", [device, ts, old_final, new_initial, operator, at]
    )


def add_adjustment(
    store: Store, adj_id: str, account: str, amount: str, reason: str, operator: str, at: int, height: int
) -> None:
    store.con.execute(
        "INSERT INTO adjustments VALUES (?, ?, ?, ?, ?, ?, ?)", [adj_id, account, amount, reason, operator, at, height]
    )


def request_adjustment(
    store: Store, adj_id: str, account: str, amount: str, reason: str, operator: str, at: int, height: int
) -> None:
    store.con.execute(
        "INSERT INTO adjustment_requests VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL)",
        [adj_id, account, amount, reason, operator, at, height],
    )


def adjustment_request(store: Store, adj_id: str) -> tuple[str, str, str, str, str] | None:
    """(account, amount, reason, requester, status) of a requested adjustment."""
    row = store.con.execute(
        "SELECT account, amount, reason, operator, status FROM adjustment_requests WHERE id = ?", [adj_id]
    ).fetchone()
    return (row[0], row[1], row[2], row[3], row[4]) if row else None


def decide_adjustment_request(store: Store, adj_id: str, status: str, operator: str, at: int) -> None:
    store.con.execute(
        "UPDATE adjustment_requests SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?",
        [status, operator, at, adj_id],
    )


@document
class AdjustmentRequest(TypedDict):
    """An adjustment above the approval limit, requested by `operator` at `at` (epoch ms);
    `status` pending, approved or rejected, `decided_by`/`decided_at` None while pending."""

    id: str
    account: str
    amount: str  # yuan, a decimal string
    reason: str
    operator: str
    at: int
    status: Literal["pending", "approved", "rejected"]
    decided_by: str | None
    decided_at: int | None


def adjustment_requests(store: Store, status: str | None) -> list[AdjustmentRequest]:
    """Requested adjustments (all of them when `status` is None), oldest first."""
    rows = store.con.execute(
        "SELECT id, account, amount, reason, operator, requested_at, status, decided_by, decided_at"
        " FROM adjustment_requests WHERE ? IS NULL OR status = ? ORDER BY requested_at",
        [status, status],
    ).fetchall()
    return [
        {
            "id": i,
            "account": a,
            "amount": m,
            "reason": r,
            "operator": o,
            "at": at,
            "status": st,
            "decided_by": by,
            "decided_at": when,
        }
        for i, a, m, r, o, at, st, by, when in rows
    ]


def billed_accounts(store: Store, month: str) -> set[str]:
    """Accounts whose bill for `month` is issued."""
    return {r[0] for r in store.con.execute("SELECT account FROM bills WHERE month = ?", [month]).fetchall()}


def add_bills(store: Store, rows: Sequence[tuple[str, str, int, str, str, str]], height: int) -> None:
    """Issued bills, each (account, month, issued_at, total, body, hash), sealed in block `height`."""
    cols = list(zip(*rows, strict=True))
    store.insert_table(
        "bills",
        pa.table(
            {
                "account": cols[0],
                "month": cols[1],
                "issued_at": pa.array(cols[2], pa.int64()),
                "total": cols[3],
                "body": cols[4],
                "hash": cols[5],
                "height": pa.array([height] * len(rows), pa.int64()),
            }
        ),
    )
