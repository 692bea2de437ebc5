"""Usage per meter over calendar periods, from register values at the periods' boundaries. Pure.

A period's consumption is the register at its end minus the register at its
start, each interpolated linearly between the nearest readings either side (the
rule bills use, docs/billing.md), so a chart never needs a period's every reading.

Registers stay exact (integers and fractions) until a use has been subtracted: a
register may be anywhere up to 2^63-1 litres (PROTOCOL.md), and as a float one near
there is only known to 1,024 litres, so a day's 150 L showed as 0 or 1,024.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

GRANULARITIES = ("Daily", "Weekly", "Monthly")
DEFAULT_COUNT = {"Daily": 30, "Weekly": 13, "Monthly": 12}


@dataclass(frozen=True)
class Period:
    label: str
    start: int  # epoch ms, inclusive
    end: int  # epoch ms, exclusive; "now" for the period still running
    partial: bool = False


def _ms(d: dt.datetime) -> int:
    return int(d.timestamp() * 1000)


def _midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz)


def _add_months(day: dt.date, months: int) -> dt.date:
    m = day.year * 12 + day.month - 1 + months
    return dt.date(m // 12, m % 12 + 1, 1)


def periods(granularity: str, now: int, tz: ZoneInfo, count: int | None = None) -> list[Period]:
    """The last `count` days, weeks (Monday to Sunday) or months up to now, oldest first;
    the last one is still running and ends at `now`."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
    n = count or DEFAULT_COUNT[granularity]
    today = dt.datetime.fromtimestamp(now / 1000, tz).date()
    starts: list[dt.date]
    if granularity == "Daily":
        starts = [today - dt.timedelta(days=i) for i in range(n - 1, -1, -1)]
        ends = [s + dt.timedelta(days=1) for s in starts]
        labels = [s.strftime("%a %d %b") for s in starts]
    elif granularity == "Weekly":
        monday = today - dt.timedelta(days=today.weekday())
        starts = [monday - dt.timedelta(weeks=i) for i in range(n - 1, -1, -1)]
        ends = [s + dt.timedelta(weeks=1) for s in starts]
        labels = [f"Week of {s.strftime('%d %b %Y')}" for s in starts]
    else:
        first = today.replace(day=1)
        starts = [_add_months(first, -i) for i in range(n - 1, -1, -1)]
        ends = [_add_months(s, 1) for s in starts]
        labels = [s.strftime("%b %Y") for s in starts]
    out = []
    for label, s, e in zip(labels, starts, ends):
        start, end = _ms(_midnight(s, tz)), _ms(_midnight(e, tz))
        out.append(Period(label, start, min(end, now), partial=end > now))
    return out


def year_before(ms: int, tz: ZoneInfo) -> int:
    """The same local date and time one calendar year earlier (29 February becomes the 28th)."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz)
    try:
        earlier = t.replace(year=t.year - 1)
    except ValueError:
        earlier = t.replace(year=t.year - 1, day=28)
    return _ms(earlier)


def year_start(ms: int, tz: ZoneInfo) -> int:
    t = dt.datetime.fromtimestamp(ms / 1000, tz)
    return _ms(dt.datetime(t.year, 1, 1, tzinfo=tz))


def boundaries(ps: Sequence[Period], tz: ZoneInfo) -> list[int]:
    """Every instant whose register value the chart needs: each period's start and end, the same a
    year earlier, and the start of each year involved (for the year's cumulative use and its tier)."""
    out: set[int] = set()
    for p in ps:
        for b in (p.start, p.end):
            out.update((b, year_before(b, tz), year_start(b, tz), year_start(year_before(b, tz), tz)))
    return sorted(out)


def register_values(rows: Iterable[dict[str, Any]]) -> dict[int, Fraction | None]:
    """Register at each boundary from `registers_at` rows, exactly: interpolated between the readings
    either side; the last reading when none follows yet; unknown (None) when none precedes."""
    out: dict[int, Fraction | None] = {}
    for r in rows:
        pt, pv, nt, nv, at = r["prev_ts"], r["prev_value"], r["next_ts"], r["next_value"], r["at"]
        if pt is None:
            out[at] = None
        elif nt is None or nv < pv or nt == pt:
            out[at] = Fraction(pv)
        else:
            out[at] = pv + Fraction((nv - pv) * (at - pt), nt - pt)
    return out


def used(
    registers: dict[int, Fraction | None], start: int, end: int, first: dict[int, int] | None = None
) -> Fraction | None:
    """Base units counted in [start, end), or None when either end is unknown or the register fell.
    `first` gives, for a start with no reading before it, the first reading after it: the use is
    then counted from that reading, as a bill does for a meter that started within the period."""
    a, b = registers.get(start), registers.get(end)
    if a is None and first and start in first:
        a = Fraction(first[start])
    if a is None or b is None or b < a:
        return None
    return b - a


def in_units(base: Fraction | None, per_unit: int) -> float | None:
    """Base units (litres, watt-hours) in the tariff's unit, as the float a chart draws; None stays None."""
    return None if base is None else float(base / per_unit)


@dataclass(frozen=True)
class Tier:
    number: int
    up_to: float | None  # cumulative in the tariff's unit; None: no upper bound
    price: str


def tiers_of(tariff: dict[str, Any]) -> list[Tier]:
    return [
        Tier(i, None if t["up_to"] is None else float(Decimal(t["up_to"])), t["price"])
        for i, t in enumerate(tariff["tiers"], 1)
    ]


def first_reading_needed(
    ps: Sequence[Period], registers: dict[int, Fraction | None], now: int, tz: ZoneInfo, most: int = 3
) -> list[int]:
    """Starts (of the latest periods, and of this year) with no reading before them but a register at
    the end: where the use must be counted from the period's first reading."""
    starts = [p.start for p in ps if registers.get(p.start) is None and registers.get(p.end) is not None][-most:]
    ys = year_start(now, tz)
    if registers.get(ys) is None and registers.get(now) is not None:
        starts.append(ys)
    return sorted(set(starts))


def tier_at(cumulative: float | None, tiers: Sequence[Tier]) -> Tier | None:
    """The tier the year's cumulative use has reached."""
    if cumulative is None or not tiers:
        return None
    for t in tiers:
        if t.up_to is None or cumulative <= t.up_to:
            return t
    return tiers[-1]


def tier_label(t: Tier | None, tiers: Sequence[Tier], unit: str) -> str:
    if t is None:
        return "tier unknown (no reading at the year's start)"
    if len(tiers) == 1:
        return f"Flat rate (¥{t.price}/{unit})"
    lower = tiers[t.number - 2].up_to if t.number > 1 else 0
    span = f"above {lower:g} {unit}" if t.up_to is None else f"{lower:g}-{t.up_to:g} {unit}"
    return f"Tier {t.number}: {span} (¥{t.price}/{unit})"


def select_tariff(summary: dict[str, Any], kind: str, customer_class: str, on: dt.date) -> dict[str, Any] | None:
    found = [
        t
        for t in summary["utility"]
        if t["kind"] == kind and t["class"] == customer_class and dt.date.fromisoformat(t["from"]) <= on
    ]
    return max(found, key=lambda t: t["from"]) if found else None


def series(
    ps: Sequence[Period],
    registers: dict[int, Fraction | None],
    typical: dict[tuple[int, int], float | None],
    per_unit: int,
    tiers: Sequence[Tier],
    unit: str,
    tz: ZoneInfo,
    first: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One row per period: use this period, the same period a year earlier and the district's
    typical household (all in the tariff's unit), and the tier the year's use has reached by its end."""
    rows = []
    for order, p in enumerate(ps):
        this = used(registers, p.start, p.end, first)
        last = used(registers, year_before(p.start, tz), year_before(p.end, tz))
        ys = year_start(p.start, tz)
        cumulative = used(registers, ys, p.end, first) if ys <= p.start else None
        med = typical.get((p.start, p.end))
        tier = tier_at(in_units(cumulative, per_unit), tiers)
        rows.append(
            {
                "order": order,
                "period": p.label,
                "start": p.start,
                "end": p.end,
                "partial": p.partial,
                "this": in_units(this, per_unit),
                "last_year": in_units(last, per_unit),
                "typical": None if med is None else med / per_unit,
                "year_to_date": in_units(cumulative, per_unit),
                "tier": tier_label(tier, tiers, unit),
                "from_first_reading": this is not None and registers.get(p.start) is None,
            }
        )
    return rows


def year_to_date(
    registers: dict[int, Fraction | None], now: int, tz: ZoneInfo, per_unit: int, first: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """Cumulative use this calendar year at the end of each month so far (and now)."""
    ys = year_start(now, tz)
    month_ends = [p.end for p in periods("Monthly", now, tz, count=12) if p.start >= ys]
    out = []
    for end in month_ends:
        total = used(registers, ys, end, first)
        out.append({"at": end, "cumulative": in_units(total, per_unit)})
    return out
