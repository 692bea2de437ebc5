"""What payments and bill balances answer (ledger/service/operations/payments.py).

A payment's row is declared beside its query (ledger/store/payments.py `PaymentRow`); the
balance of a bill is made here, from the bill's issued total and the payments against it.
"""

from __future__ import annotations

from typing import Literal

from typing_extensions import TypedDict

from ledger.billing.bills import Bill
from ledger.documents import document
from ledger.store.payments import PaymentRow

PaymentStatus = Literal["unpaid", "partly paid", "paid", "overpaid"]
"""Where an issued bill stands: nothing paid, some, all of it, or more than it (the balance negative)."""


@document
class Balance(TypedDict):
    """An issued bill's balance: its total less what was paid against it, all yuan as decimal strings."""

    month: str
    total: str
    paid: str
    balance: str  # total - paid; negative when overpaid
    status: PaymentStatus
    payments: int  # how many payments were recorded against it
    hash: str  # the issued bill's body, sealed in block `height`
    height: int
    issued_at: int


@document
class PaymentRecorded(PaymentRow):
    """`record_payment`: the payment as sealed (in `block`), and its bill's balance just after it."""

    block: str
    bill: Balance


@document
class Statement(TypedDict):
    """A month's bill (issued, or a draft as it stands now) with the payments against it.

    `status` is the balance's for an issued bill, `draft` for a bill not issued yet (nothing
    can be paid against a draft: `balance` is then its total as it stands)."""

    bill: Bill
    payments: list[PaymentRow]
    total: str
    paid: str
    balance: str
    status: Literal["draft", "unpaid", "partly paid", "paid", "overpaid"]
