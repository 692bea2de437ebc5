"""Payments in the database: one row per `payment_recorded` entry, never updated or deleted.

The row is written in the transaction that seals its entry (ledger/service/operations/payments.py),
and `verify --deep` compares the two (ledger/chain/registry_audit.py). Amounts stay decimal
strings, as everywhere in billing: sums are made with Decimal by the caller, not in SQL floats.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict

from ledger.documents import document
from ledger.store.store import Store


@document
class PaymentRow(TypedDict):
    """A payment a provider recorded against an account's issued bill for `month`.

    `amount` is yuan, a decimal string with two places; `paid_at` is when the provider says the
    money was paid, `recorded_at` when the ledger sealed it (in block `height`)."""

    id: str
    account: str
    month: str
    amount: str
    reference: str
    recorded_by: str
    paid_at: int
    recorded_at: int
    height: int


_COLUMNS = "id, account, month, amount, reference, recorded_by, paid_at, recorded_at, height"


def _row(r: tuple[Any, ...]) -> PaymentRow:
    return {
        "id": r[0],
        "account": r[1],
        "month": r[2],
        "amount": r[3],
        "reference": r[4],
        "recorded_by": r[5],
        "paid_at": r[6],
        "recorded_at": r[7],
        "height": r[8],
    }


def add_payment(store: Store, p: PaymentRow) -> None:
    store.con.execute(
        f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            p["id"],
            p["account"],
            p["month"],
            p["amount"],
            p["reference"],
            p["recorded_by"],
            p["paid_at"],
            p["recorded_at"],
            p["height"],
        ],
    )


def payments(store: Store, account: str, month: str | None = None) -> list[PaymentRow]:
    """An account's payments (of one month, or all), oldest recorded first."""
    sql = f"SELECT {_COLUMNS} FROM payments WHERE account = ?"
    args: list[object] = [account]
    if month is not None:
        sql += " AND month = ?"
        args.append(month)
    return [_row(r) for r in store.con.execute(sql + " ORDER BY recorded_at, height, id", args).fetchall()]


def with_reference(store: Store, account: str, reference: str) -> PaymentRow | None:
    """The payment already recorded for this account under this provider reference, if any."""
    row = store.con.execute(
        f"SELECT {_COLUMNS} FROM payments WHERE account = ? AND reference = ? LIMIT 1", [account, reference]
    ).fetchone()
    return _row(row) if row else None
