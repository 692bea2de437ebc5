"""Billing rules as pure functions, checked against examples worked out by hand."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.billing.rules import (
    Point,
    Replacement,
    consumption,
    month_bounds,
    parking_fee,
    sessions,
    show,
    split_tiers,
    to_fen,
)
from ledger.billing.tariffs import default_tariffs

TZ = ZoneInfo("Asia/Shanghai")
BOOK = default_tariffs()
WATER = BOOK.for_utility("water", "residential", dt.date(2026, 1, 1))
POWER = BOOK.for_utility("electricity", "residential", dt.date(2026, 1, 1))
PARKING = BOOK.for_parking(dt.date(2026, 1, 1))


def at(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=TZ).timestamp() * 1000)


def amounts(rows) -> list[tuple[int, str, str]]:
    return [(r.tier, str(r.quantity), str(r.amount)) for r in rows]


# ---------------------------------------------------------------- tiers


def test_a_month_crossing_a_tier_threshold_is_split_at_it() -> None:
    # 170 m3 used before March; 20 m3 in March: 10 m3 at 5.00 and 10 m3 at 7.00 = 50 + 70 = 120.00
    rows = split_tiers(WATER, Fraction(170), Fraction(20))
    assert amounts(rows) == [(1, "10", "50.00"), (2, "10", "70.00")]
    assert sum(r.amount for r in rows) == Decimal("120.00")


def test_a_month_crossing_two_thresholds() -> None:
    # 175 before; 100 used: 5 at 5 (25) + 80 at 7 (560) + 15 at 9 (135) = 720.00
    rows = split_tiers(WATER, Fraction(175), Fraction(100))
    assert amounts(rows) == [(1, "5", "25.00"), (2, "80", "560.00"), (3, "15", "135.00")]


def test_electricity_prices_round_once_per_tier_row_half_up() -> None:
    # 2879.5 kWh before; 1.234 kWh used: 0.5 x 0.4883 = 0.24415 -> 0.24; 0.734 x 0.5383 = 0.3951122 -> 0.40
    rows = split_tiers(POWER, Fraction("2879.5"), Fraction("1.234"))
    assert amounts(rows) == [(1, "1/2", "0.24"), (2, "367/500", "0.40")]
    assert to_fen(Fraction(5, 1000)) == Decimal("0.01")  # half-up, not banker's rounding


def _exact_half_up(q: Fraction, places: int) -> Fraction:
    """The rounding rule by integers, as a person would do it on paper (q >= 0)."""
    return Fraction((q * 10**places * 2 + 1) // 2, 10**places)


def test_a_register_jumping_to_near_2_63_is_billed_to_the_exact_fen() -> None:
    # A water meter reading 0, then 9,223,372,032,695,021,531 L a week later (the protocol allows it);
    # the period ends between them, so its use is interpolated: 9.50/m3 of it is
    # 43,811,017,082,862,501.514999... yuan, which is .51. A Decimal division rounded it to 28 digits
    # first (…501.5150000000), and then half-up made it .52.
    flat = BOOK.for_utility("water", "non-residential", dt.date(2026, 1, 1))
    t_a, t_b, end = 1_779_697_599_999, 1_780_302_400_002, 1_780_000_000_000
    used = consumption([Point(t_a, 0, 1), Point(t_b, 9_223_372_032_695_021_531, 2)], t_a - 1, end).amount
    rows = split_tiers(flat, Fraction(0), used / 1000)
    exact = used / 1000 * Fraction("9.50")
    assert Fraction(1, 2) - Fraction(1, 10**9) < exact * 100 % 1 < Fraction(1, 2)  # just under half a fen
    assert [r.amount for r in rows] == [Decimal("43811017082862501.51")]
    assert Fraction(rows[0].amount) == _exact_half_up(exact, 2)


@given(st.integers(0, 2**140), st.integers(1, 2**80))
@settings(max_examples=300)
def test_to_fen_is_exact_half_up_at_any_size(numerator: int, denominator: int) -> None:
    q = Fraction(numerator, denominator)
    assert Fraction(to_fen(q)) == _exact_half_up(q, 2)
    assert Fraction(to_fen(-q)) == -_exact_half_up(q, 2)  # half away from zero, as ROUND_HALF_UP
    assert Fraction(Decimal(show(q))) == _exact_half_up(q, 3)
    assert to_fen(q).as_tuple().exponent == -2  # always written to the fen: "5.00", never "5"


def test_the_year_restarts_the_tiers() -> None:
    # December: 250 before, 15 used: 10 at 7 + 5 at 9 = 115.00; January: tier 1 again, 15 at 5 = 75.00
    assert sum(r.amount for r in split_tiers(WATER, Fraction(250), Fraction(15))) == Decimal("115.00")
    assert sum(r.amount for r in split_tiers(WATER, Fraction(0), Fraction(15))) == Decimal("75.00")


# ---------------------------------------------------------------- consumption


def test_boundaries_are_interpolated_so_months_neither_miss_nor_double_count() -> None:
    # 1000 L a day, read every 10 days at 12:00 local; the month boundary falls between readings.
    pts = [Point(at(2026, 3, 25, 12) + d * 86_400_000, 1000 * (24 + d), 1 + d // 10) for d in range(0, 21, 10)]
    pts = [Point(p.ts, p.value, i + 1) for i, p in enumerate(pts)]
    march = consumption(pts, *month_bounds("2026-03", TZ))
    april = consumption(pts, *month_bounds("2026-04", TZ))
    # Mar 25 12:00 -> Apr 1 00:00 is 6.5 days: 6500 L; the rest (20 - 6.5 days) is April's so far
    assert march.amount == 6500
    assert april.amount == 13500 and "no reading after the period end yet" in april.flags[0]
    assert march.amount + april.amount == pts[-1].value - pts[0].value
    assert march.rests_on == [1, 2]


def test_leap_day_belongs_to_february() -> None:
    # 1000 L a day from Feb 28 00:00 to Mar 2 00:00. In 2028 (leap) that is 3 days, Feb gets 2 of them
    # (28th, 29th); in 2027 the same readings a day earlier also give Feb 2 days (27th, 28th).
    for year, start_day in ((2028, 28), (2027, 27)):
        pts = [Point(at(year, 2, start_day), 0, 1), Point(at(year, 3, 2), 3000, 2)]
        feb = consumption(pts, *month_bounds(f"{year}-02", TZ))
        mar = consumption(pts, *month_bounds(f"{year}-03", TZ))
        assert (feb.amount, mar.amount) == (2000, 1000), year
    assert month_bounds("2028-03", TZ)[0] - month_bounds("2028-02", TZ)[0] == 29 * 86_400_000


def test_a_gap_is_flagged_not_hidden() -> None:
    pts = [Point(at(2026, 5, 1), 0, 1), Point(at(2026, 5, 2), 100, 2), Point(at(2026, 5, 20), 2000, 9)]
    used = consumption(pts, at(2026, 5, 1), at(2026, 5, 20))
    assert used.amount == 2000
    assert any("missing between seq 2 and 9" in f for f in used.flags)


def test_a_rollback_is_flagged_and_the_drop_not_billed() -> None:
    pts = [Point(at(2026, 6, d), v, d) for d, v in ((1, 1000), (2, 1500), (3, 200), (4, 700))]
    used = consumption(pts, at(2026, 6, 1), at(2026, 6, 4))
    assert used.amount == 500 + 500
    assert any("register fell from 1500 to 200" in f for f in used.flags)


def test_a_recorded_replacement_joins_the_registers() -> None:
    # The old meter ended at 1600 (between readings), the new one started at 0.
    pts = [Point(at(2026, 6, d), v, d) for d, v in ((1, 1000), (2, 1500), (3, 200), (4, 700))]
    swap = Replacement(at(2026, 6, 2, 12), old_final=1600, new_initial=0)
    used = consumption(pts, at(2026, 6, 1), at(2026, 6, 4), [swap])
    # 1000 -> 1500 -> (1600 + 200) -> (1600 + 700): 1300 L, no rollback
    assert used.amount == 1300 and not any("fell" in f for f in used.flags)
    # A meter replaced at the protocol's largest register: the joined register passes 2^63, exactly.
    top = 2**63 - 1
    pts = [Point(at(2026, 6, d), v, d) for d, v in ((1, top - 10), (2, top), (3, 5), (4, 15))]
    used = consumption(pts, at(2026, 6, 1), at(2026, 6, 4), [Replacement(at(2026, 6, 2, 12), top, 0)])
    assert used.amount == 25 and not any("fell" in f for f in used.flags)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=40_000), min_size=3, max_size=60),
    st.integers(min_value=0, max_value=10**9),
)
def test_monthly_consumptions_add_up_to_the_years_register_difference(steps: list[int], start: int) -> None:
    year0, year1 = at(2026, 1, 1), at(2027, 1, 1)
    span = year1 - year0
    pts, value = [], start
    for i, step in enumerate(steps):
        value += step
        pts.append(Point(year0 - 86_400_000 + (span + 2 * 86_400_000) * i // (len(steps) - 1), value, i + 1))
    total = sum(consumption(pts, *month_bounds(f"2026-{m:02d}", TZ)).amount for m in range(1, 13))
    assert total == consumption(pts, year0, year1).amount
    assert total <= pts[-1].value - pts[0].value


# ---------------------------------------------------------------- parking


def fee(start: int, end: int, zone: int) -> tuple[Decimal, list[tuple[str, int, str]]]:
    rows = parking_fee(start, end, PARKING, zone, TZ)
    return sum((r.amount for r in rows), Decimal("0.00")), [(r.period, r.units, str(r.amount)) for r in rows]


def test_a_stay_across_21_00_and_midnight() -> None:
    # Zone 2, 20:30 -> 01:15: day 30 min = 2 quarters x 1.50 = 3.00; night 4 h 15 = 3 started 2 h x 1.00 = 3.00
    total, rows = fee(at(2026, 3, 10, 20, 30), at(2026, 3, 11, 1, 15), 2)
    assert rows == [("day", 2, "3.00"), ("night", 3, "3.00")] and total == Decimal("6.00")


def test_the_first_hour_is_cheaper_then_the_later_rate() -> None:
    # Zone 1, 09:00 -> 10:50: 8 quarters; the first 4 at 2.50 (10.00), the next 4 at 3.75 (15.00)
    total, rows = fee(at(2026, 3, 10, 9), at(2026, 3, 10, 10, 50), 1)
    assert rows == [("day", 4, "10.00"), ("day", 4, "15.00")] and total == Decimal("25.00")


def test_a_stay_into_the_next_morning_keeps_its_first_hour() -> None:
    # Zone 1, 20:10 -> 07:40: 50 min day (4 quarters, first-hour price, 10.00), night 10 h (5 x 1.00),
    # then 40 min next morning (3 quarters) at the later price, the first hour being used: 11.25
    total, rows = fee(at(2026, 3, 1, 20, 10), at(2026, 3, 2, 7, 40), 1)
    assert rows == [("day", 4, "10.00"), ("night", 5, "5.00"), ("day", 3, "11.25")]
    assert total == Decimal("26.25")


def test_zone_class_changes_the_price() -> None:
    start, end = at(2026, 3, 10, 9), at(2026, 3, 10, 9, 30)
    assert [fee(start, end, z)[0] for z in (1, 2, 3)] == [Decimal("5.00"), Decimal("3.00"), Decimal("1.00")]


def test_sessions_from_changes_and_heartbeats_with_flicker_and_repairs() -> None:
    m = 60_000
    t0 = at(2026, 3, 10, 9)
    events = [
        Point(t0, 0, 1),
        Point(t0 + 5 * m, 1, 2),  # arrival
        Point(t0 + 15 * m, 1, 3),  # heartbeat
        Point(t0 + 40 * m, 0, 4),  # departure: a 35-minute stay
        Point(t0 + 50 * m, 1, 5),  # flicker: 30 seconds
        Point(t0 + 50 * m + 30_000, 0, 6),
        Point(t0 + 60 * m, 0, 7),  # heartbeat
        # seq 8 (arrival) lost
        Point(t0 + 90 * m, 1, 9),  # heartbeat shows the space taken: arrival repaired here
        Point(t0 + 120 * m, 1, 10),
        # seq 11 (departure) lost
        Point(t0 + 150 * m, 0, 12),  # heartbeat shows it free: departure repaired to seq 10
    ]
    found = sessions(events)
    assert [(s.start - t0) // m for s in found] == [5, 90]
    assert [(s.end - t0) // m for s in found] == [40, 120]
    assert "arrival report missing" in found[1].flags[0] and "departure report missing" in found[1].flags[1]


def test_a_stay_the_space_said_nothing_about_for_hours_is_flagged() -> None:
    # A bay sensor whose clock stamped its arrival report 1970 (ts 0 is a ts the protocol accepts), then
    # a correct departure report: a stay of 56 years, charged as the reports say, and the bill says why.
    now = at(2026, 3, 10, 9)
    stay = sessions([Point(0, 1, 1), Point(now, 0, 2)])
    assert len(stay) == 1 and (stay[0].start, stay[0].end) == (0, now)
    assert stay[0].flags == [
        f"no report for {now / 3_600_000:.1f} h after seq 1 during the stay: its length rests "
        "on the reports either side (check the sensor and its clock)"
    ]
    assert stay[0].rests_on == [1, 2]
    # Heartbeats every 2.5 hours through the night are no silence; nor is a long free spell.
    t0, h = at(2026, 3, 10, 19), 3_600_000
    night = [Point(t0 + k * 5 * h // 2, 1, k + 1) for k in range(6)] + [
        Point(t0 + 15 * h, 0, 7),
        Point(t0 + 40 * h, 0, 8),
    ]
    assert [s.flags for s in sessions(night)] == [[]]


def test_the_scheduled_close_bills_the_month_before() -> None:
    from ledger.service.scheduler import previous_month

    assert previous_month(dt.date(2026, 1, 1)) == "2025-12"
    assert previous_month(dt.date(2028, 3, 1)) == "2028-02"
