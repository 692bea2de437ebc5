"""Bills and payments: an account's bills with their balances, a month's bill with its lines and
payments, and payments recorded by providers (ledger/service/operations/payments.py).

An account's data is its district's: a bill is read under `bills`, a payment under `payments`
(written with `payments:write`), of every district the account's devices are in (the view
`account_districts`). An account with no device is in no district, so only a city-wide
scope reaches it; an unknown account is 404 to such a scope and 403 to any other, so a
district's token cannot probe which accounts exist elsewhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from ledger.billing.rules import FeeLine, TierLine
from ledger.chain.protocol import DEVICE_PATTERN
from ledger.clock import now_ms
from ledger.http.deps import CtxDep, idempotent
from ledger.http.problems import PROBLEM_RESPONSE
from ledger.http.routes.shared import account_grants, served
from ledger.http.wire import parse_time, stamped

router = APIRouter(tags=["bills"])

MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
AMOUNT_PATTERN = r"^([1-9][0-9]{0,11}(\.[0-9]{1,2})?|0\.([1-9][0-9]?|0[1-9]))$"  # above zero, to the fen
REFERENCE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$"
TIME_PATTERN = (
    r"^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?)$"
)
AccountId = Annotated[str, Path(pattern=DEVICE_PATTERN, description="An account id", examples=["hh-0001"])]
Month = Annotated[str, Path(pattern=MONTH_PATTERN, description="YYYY-MM", examples=["2026-01"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {**PROBLEM_RESPONSE, "description": "No such account (or no tariff in force that month)"}
}
PaymentStatus = Literal["unpaid", "partly paid", "paid", "overpaid"]


# ---------------------------------------------------------------- what the routes answer


class PaymentOut(BaseModel):
    id: str
    account: str
    month: str
    amount: str = Field(description="yuan, a decimal string", examples=["128.50"])
    reference: str = Field(description="the provider's transaction id")
    recorded_by: str = Field(description="the agency or operator that recorded it")
    paid_at: str
    paid_at_ms: int
    recorded_at: str
    recorded_at_ms: int
    height: int = Field(description="the block that sealed it")


class BalanceOut(BaseModel):
    """An issued bill's total, what was paid against it and what is left (negative: overpaid)."""

    month: str
    total: str
    paid: str
    balance: str
    status: PaymentStatus
    payments: int
    hash: str
    height: int
    issued_at: str
    issued_at_ms: int


class PaymentRecordedOut(PaymentOut):
    block: str
    bill: BalanceOut


class StayOut(BaseModel):
    start: str
    end: str | None
    zone_class: int
    readings: list[list[str | int]]
    flags: list[str]
    rows: list[FeeLine]  # billing's own rows: no times in them
    amount: str
    minutes: int | None = Field(None, description="absent while the car is still parked")


class UtilityLineOut(BaseModel):
    type: Literal["utility"]
    device: str
    kind: str
    unit: str
    consumption: str
    used_this_year_before: str
    tiers: list[TierLine]
    amount: str
    tariff_from: str
    readings: list[list[str | int]] = Field(description="[device, seq] of each reading the line rests on")
    flags: list[str]


class ParkingLineOut(BaseModel):
    type: Literal["parking"]
    device: str
    sessions: list[StayOut]
    amount: str


class AdjustmentLineOut(BaseModel):
    type: Literal["adjustment"]
    id: str
    reason: str
    operator: str
    amount: str
    created_at: str
    created_at_ms: int
    block: int


BillLineOut = Annotated[UtilityLineOut | ParkingLineOut | AdjustmentLineOut, Field(discriminator="type")]


class BillOut(BaseModel):
    """A month's bill: issued (with the hash sealed in block `height`), or a draft as it stands now."""

    account: str
    name: str
    customer_class: str
    month: str
    currency: str
    timezone: str
    tariff_version: int
    lines: list[BillLineOut]
    total: str
    status: Literal["draft", "issued"]
    hash: str | None = Field(None, description="issued bills only")
    height: int | None = Field(None, description="issued bills only")
    issued_at: str | None = Field(None, description="issued bills only")
    issued_at_ms: int | None = Field(None, description="issued bills only")


class StatementOut(BaseModel):
    """A bill with the payments against it; `status` is `draft` until the bill is issued."""

    bill: BillOut
    payments: list[PaymentOut]
    total: str
    paid: str
    balance: str
    status: Literal["draft", "unpaid", "partly paid", "paid", "overpaid"]


class PaymentIn(BaseModel):
    """A payment received by a provider, against the account's issued bill for `month`."""

    model_config = ConfigDict(extra="forbid")

    account: str = Field(pattern=DEVICE_PATTERN, examples=["hh-0001"])
    month: str = Field(pattern=MONTH_PATTERN, examples=["2026-01"])
    amount: str = Field(pattern=AMOUNT_PATTERN, description="yuan, positive, at most 2 places", examples=["128.50"])
    reference: str = Field(
        pattern=REFERENCE_PATTERN, description="the provider's transaction id: once per account", examples=["tx-81723"]
    )
    paid_at: str | None = Field(
        None,
        pattern=TIME_PATTERN,
        description="when it was paid: RFC 3339 or epoch ms (default: now)",
        examples=["2026-02-03T10:00:00Z"],
    )


# ---------------------------------------------------------------- routes


@router.get("/accounts/{account}/bills", response_model=list[BalanceOut], responses=NOT_FOUND)
def bills(c: CtxDep, account: AccountId) -> Any:
    """The account's issued bills, newest first, each with its total, what was paid and the balance."""
    grants = account_grants(c, "bills", account)
    rows = c.ledger.balances(account)
    served(c, "bills", grants, len(rows))
    return stamped(rows)


@router.get(
    "/accounts/{account}/bills/{month}",
    response_model=StatementOut,
    response_model_exclude_unset=True,
    responses=NOT_FOUND,
)
def bill(c: CtxDep, account: AccountId, month: Month) -> Any:
    """The month's bill with its lines (each naming the readings it rests on), issued or a draft as it
    stands now, with the payments against it and its balance."""
    grants = account_grants(c, "bills", account)
    found = c.ledger.statement(account, month)
    served(c, "bills", grants, 1)
    return stamped(found)


@router.get("/accounts/{account}/payments", response_model=list[PaymentOut], responses=NOT_FOUND)
def payments(
    c: CtxDep,
    account: AccountId,
    month: Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM: that month's only")] = None,
) -> Any:
    """The payments recorded against the account's bills, oldest first."""
    grants = account_grants(c, "payments", account)
    rows = c.ledger.payments(account, month)
    served(c, "payments", grants, len(rows))
    return stamped(rows)


@router.post(
    "/payments",
    response_model=PaymentRecordedOut,
    status_code=201,
    responses={
        **NOT_FOUND,
        409: {
            **PROBLEM_RESPONSE,
            "description": "The account has a payment with this reference, or the Idempotency-Key was reused",
        },
    },
)
def record_payment(c: CtxDep, body: PaymentIn) -> Any:
    """Record a payment against an issued bill (a ledger entry, under the caller's name); answers the
    payment and the bill's balance after it. Send an `Idempotency-Key` to retry safely."""
    account_grants(c, "payments", body.account, write=True)
    paid_at = parse_time(body.paid_at, "paid_at") if body.paid_at is not None else now_ms()
    return idempotent(
        c,
        body,
        lambda: stamped(
            c.ledger.record_payment(body.account, body.month, body.amount, body.reference, paid_at, c.actor())
        ),
    )
