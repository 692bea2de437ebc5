"""What billing and parking operations answer (ledger/service/operations/billing.py and parking.py,
and the billing part of ledger/service/api.py).

The documents billing reads out of the store are declared beside their queries
(ledger/store/billing_queries.py, ledger/store/accounts.py) and the bill beside the
code that assembles it (ledger/billing/bills.py). Keys that are Python keywords
("class", "from") need the functional TypedDict form; `document(...)` then refuses
unknown keys on them as `@document` does on the others.
"""

from __future__ import annotations

from typing import Literal, NotRequired

from typing_extensions import TypedDict

from ledger.documents import document

# ---------------------------------------------------------------- accounts and tariffs


# An account opened (`add_account`); "class" is the customer class (residential, non-residential).
AccountOpened = TypedDict("AccountOpened", {"account": str, "name": str, "class": str, "block": str})
document(AccountOpened)


@document
class AccountAssigned(TypedDict):
    """A meter handed to an account (`assign_account`); `account` None: to no account."""

    device: str
    account: str | None
    operator: str
    block: str


@document
class TariffsLoaded(TypedDict):
    """`load_tariffs`: the version in force; `changed` False when the text was the one already in force."""

    version: int
    sha256: str
    changed: bool


@document
class TariffsInForce(TypedDict):
    """`tariffs`: the tariff version in force and its TOML source."""

    version: int
    source: str


@document
class ReplacementRecorded(TypedDict):
    device: str
    ts: int
    block: str


# ---------------------------------------------------------------- corrections


@document
class Adjustment(TypedDict):
    """`adjust`: sealed at once, or (above the approval limit, which `limit` then names) pending."""

    id: str
    account: str
    amount: str
    status: Literal["pending", "sealed"]
    limit: NotRequired[str]  # only when pending
    created_at: int


@document
class AdjustmentLimitSet(TypedDict):
    limit: str
    operator: str
    block: str


@document
class AdjustmentDecided(TypedDict):
    """`decide_adjustment`: a second operator's decision on a requested adjustment."""

    id: str
    status: Literal["approved", "rejected"]
    operator: str
    requested_by: str
    account: str
    amount: str
    block: str


# ---------------------------------------------------------------- roll-up and the month's close


@document
class RolledUp(TypedDict):
    """`roll_up`: the height summarised up to now, and what this run summarised."""

    height: int
    chunks: int
    readings: int


@document
class BillsIssued(TypedDict):
    """`issue_bills`: bills sealed now, and those issued before (left as they were)."""

    month: str
    issued: int
    already_issued: int


@document
class MonthClosed(BillsIssued):
    """`close_month`: the bills issued, out of how many accounts, in how many seconds."""

    accounts: int
    seconds: float


# ---------------------------------------------------------------- parking

# "class" is the zone class (1, 2 or 3); "from" the time (epoch ms) it is in force from.
ZoneSet = TypedDict("ZoneSet", {"space": str, "class": int, "from": int, "operator": str, "block": str})
document(ZoneSet)

# A space leased to an account from a time (epoch ms); `account` None ends a lease.
Leased = TypedDict("Leased", {"space": str, "account": str | None, "from": int, "operator": str, "block": str})
document(Leased)


@document
class CheckedIn(TypedDict):
    space: str
    account: str
    at: int
    operator: str
    block: str
