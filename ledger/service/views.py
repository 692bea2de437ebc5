"""The views `LedgerAPI.view(name, **params)` can call, by name: only the names in VIEWS (over the socket too).

Most are the store's read queries (ledger/store/views.py). The few here need the tariff
book or the billing code, which the store does not import: the tariff in force as plain
data, the parking views (a space's zone class defaults from the tariff), and a bill's
parking lines as billing computes them.
"""

from __future__ import annotations

from typing import TypeVar
from zoneinfo import ZoneInfo

from typing_extensions import TypedDict

from ledger.billing import rules as billing
from ledger.billing.bills import ParkingLine, _parking_line
from ledger.billing.tariffs import parse_tariffs
from ledger.clock import now_ms
from ledger.documents import document
from ledger.errors import NotFound
from ledger.store import billing_queries as q
from ledger.store import views as stored
from ledger.store.store import Store
from ledger.store.views import HOUR, SpacesTaken, View, ZoneOccupancy

VIEWS: dict[str, View] = dict(stored.VIEWS)
_View = TypeVar("_View", bound=View)


def view(fn: _View) -> _View:
    """Register a function as a view under its own name (the function keeps its type)."""
    VIEWS[fn.__name__] = fn
    return fn


# The tariff in force as plain data. A view, not an API result: declared beside the view that
# makes it, unknown keys refused (`@document`). "class" and "from" are
# Python keywords, hence the functional form.


@document
class TierPrice(TypedDict):
    up_to: str | None  # a decimal in the tariff's unit; None: no upper bound
    price: str  # a decimal


UtilityTariffSummary = TypedDict(
    "UtilityTariffSummary",
    {"kind": str, "class": str, "from": str, "basis": str, "unit": str, "base_per_unit": int, "tiers": list[TierPrice]},
)
document(UtilityTariffSummary)

ParkingTariffSummary = TypedDict(
    "ParkingTariffSummary", {"from": str, "default_zone_class": int, "district_zone_class": dict[str, int]}
)
document(ParkingTariffSummary)


@document
class TariffSummary(TypedDict):
    version: int
    timezone: str
    utility: list[UtilityTariffSummary]
    parking: list[ParkingTariffSummary]


@view
def tariff_summary(store: Store) -> TariffSummary:
    """The tariff version in force, as plain data: time zone, utility tiers per kind and class, parking zones."""
    latest = q.latest_tariffs(store)
    if latest is None:
        raise NotFound("no tariffs loaded: run `cityledger init`")
    book = parse_tariffs(latest[1])
    utility: list[UtilityTariffSummary] = [
        {
            "kind": t.kind,
            "class": t.customer_class,
            "from": str(t.effective_from),
            "basis": t.basis,
            "unit": t.unit,
            "base_per_unit": t.base_per_unit,
            "tiers": [{"up_to": None if x.up_to is None else str(x.up_to), "price": str(x.price)} for x in t.tiers],
        }
        for t in book.utility
    ]
    parking: list[ParkingTariffSummary] = [
        {
            "from": str(p.effective_from),
            "default_zone_class": p.default_zone_class,
            "district_zone_class": dict(p.district_zone_class),
        }
        for p in book.parking
    ]
    return {"version": latest[0], "timezone": book.timezone, "utility": utility, "parking": parking}


# ---------------------------------------------------------------- parking


def _space_zones(store: Store, districts: list[str] | None) -> list[tuple[str, str, int]]:
    """(space, district, zone class now) of the parking spaces in scope."""
    parking = tariff_summary(store)["parking"]
    default_class = parking[-1]["default_zone_class"] if parking else 2
    by_district = parking[-1]["district_zone_class"] if parking else {}
    return [
        (s, di, z if z is not None else by_district.get(di, default_class))
        for s, di, z in stored.space_zones(store, districts)
    ]


@view
def parking_occupancy(
    store: Store,
    start: int,
    end: int,
    districts: list[str] | None = None,
    bucket_ms: int = HOUR,
    hold_ms: int = 6 * HOUR,
) -> list[ZoneOccupancy]:
    """Share of the time spaces were reported taken, per zone class and time bucket in [start, end).
    A report holds until the next one (at most `hold_ms`), split across the buckets it spans."""
    return stored.spaces_occupancy(store, _space_zones(store, districts), start, end, bucket_ms, hold_ms)


@view
def parking_today(store: Store, districts: list[str] | None = None, now: int | None = None) -> SpacesTaken:
    """Spaces in scope and how many were last reported taken (from the past hour)."""
    now = int(now or now_ms())
    return stored.spaces_taken(store, _space_zones(store, districts), now)


@view
def parking_lines(store: Store, account: str, month: str) -> list[ParkingLine]:
    """The parking lines of an account's bill for a month as it stands, computed by the billing
    code itself (`ledger.bills`), without the utility lines."""
    latest = q.latest_tariffs(store)
    if latest is None:
        raise NotFound("no tariffs loaded: run `cityledger init`")
    book = parse_tariffs(latest[1])
    tz = ZoneInfo(book.timezone)
    start, end = billing.month_bounds(month, tz)
    lines = [
        _parking_line(store, book, account, space, start, end, tz) for space in q.spaces_for(store, account, start, end)
    ]
    return [line for line in lines if line["sessions"]]
