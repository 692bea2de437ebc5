"""Bills from ledgered readings: pure functions over plain data, exact to the fen.

Consumption in a period is the register difference between its boundaries, each
boundary linearly interpolated between the nearest ledgered readings on either
side, so consecutive periods neither miss nor double-count a litre. Quantities
stay exact (Fractions) until money is rounded, once, on each tier row: half-up
to the fen. Lines and totals are sums of those rounded amounts, so a bill adds up.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from typing_extensions import TypedDict

from ledger.billing.tariffs import ParkingTariff, UtilityTariff
from ledger.documents import document

FEN = Decimal("0.01")
GAP_MS = 6 * 3600 * 1000  # readings further apart than this are flagged as a gap


# Yuan to the fen as an operator types it: no exponent, no "+", no spaces or separators,
# at most twelve digits of yuan. ASCII digits only (Python's \d would take other scripts' digits).
_AMOUNT = re.compile(r"(-?)(0|[1-9][0-9]{0,11})(?:\.([0-9]{1,2}))?", re.ASCII)


def parse_amount(text: str) -> Decimal:
    """A correction's amount: a decimal of yuan with at most two places, minus for a credit.

    Decimal() alone takes `1e9`, `NaN`, `+5`, ` 5 ` and `-0`, and `1e9` once sealed a
    ¥1,000,000,000.00 correction (issue 15); this takes only what a clerk would write
    on a form. Zero is refused: an adjustment of nothing is a slip. ValueError says why.
    """
    m = _AMOUNT.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"amount {text!r} is not an amount of yuan: write it like 12.50 or -3 (at most two "
            "decimal places, a minus sign for a credit, no exponent, spaces or separators)"
        )
    value = Decimal(f"{m[1]}{m[2]}.{(m[3] or '').ljust(2, '0')}")
    if value == 0:
        raise ValueError("amount must not be zero")
    return value


def half_up(q: Fraction, places: int) -> Decimal:
    """`q` rounded half away from zero (ROUND_HALF_UP) to `places` decimals, exactly, at any size.

    By integers, not by a Decimal division: that first rounds to the context's 28
    digits, and a register near 2^63 litres leaves only a few of them below the fen,
    so an amount just under a half fen could be rounded twice, up (issue 15), and
    one past 10^26 raised InvalidOperation.
    """
    scaled = abs(q) * 10**places
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if 2 * rest >= scaled.denominator:
        whole += 1
    return Decimal(f"{'-' if q < 0 and whole else ''}{whole}E-{places}")


def to_fen(amount: Fraction) -> Decimal:
    """The one rounding rule of cityledger: half-up to the fen (0.01 yuan)."""
    return half_up(amount, 2)


def show(q: Fraction, places: int = 3) -> str:
    """A quantity for people: rounded for display only, never for arithmetic."""
    return str(half_up(q, places))


@dataclass(frozen=True, slots=True)
class Point:
    """A ledgered reading of one meter: when, the register, and which seq proves it."""

    ts: int
    value: int
    seq: int


@dataclass(frozen=True, slots=True)
class Replacement:
    """An operator-recorded meter replacement: at `ts` the register jumped from `old_final` to `new_initial`."""

    ts: int
    old_final: int
    new_initial: int


@dataclass
class Consumption:
    """Base units (litres, watt-hours) used in a period, and what it rests on."""

    amount: Fraction
    rests_on: list[int] = field(default_factory=list)  # seqs
    flags: list[str] = field(default_factory=list)


def _continuous(points: Sequence[Point], replacements: Sequence[Replacement]) -> list[tuple[int, Fraction, int]]:
    """(ts, register as if never replaced, seq): recorded replacements folded into one register."""
    out = []
    for p in points:
        offset = sum(r.old_final - r.new_initial for r in replacements if r.ts <= p.ts)
        out.append((p.ts, Fraction(p.value + offset), p.seq))
    return out


def consumption(
    points: Sequence[Point],
    start: int,
    end: int,
    replacements: Sequence[Replacement] = (),
    *,
    checks: bool = True,
    checked: Collection[int] = frozenset(),
) -> Consumption:
    """What the meter counted in [start, end), from readings sorted by ts.

    A register that goes down without a recorded replacement is flagged, never
    guessed away: the drop is left out and the counting goes on from the new value.
    The result rests on the readings either side of each boundary (what the
    interpolation used) and on every reading a flag names. `checks=False` is for
    callers that already know the stretch has no drop and no gap and hand over
    only the boundary neighbours; `checked` names the seqs whose step to the next
    point was already checked (a quiet day condensed to its first and last reading).
    """
    if end <= start:
        raise ValueError("a period must end after it starts")
    pts = _continuous(points, replacements)
    result = Consumption(Fraction(0))
    if not pts:
        result.flags.append("no readings")
        return result
    first_ts, last_ts = pts[0][0], pts[-1][0]
    if first_ts > start:
        result.flags.append("no reading before the period start: counted from the first reading")
    if last_ts < end:
        result.flags.append("no reading after the period end yet: counted to the last reading")
    lo, hi = max(start, first_ts), min(end, last_ts)
    if hi <= lo:
        return result
    before = max(i for i, (ts, _, _) in enumerate(pts) if ts <= lo)
    after = min(i for i, (ts, _, _) in enumerate(pts) if ts >= hi)
    path = (
        [(lo, _register_at(pts, lo, before))]
        + [(pts[i][0], pts[i][1]) for i in range(before + 1, after)]
        + [(hi, _register_at(pts, hi, after))]
    )
    for (_, a), (_, b) in zip(path, path[1:]):
        if b >= a:
            result.amount += b - a
    used = {before, after}
    if pts[before][0] < lo and before + 1 < len(pts):
        used.add(before + 1)
    if pts[after][0] > hi and after > 0:
        used.add(after - 1)
    if checks:
        for i in range(before, after):
            (ta, va, sa), (tb, vb, sb) = pts[i], pts[i + 1]
            if sa in checked:
                continue
            if vb < va:
                result.flags.append(
                    f"register fell from {va} to {vb} between seq {sa} and {sb}: the drop is not "
                    "billed; an operator must confirm a meter replacement or investigate"
                )
                used |= {i, i + 1}
            if sb != sa + 1:
                result.flags.append(f"readings missing between seq {sa} and {sb}")
                used |= {i, i + 1}
            elif tb - ta > GAP_MS:
                result.flags.append(f"no reading for {(tb - ta) / 3_600_000:.1f} h after seq {sa}")
                used |= {i, i + 1}
    result.rests_on = [pts[i][2] for i in sorted(used)]
    return result


def _register_at(pts: list[tuple[int, Fraction, int]], ts: int, i: int) -> Fraction:
    """The register at `ts`: exact at a reading, else linear between its neighbours."""
    t_i, v_i, _ = pts[i]
    if t_i == ts:
        return v_i
    j = i + 1 if t_i < ts else i - 1
    t_a, v_a, _ = pts[min(i, j)]
    t_b, v_b, _ = pts[max(i, j)]
    if v_b < v_a:  # across a drop: do not interpolate through it
        return v_a if ts < t_b else v_b
    return v_a + (v_b - v_a) * Fraction(ts - t_a, t_b - t_a)


# ---------------------------------------------------------------- tiers


@document
class TierLine(TypedDict):
    """A tier row as a bill shows it (`TierRow.as_dict`): quantity for display, money to the fen."""

    tier: int
    quantity: str
    unit: str
    price: str
    amount: str


@dataclass(frozen=True)
class TierRow:
    tier: int  # 1-based
    quantity: Fraction  # in the tariff's unit
    price: Decimal
    amount: Decimal  # rounded to the fen: the only rounding

    def as_dict(self, unit: str) -> TierLine:
        return {
            "tier": self.tier,
            "quantity": show(self.quantity),
            "unit": unit,
            "price": str(self.price),
            "amount": str(self.amount),
        }


def split_tiers(tariff: UtilityTariff, used_before: Fraction, used: Fraction) -> list[TierRow]:
    """Place `used` (tariff units) on the tiers, starting from `used_before` this basis period."""
    rows = []
    start, end = used_before, used_before + used
    low = Fraction(0)
    for n, tier in enumerate(tariff.tiers, 1):
        high = Fraction(tier.up_to) if tier.up_to is not None else None
        a = max(start, low)
        b = end if high is None else min(end, high)
        if b > a:
            qty = b - a
            rows.append(TierRow(n, qty, tier.price, to_fen(qty * Fraction(tier.price))))
        if high is None:
            break
        low = high
    return rows


# ---------------------------------------------------------------- parking


@dataclass
class Session:
    start: int
    end: int | None  # None: still parked
    rests_on: list[int] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


def sessions(
    events: Sequence[Point],
    *,
    min_stay_ms: int = 120_000,
    merge_gap_ms: int = 60_000,
    checked: Collection[int] = frozenset(),
    silence_ms: int = GAP_MS,
) -> list[Session]:
    """Parking sessions from a space's occupancy reports (changes and heartbeats), by ts.

    A seq gap means reports were lost. Then the state is repaired from the next
    report, in the citizen's favour: a missed arrival starts the stay at the first
    report showing the space taken, a missed departure ends it at the last report
    that did; the session says so. `checked` names the seqs whose step to the
    next report is known to lose nothing and change nothing (a quiet day condensed). Stays shorter than `min_stay_ms` are sensor
    flicker; free gaps shorter than `merge_gap_ms` join two stays into one. A stay during which the
    space said nothing for longer than `silence_ms` is flagged, as a meter's silence is.
    """
    out: list[Session] = []
    current: Session | None = None
    last: Point | None = None
    seen: Point | None = None  # the latest report showing the current stay
    for p in events:
        lost = last is not None and p.seq != last.seq + 1 and last.seq not in checked
        if current is not None and last is not None and p.ts - last.ts > silence_ms and last.seq not in checked:
            _flag_silence(current, last, p)
        if p.value == 1 and current is None:
            current, seen = Session(p.ts, None, [p.seq]), p
            if lost:
                current.flags.append(
                    f"arrival report missing: the stay starts at seq {p.seq}, the first report showing the space taken"
                )
        elif p.value == 1:
            seen = p
        elif current is not None and seen is not None:
            if lost:
                current.end = seen.ts
                current.flags.append(
                    f"departure report missing: the stay ends at seq {seen.seq}, the last report "
                    f"showing the space taken (seq {p.seq} showed it free)"
                )
            else:
                current.end = p.ts
            current.rests_on += [q for q in ((seen.seq, p.seq) if lost else (p.seq,)) if q not in current.rests_on]
            out.append(current)
            current = None
        last = p
    if current is not None:
        out.append(current)
    merged: list[Session] = []
    for s in out:
        prev = merged[-1] if merged else None
        if prev is not None and prev.end is not None and s.start - prev.end < merge_gap_ms:
            prev.end = s.end
            prev.rests_on += s.rests_on
            prev.flags += s.flags + ["joined with the next stay across a short free gap"]
        else:
            merged.append(s)
    return [s for s in merged if s.end is None or s.end - s.start >= min_stay_ms]


def _flag_silence(stay: Session, before: Point, after: Point) -> None:
    """A stay the space said nothing about for hours: it is charged as the reports either side say,
    and the bill says so. A sensor switched off, or a clock far off: a report stamped 1970, which the
    protocol accepts, followed by one stamped now made a stay of 56 years (¥4.47 million, unflagged)."""
    stay.flags.append(
        f"no report for {(after.ts - before.ts) / 3_600_000:.1f} h after seq {before.seq} during the "
        "stay: its length rests on the reports either side (check the sensor and its clock)"
    )
    stay.rests_on += [q for q in (before.seq, after.seq) if q not in stay.rests_on]


@document
class FeeLine(TypedDict):
    """A fee row as a bill shows it (`FeeRow.as_dict`): money to the fen, as strings."""

    period: str
    start: str
    end: str
    units: int
    unit_minutes: int
    price: str
    amount: str


@dataclass(frozen=True)
class FeeRow:
    period: str  # "day" | "night"
    start: str  # local time, ISO
    end: str
    units: int
    unit_minutes: int
    price: Decimal
    amount: Decimal

    def as_dict(self) -> FeeLine:
        return {
            "period": self.period,
            "start": self.start,
            "end": self.end,
            "units": self.units,
            "unit_minutes": self.unit_minutes,
            "price": str(self.price),
            "amount": str(self.amount),
        }


def parking_fee(start: int, end: int, tariff: ParkingTariff, zone_class: int, tz: ZoneInfo) -> list[FeeRow]:
    """Fee rows for one stay: daytime per started unit (first period dearer), night per started unit.

    The stay is cut at the day/night boundaries of the city's time zone; each piece
    is charged by its own started units. The first-hour price covers the first
    `first_period_minutes` of daytime parking in the stay.
    """
    zone = tariff.zone(zone_class)
    rows: list[FeeRow] = []
    cheap_left = tariff.first_period_minutes * 60_000
    for a, b, is_day in _day_night_pieces(start, end, tariff, tz):
        duration = b - a
        if is_day:
            unit = tariff.day_unit_minutes * 60_000
            units = -(-duration // unit)
            first = min(units, -(-cheap_left // unit)) if cheap_left > 0 else 0
            cheap_left -= first * unit
            for n, price in ((first, zone.first_hour), (units - first, zone.after)):
                if n:
                    rows.append(
                        FeeRow(
                            "day",
                            _iso(a, tz),
                            _iso(b, tz),
                            n,
                            tariff.day_unit_minutes,
                            price,
                            to_fen(n * Fraction(price)),
                        )
                    )
        else:
            unit = tariff.night_unit_minutes * 60_000
            units = -(-duration // unit)
            rows.append(
                FeeRow(
                    "night",
                    _iso(a, tz),
                    _iso(b, tz),
                    units,
                    tariff.night_unit_minutes,
                    tariff.night_price,
                    to_fen(units * Fraction(tariff.night_price)),
                )
            )
    return rows


def _day_night_pieces(start: int, end: int, tariff: ParkingTariff, tz: ZoneInfo) -> list[tuple[int, int, bool]]:
    pieces = []
    t = start
    while t < end:
        local = dt.datetime.fromtimestamp(t / 1000, tz)
        day_start = local.replace(hour=tariff.day_start.hour, minute=tariff.day_start.minute, second=0, microsecond=0)
        day_end = local.replace(hour=tariff.day_end.hour, minute=tariff.day_end.minute, second=0, microsecond=0)
        if local < day_start:
            boundary, is_day = day_start, False
        elif local < day_end:
            boundary, is_day = day_end, True
        else:
            boundary, is_day = day_start + dt.timedelta(days=1), False
        b = min(end, int(boundary.timestamp() * 1000))
        pieces.append((t, b, is_day))
        t = b
    return pieces


def _iso(ms: int, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="minutes")


# ---------------------------------------------------------------- periods


def month_bounds(month: str, tz: ZoneInfo) -> tuple[int, int]:
    """[start, end) of a calendar month 'YYYY-MM' in the city's time zone, as epoch ms."""
    year, mon = (int(x) for x in month.split("-"))
    if not 1 <= mon <= 12:
        raise ValueError(f"not a month: {month}")
    first = dt.datetime(year, mon, 1, tzinfo=tz)
    nxt = dt.datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=tz)
    return int(first.timestamp() * 1000), int(nxt.timestamp() * 1000)


def local_date(ms: int, tz: ZoneInfo) -> dt.date:
    """The city's calendar date at an instant: what decides which tariff is in force."""
    return dt.datetime.fromtimestamp(ms / 1000, tz).date()


def year_start(month: str, tz: ZoneInfo) -> int:
    return int(dt.datetime(int(month[:4]), 1, 1, tzinfo=tz).timestamp() * 1000)
