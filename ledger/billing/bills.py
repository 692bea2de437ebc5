"""A month's bill for one account, assembled from the ledger, the tariffs and billing rules.

Every line names the readings (device, seq) it rests on, so each can be proven
with a receipt; flags say where the data was incomplete instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Literal, NotRequired, cast
from zoneinfo import ZoneInfo

from pydantic import Field
from typing_extensions import TypedDict

from ledger.billing import device_days
from ledger.billing import rules as billing
from ledger.billing.rules import FeeLine, Point, Replacement, TierLine
from ledger.billing.tariffs import TariffBook
from ledger.documents import document
from ledger.errors import NotFound
from ledger.store import billing_queries as q
from ledger.store.billing_queries import Account, AdjustmentRow, Meter
from ledger.store.store import Store

MARGIN_MS = 45 * 24 * 3600 * 1000  # parking reports this far before the month may start a stay in it


# ---------------------------------------------------------------- the bill document
# A reading a line rests on is [device, seq]: a receipt (`cityledger receipt`) proves each.


@document
class Stay(TypedDict):
    """A parking stay as a bill prices it: local ISO times, `end` None (and no `minutes`, no rows)
    while the car is still parked."""

    start: str
    end: str | None
    zone_class: int
    readings: list[list[str | int]]
    flags: list[str]
    rows: list[FeeLine]
    amount: str
    minutes: NotRequired[int]


@document
class UnpaidStay(Stay):
    """A stay nobody pays for (no lessee, no check-in), with its space (`unpaid_stays`)."""

    space: str


@document
class UtilityLine(TypedDict):
    """A meter's line: consumption in the tariff's unit, split on the tiers."""

    type: Literal["utility"]
    device: str
    kind: str
    unit: str
    consumption: str
    used_this_year_before: str  # in the tariff's unit, before this month (calendar-year tiers)
    tiers: list[TierLine]
    amount: str
    tariff_from: str  # ISO date the tariff is in force from
    readings: list[list[str | int]]
    flags: list[str]


@document
class ParkingLine(TypedDict):
    """A parking space's line: the stays the account pays for."""

    type: Literal["parking"]
    device: str
    sessions: list[Stay]
    amount: str


@document
class AdjustmentLine(TypedDict):
    """A sealed adjustment (refund, credit, re-bill) the bill carries, sealed in `block`."""

    type: Literal["adjustment"]
    id: str
    reason: str
    operator: str
    amount: str
    created_at: int
    block: int


BillLine = Annotated[UtilityLine | ParkingLine | AdjustmentLine, Field(discriminator="type")]


@document
class Bill(TypedDict):
    """A month's bill for one account, amounts in yuan as decimal strings (`currency` CNY).

    A draft is computed now; an issued bill is the draft as it was sealed, with the hash of
    its body, the block that holds the hash and when it was issued.
    """

    account: str
    name: str
    customer_class: str
    month: str  # YYYY-MM
    currency: str
    timezone: str
    tariff_version: int
    lines: list[BillLine]
    total: str
    status: Literal["draft", "issued"]
    hash: NotRequired[str]  # issued bills only: sha256 of the body, hex
    height: NotRequired[int]
    issued_at: NotRequired[int]


# ---------------------------------------------------------------- making bills


class BillError(NotFound):
    """A bill that cannot be made (unknown account, no tariff); the message is for the operator."""


def make_bill(
    store: Store,
    book: TariffBook,
    tariff_version: int,
    account_id: str,
    month: str,
    clean: dict[str, list[Point]] | None = None,
) -> Bill:
    """The bill as it stands: issued bills come back as issued, others are computed now.

    `clean` maps meters already known to have no drop, gap or replacement to their
    boundary neighbours (see `clean_meters`); all others are read in full.
    """
    issued = q.issued_bill(store, account_id, month)
    if issued is not None:
        return cast(Bill, issued)  # a draft made here, as `issue_bills` stored it (the store knows no Bill)
    acct = q.account(store, account_id)
    if acct is None:
        raise BillError(f"unknown account {account_id}")
    tz = ZoneInfo(book.timezone)
    start, end = billing.month_bounds(month, tz)
    return _assemble(
        store,
        book,
        tariff_version,
        acct,
        month,
        q.meters(store, account_id),
        q.spaces_for(store, account_id, start, end),
        q.adjustments(store, account_id, start, end),
        clean,
    )


def close_bills(
    store: Store, book: TariffBook, tariff_version: int, month: str, progress: Callable[[int, int], None] | None = None
) -> tuple[list[Bill], int]:
    """Drafts of every account's bill not yet issued for `month`, and how many were issued.

    The same assembly as `make_bill`, fed from a handful of bulk queries instead
    of several per account, so a city's close takes seconds, not hours.
    """
    tz = ZoneInfo(book.timezone)
    start, end = billing.month_bounds(month, tz)
    issued = q.issued_accounts(store, month)
    accounts = [a for a in q.accounts(store) if a["account"] not in issued]
    if not accounts:
        return [], len(issued)
    clean = clean_meters(store, month, tz)
    meters = q.meters_by_account(store)
    parking = q.accounts_with_parking(store, end)
    adjustments = q.adjustments_by_account(store, start, end)
    drafts = []
    for n, acct in enumerate(accounts, 1):
        account_id = acct["account"]
        spaces = q.spaces_for(store, account_id, start, end) if account_id in parking else []
        drafts.append(
            _assemble(
                store,
                book,
                tariff_version,
                acct,
                month,
                meters.get(account_id, []),
                spaces,
                adjustments.get(account_id, []),
                clean,
            )
        )
        if progress and n % 1000 == 0:
            progress(n, len(accounts))
    return drafts, len(issued)


def _assemble(
    store: Store,
    book: TariffBook,
    tariff_version: int,
    acct: Account,
    month: str,
    meters: list[Meter],
    spaces: list[str],
    adjustments: list[AdjustmentRow],
    clean: dict[str, list[Point]] | None,
) -> Bill:
    tz = ZoneInfo(book.timezone)
    start, end = billing.month_bounds(month, tz)
    account_id = acct["account"]
    lines: list[BillLine] = []
    for meter in meters:
        pts = (clean or {}).get(meter["device"])
        lines.append(_utility_line(store, book, acct["customer_class"], meter, month, tz, pts))
    for space in spaces:
        line = _parking_line(store, book, account_id, space, start, end, tz)
        if line["sessions"]:
            lines.append(line)
    for adj in adjustments:
        lines.append(
            {
                "type": "adjustment",
                "id": adj["id"],
                "reason": adj["reason"],
                "operator": adj["operator"],
                "amount": adj["amount"],
                "created_at": adj["created_at"],
                "block": adj["height"],
            }
        )
    total = sum((Decimal(line["amount"]) for line in lines), Decimal("0.00"))
    return {
        "account": account_id,
        "name": acct["name"],
        "customer_class": acct["customer_class"],
        "month": month,
        "currency": "CNY",
        "timezone": book.timezone,
        "tariff_version": tariff_version,
        "lines": lines,
        "total": str(total.quantize(billing.FEN)),
        "status": "draft",
    }


def _utility_line(
    store: Store,
    book: TariffBook,
    customer_class: str,
    meter: Meter,
    month: str,
    tz: ZoneInfo,
    pts: list[Point] | None = None,
) -> UtilityLine:
    """One meter's line. `pts` are the boundary neighbours when the caller knows the
    stretch is clean (month-end close); otherwise every reading is read and checked."""
    device, kind = meter["device"], meter["kind"]
    start, end = billing.month_bounds(month, tz)
    year0 = billing.year_start(month, tz)
    tariff = book.for_utility(kind, customer_class, billing.local_date(start, tz))
    checks = pts is None
    repl = [] if pts is not None else [Replacement(*r) for r in q.replacements(store, device)]
    checked: frozenset[int] = frozenset()
    if pts is None:
        pts, checked = device_days.history(store, device, year0, end, device_days.meter_quiet)
    used = billing.consumption(pts, start, end, repl, checks=checks, checked=checked)
    per_unit = Fraction(tariff.base_per_unit)
    before = Fraction(0)
    if tariff.basis == "calendar_year" and start > year0:
        before = billing.consumption(pts, year0, start, repl, checks=checks, checked=checked).amount / per_unit
    rows = billing.split_tiers(tariff, before, used.amount / per_unit)
    amount = sum((r.amount for r in rows), Decimal("0.00"))
    return {
        "type": "utility",
        "device": device,
        "kind": kind,
        "unit": tariff.unit,
        "consumption": billing.show(used.amount / per_unit),
        "used_this_year_before": billing.show(before),
        "tiers": [r.as_dict(tariff.unit) for r in rows],
        "amount": str(amount),
        "tariff_from": str(tariff.effective_from),
        "readings": [[device, s] for s in used.rests_on],
        "flags": used.flags,
    }


def _parking_line(
    store: Store, book: TariffBook, account_id: str, space: str, start: int, end: int, tz: ZoneInfo
) -> ParkingLine:
    stays = []
    for stay in _sessions(store, space, start, end):
        stay_end = stay.end if stay.end is not None else None
        if stay.start >= end or (stay_end is not None and stay_end <= start) or stay.start < start:
            continue  # a stay belongs to the month it starts in
        if _payer(store, space, stay.start, stay_end or end) != account_id:
            continue
        stays.append(_stay(store, book, space, stay, tz))
    amount = sum((Decimal(s["amount"]) for s in stays), Decimal("0.00"))
    return {"type": "parking", "device": space, "sessions": stays, "amount": str(amount)}


def space_stays(store: Store, book: TariffBook, space: str, month: str) -> dict[str, ParkingLine]:
    """A space's stays that start in `month`, priced as bills price them, by who pays each (the
    account's id, or "" for stays nobody pays): an account's entry is its bill's line for the space."""
    tz = ZoneInfo(book.timezone)
    start, end = billing.month_bounds(month, tz)
    by_payer: dict[str, list[Stay]] = {}
    for stay in _sessions(store, space, start, end):
        if start <= stay.start < end:  # a stay belongs to the month it starts in
            payer = _payer(store, space, stay.start, stay.end or end) or ""
            by_payer.setdefault(payer, []).append(_stay(store, book, space, stay, tz))
    return {
        payer: {
            "type": "parking",
            "device": space,
            "sessions": stays,
            "amount": str(sum((Decimal(s["amount"]) for s in stays), Decimal("0.00"))),
        }
        for payer, stays in sorted(by_payer.items())
    }


def _sessions(store: Store, space: str, start: int, end: int) -> list[billing.Session]:
    events, checked = device_days.history(store, space, start - MARGIN_MS, end, device_days.space_quiet)
    return billing.sessions(events, checked=checked)


def _payer(store: Store, space: str, start: int, end: int) -> str | None:
    """Who pays a stay: whoever checked in to the space during it, else the lessee."""
    ins = q.checkins(store, space, start, end)
    return ins[0][1] if ins else q.lessee(store, space, start)


def _stay(store: Store, book: TariffBook, space: str, stay: billing.Session, tz: ZoneInfo) -> Stay:
    tariff = book.for_parking(billing.local_date(stay.start, tz))
    district = q.space_district(store, space) or ""
    zone = q.zone_class(store, space, stay.start, tariff.district_zone_class.get(district, tariff.default_zone_class))
    out: Stay = {
        "start": billing._iso(stay.start, tz),
        "end": None,
        "zone_class": zone,
        "readings": [[space, s] for s in stay.rests_on],
        "flags": stay.flags,
        "rows": [],
        "amount": "0.00",
    }
    if stay.end is None:
        out["flags"] = [*stay.flags, "still parked: charged when the stay ends"]
        return out
    rows = billing.parking_fee(stay.start, stay.end, tariff, zone, tz)
    out["end"] = billing._iso(stay.end, tz)
    out["minutes"] = (stay.end - stay.start) // 60000
    out["rows"] = [r.as_dict() for r in rows]
    out["amount"] = str(sum((r.amount for r in rows), Decimal("0.00")))
    return out


def unpaid_stays(store: Store, book: TariffBook, month: str) -> list[UnpaidStay]:
    """Stays in the month with nobody to pay: no lessee and no check-in."""
    tz = ZoneInfo(book.timezone)
    start, end = billing.month_bounds(month, tz)
    out: list[UnpaidStay] = []
    for space in q.parking_spaces(store):
        for stay in _sessions(store, space, start, end):
            if start <= stay.start < end and _payer(store, space, stay.start, stay.end or end) is None:
                out.append({"space": space, **_stay(store, book, space, stay, tz)})
    return out


def clean_meters(store: Store, month: str, tz: ZoneInfo) -> dict[str, list[Point]]:
    """Meters whose readings from the year's start to the month's end need no checking,
    with just the readings either side of each boundary: two passes over the table
    instead of a query per meter. A meter with a drop, a seq gap, a long silence or
    a recorded replacement is left out, and billed from all its readings instead."""
    start, end = billing.month_bounds(month, tz)
    year0 = billing.year_start(month, tz)
    neighbours = q.boundary_neighbours(store, (year0, start, end), billing.GAP_MS)
    suspect = q.meters_needing_checks(store, year0, end, billing.GAP_MS)
    out: dict[str, list[Point]] = {}
    for device, pts in neighbours.items():
        if device not in suspect:
            out[device] = sorted({Point(*p) for p in pts}, key=lambda p: (p.ts, p.seq))
    return out
