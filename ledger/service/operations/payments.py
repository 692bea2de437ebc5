"""Payments against issued bills, and the balance each bill is left with.

A payment provider (an agency with `payments` write, or an operator) records a payment as a
`payment_recorded` entry sealed with its `payments` row: money received is as tamper-evident as
the bill it pays (`verify --deep` compares the rows with the entries). Nothing is edited: a
refund or a correction would be a new entry of its own; none is recorded here yet, so a payment
is always a positive amount. A bill's balance is never stored: it is its issued total less the
payments, worked out when asked, so it cannot drift from the entries it rests on.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from decimal import Decimal

from ledger.billing import rules
from ledger.billing.bills import Bill
from ledger.chain.protocol import valid_device_id
from ledger.clock import now_ms
from ledger.errors import Conflict, NotFound, Refused
from ledger.service.results.payments import Balance, PaymentRecorded, PaymentStatus, Statement
from ledger.service.writer import LedgerWriter
from ledger.store import billing_queries
from ledger.store import payments as store_payments
from ledger.store.billing_queries import IssuedMonth
from ledger.store.payments import PaymentRow
from ledger.store.store import Store

MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])", re.ASCII)
REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}", re.ASCII)
"""A provider's reference for a payment: its transaction id, as printed on a receipt."""
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: a payment dated before is a slip of the pen
SKEW_MS = 5 * 60_000  # a provider's clock may run this far ahead of the ledger's


def parse_payment(amount: str) -> Decimal:
    """A payment's amount: yuan, positive, at most two places (billing's `parse_amount`, minus credits)."""
    try:
        value = rules.parse_amount(amount)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if value <= 0:
        raise Refused(f"a payment is a positive amount of yuan, not {amount!r}: a refund is not a payment")
    return value


def check_month(month: str) -> str:
    if not isinstance(month, str) or not MONTH.fullmatch(month):
        raise Refused(f"a month is YYYY-MM, not {month!r}")
    return month


def status_of(total: Decimal, paid: Decimal) -> PaymentStatus:
    """Nothing paid, some, all, or more than the total. A bill of zero is paid; a credit (a negative
    total, from adjustments) is overpaid: the city owes the account."""
    left = total - paid
    if left < 0:
        return "overpaid"
    if left == 0:
        return "paid"
    return "partly paid" if paid > 0 else "unpaid"


def _sum(amounts: Iterable[str]) -> Decimal:
    return sum((Decimal(a) for a in amounts), Decimal("0.00")).quantize(rules.FEN)


def balance(issued: IssuedMonth, paid: list[PaymentRow]) -> Balance:
    total = Decimal(issued["total"])
    sum_paid = _sum(p["amount"] for p in paid)
    return {
        "month": issued["month"],
        "total": issued["total"],
        "paid": str(sum_paid),
        "balance": str((total - sum_paid).quantize(rules.FEN)),
        "status": status_of(total, sum_paid),
        "payments": len(paid),
        "hash": issued["hash"],
        "height": issued["height"],
        "issued_at": issued["issued_at"],
    }


def _account(store: Store, account: str) -> None:
    if not isinstance(account, str) or billing_queries.account(store, account) is None:
        raise NotFound(f"unknown account {account!r}")


def record_payment(
    writer: LedgerWriter, account: str, month: str, amount: str, reference: str, paid_at: int, recorded_by: str
) -> PaymentRecorded:
    """Seal a payment against the account's issued bill for `month`, with its row.

    Refused: an unknown account (NotFound), a month with no issued bill, an amount that is not
    positive yuan to the fen, a reference the account's payments already hold (Conflict: a
    provider sending the same payment twice), a time that is not plausible."""
    value = parse_payment(amount)
    check_month(month)
    if not isinstance(reference, str) or not REFERENCE.fullmatch(reference):
        raise Refused("a payment's reference is 1-64 of A-Z a-z 0-9 . _ : / # - (the provider's transaction id)")
    if not isinstance(recorded_by, str) or not valid_device_id(recorded_by):
        raise Refused(f"a payment is recorded by an agency or an operator, not {recorded_by!r}")
    now = now_ms()
    if type(paid_at) is not int or not EARLIEST_MS <= paid_at <= now + SKEW_MS:
        raise Refused("paid_at is epoch ms, from 2000 up to now")
    with writer.lock:  # the checks and the insert as one step: the same reference cannot be recorded twice
        store = writer.store
        _account(store, account)
        issued = next((m for m in billing_queries.issued_months(store, account) if m["month"] == month), None)
        if issued is None:
            raise Refused(f"no bill for {month} was issued to {account}: a payment pays an issued bill")
        same = store_payments.with_reference(store, account, reference)
        if same is not None:
            raise Conflict(f"payment {same['id']} of {account} already has the reference {reference!r}")
        at = now_ms()
        row: PaymentRow = {
            "id": f"pay-{secrets.token_hex(6)}",
            "account": account,
            "month": month,
            "amount": str(value),
            "reference": reference,
            "recorded_by": recorded_by,
            "paid_at": paid_at,
            "recorded_at": at,
            "height": writer.height + 1,
        }
        sealed = writer.seal(
            {
                "entry": "payment_recorded",
                "id": row["id"],
                "account": account,
                "month": month,
                "amount": row["amount"],
                "reference": reference,
                "recorded_by": recorded_by,
                "paid_at": paid_at,
                "bill_hash": issued["hash"],  # which issued bill it pays, as sealed
                "at": at,
            },
            lambda s: store_payments.add_payment(s, row),
        )
        after = balance(issued, store_payments.payments(store, account, month))
    return {**row, "block": sealed.hash, "bill": after}


def payments(store: Store, account: str, month: str | None = None) -> list[PaymentRow]:
    _account(store, account)
    return store_payments.payments(store, account, None if month is None else check_month(month))


def balances(store: Store, account: str) -> list[Balance]:
    """Every issued bill of the account, newest month first, with what was paid against it."""
    _account(store, account)
    by_month: dict[str, list[PaymentRow]] = {}
    for p in store_payments.payments(store, account):
        by_month.setdefault(p["month"], []).append(p)
    return [balance(m, by_month.get(m["month"], [])) for m in billing_queries.issued_months(store, account)]


def statement(store: Store, bill: Bill) -> Statement:
    """A bill with the payments against it: for an issued one its balance, for a draft its total as it stands."""
    paid = store_payments.payments(store, bill["account"], bill["month"])
    if bill["status"] != "issued" or "hash" not in bill:
        return {
            "bill": bill,
            "payments": paid,
            "total": bill["total"],
            "paid": "0.00",
            "balance": bill["total"],
            "status": "draft",
        }
    issued: IssuedMonth = {
        "month": bill["month"],
        "total": bill["total"],
        "hash": bill["hash"],
        "height": bill.get("height", 0),
        "issued_at": bill.get("issued_at", 0),
    }
    b = balance(issued, paid)
    return {
        "bill": bill,
        "payments": paid,
        "total": b["total"],
        "paid": b["paid"],
        "balance": b["balance"],
        "status": b["status"],
    }
