"""The simulation models: plausible, monotone, deterministic, and independent of the sampling rate."""

from __future__ import annotations

import random
import statistics
from datetime import datetime, timedelta, timezone

import pytest

from edge.meters import (
    DAY_MS,
    HOUR_MS,
    MAX_STAY_MS,
    MIN_STAY_MS,
    MeterModel,
    ParkingSensor,
    device_seed,
    local_hour,
    meter_for,
)

BEIJING = timezone(timedelta(hours=8))


def beijing_ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=BEIJING).timestamp() * 1000)


def households(kind: str, n: int = 30) -> list[MeterModel]:
    return [meter_for(kind, device_seed(7, f"{kind}-{i}")) for i in range(n)]


def mean_daily(kind: str, start_ms: int, days: int = 7) -> float:
    """Average consumption per day over `days`, across households, in base units."""
    totals = []
    for meter in households(kind):
        first = meter.advance(start_ms)
        totals.append((meter.advance(start_ms + days * DAY_MS) - first) / days)
    return statistics.mean(totals)


# ---------------------------------------------------------------- registers


@pytest.mark.parametrize("kind", ["water", "gas", "electricity"])
def test_register_only_grows_even_when_the_clock_steps_back(kind: str) -> None:
    rng = random.Random(1)
    for meter in households(kind, 3):
        ts = beijing_ms(2025, 3, 1)
        previous = meter.advance(ts)
        for _ in range(300):
            ts += rng.choice([1_000, 60_000, 900_000, 3 * HOUR_MS, 2 * DAY_MS, -120_000])
            register = meter.advance(ts)
            assert register >= previous
            previous = register
        assert meter.register == previous


@pytest.mark.parametrize("kind", ["water", "gas", "electricity"])
def test_a_day_always_consumes_something(kind: str) -> None:
    for meter in households(kind, 10):
        start = beijing_ms(2025, 5, 1)
        before = meter.advance(start)
        assert meter.advance(start + DAY_MS) > before


def test_registers_start_where_an_installed_meter_would() -> None:
    assert all(m.advance(beijing_ms(2025, 1, 1)) > 0 for m in households("water", 10))
    assert meter_for("gas", 1, start_register=0).advance(beijing_ms(2025, 1, 1)) == 0


def test_resume_continues_from_the_reported_register() -> None:
    meter = meter_for("electricity", 3)
    meter.resume(beijing_ms(2025, 6, 1), 1_000_000)
    assert meter.advance(beijing_ms(2025, 6, 1)) == 1_000_000
    assert meter.advance(beijing_ms(2025, 6, 2)) > 1_000_000


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        meter_for("parking", 1)


# ---------------------------------------------------------------- daily and seasonal patterns


def hourly_flow(kind: str, start_ms: int, days: int = 14) -> list[float]:
    """Mean consumption per local hour of the day, sampled hourly through `advance`."""
    flow = [0.0] * 24
    for meter in households(kind, 10):
        register = meter.advance(start_ms)
        for h in range(days * 24):
            ts = start_ms + (h + 1) * HOUR_MS
            nxt = meter.advance(ts)
            flow[int(local_hour(ts - HOUR_MS))] += nxt - register
            register = nxt
    return [f / (10 * days) for f in flow]


def test_water_is_near_zero_at_night_and_peaks_morning_and_evening() -> None:
    flow = hourly_flow("water", beijing_ms(2025, 4, 7))
    night = statistics.mean(flow[1:5])
    day = statistics.mean(flow[7:22])
    assert night < 0.1 * day
    morning_peak = max(flow[6:10])
    evening_peak = max(flow[18:23])
    midday = statistics.mean(flow[13:17])
    assert morning_peak > 1.5 * midday and evening_peak > 1.5 * midday


def test_electricity_has_a_base_load_at_night_and_an_evening_peak() -> None:
    flow = hourly_flow("electricity", beijing_ms(2025, 4, 7))
    night = statistics.mean(flow[1:5])
    assert 60 < night < 300  # fridge and standby: tens to a few hundred Wh per hour
    assert max(flow[18:23]) > 2 * night


def test_gas_peaks_at_meal_times() -> None:
    flow = hourly_flow("gas", beijing_ms(2025, 7, 7))  # summer: cooking only
    assert max(flow[17:20]) > 5 * statistics.mean(flow[1:5])


def test_seasons() -> None:
    january, april, july = (beijing_ms(2025, m, 10) for m in (1, 4, 7))
    gas = {m: mean_daily("gas", t) for m, t in (("jan", january), ("jul", july))}
    assert gas["jan"] > 3 * gas["jul"]  # heating season
    electricity = {m: mean_daily("electricity", t) for m, t in (("jan", january), ("apr", april), ("jul", july))}
    assert electricity["jul"] > 1.3 * electricity["apr"]  # air conditioning
    assert electricity["jan"] > 1.1 * electricity["apr"]  # winter
    assert mean_daily("water", july) > 1.1 * mean_daily("water", january)


def test_magnitudes_are_those_of_beijing_households() -> None:
    april, january = beijing_ms(2025, 4, 10), beijing_ms(2025, 1, 10)
    assert 250 <= mean_daily("water", april) <= 600  # litres: 0.25-0.6 m3 a day
    assert 5_000 <= mean_daily("electricity", april) <= 12_000  # Wh
    assert 1_000 <= mean_daily("gas", january) <= 3_000  # litres: 1-3 m3 a winter day


# ---------------------------------------------------------------- determinism and time compression


@pytest.mark.parametrize("kind", ["water", "gas", "electricity"])
def test_same_seed_same_registers(kind: str) -> None:
    times = [beijing_ms(2025, 2, 1) + i * 37_000 for i in range(300)]
    a, b = meter_for(kind, 42), meter_for(kind, 42)
    assert [a.advance(t) for t in times] == [b.advance(t) for t in times]
    c = meter_for(kind, 43)
    assert [c.advance(t) for t in times] != [meter_for(kind, 42).advance(t) for t in times]


def test_device_seed_is_stable_and_distinct() -> None:
    assert device_seed(0, "wm-d01-000001") == device_seed(0, "wm-d01-000001")
    assert device_seed(0, "wm-d01-000001") != device_seed(1, "wm-d01-000001")
    assert device_seed(0, "wm-d01-000001") != device_seed(0, "wm-d01-000002")


@pytest.mark.parametrize("kind", ["water", "gas", "electricity"])
def test_register_does_not_depend_on_the_sampling_rate(kind: str) -> None:
    """What lets a simulation compress weeks: a week in one step equals a week minute by minute."""
    start = beijing_ms(2025, 11, 20)
    end = start + 7 * DAY_MS
    fine, coarse = meter_for(kind, 9), meter_for(kind, 9)
    fine.advance(start)
    coarse.advance(start)
    for t in range(start, end + 1, 60_000):
        fine.advance(t)
    coarse.advance(end)
    assert abs(fine.register - coarse.register) <= 1


# ---------------------------------------------------------------- parking


def run_sensor(sensor: ParkingSensor, start_ms: int, steps: int, step_ms: int) -> list[tuple[int | None, bool]]:
    out = []
    for i in range(steps):
        value = sensor.step(start_ms + i * step_ms)
        out.append((value, bool(sensor.occupied)))
    return out


def test_parking_reports_every_change_and_heartbeats_otherwise() -> None:
    heartbeat = 5
    sensor = ParkingSensor(11, heartbeat_every=heartbeat)
    history = run_sensor(sensor, beijing_ms(2025, 4, 1), 3 * 24 * 60, 60_000)
    assert history[0][0] == int(history[0][1])  # the first step reports the state found
    reported = history[0][0]
    quiet = 0
    changes = heartbeats = 0
    for value, occupied in history[1:]:
        state = int(occupied)
        if state != reported:
            assert value == state, "a change must be reported at once"
            changes += 1
            reported, quiet = state, 0
            continue
        quiet += 1
        if quiet == heartbeat:
            assert value == state, "a heartbeat is due"
            heartbeats += 1
            quiet = 0
        else:
            assert value is None
    assert changes > 10 and heartbeats > 100
    assert all(v in (None, 0, 1) for v, _ in history)


def test_parking_is_busier_by_day_with_stays_of_minutes_to_hours() -> None:
    arrivals_by_hour = [0] * 24
    stays: list[int] = []
    start = beijing_ms(2025, 4, 1)
    for seed in range(20):
        sensor = ParkingSensor(seed)
        arrived: int | None = None
        previous = None
        for i in range(7 * 24 * 60):
            ts = start + i * 60_000
            occupied = sensor.occupancy(ts)
            if previous is False and occupied:
                arrivals_by_hour[int(local_hour(ts))] += 1
                arrived = ts
            if previous and not occupied and arrived is not None:
                stays.append(ts - arrived)
            previous = occupied
    day = statistics.mean(arrivals_by_hour[9:18])
    night = statistics.mean(arrivals_by_hour[1:5])
    assert day > 4 * night
    assert all(MIN_STAY_MS - 60_000 <= s <= MAX_STAY_MS + 60_000 for s in stays)
    assert 10 * 60_000 <= statistics.median(stays) <= 4 * HOUR_MS
    assert max(stays) > 3 * HOUR_MS  # some stay hours (overnight)


def test_parking_is_deterministic_and_independent_of_the_sampling_rate() -> None:
    start = beijing_ms(2025, 4, 1)
    a, b, c = ParkingSensor(5), ParkingSensor(5), ParkingSensor(5)
    every_minute = [a.occupancy(start + i * 60_000) for i in range(2 * 24 * 60)]
    assert every_minute == [b.occupancy(start + i * 60_000) for i in range(2 * 24 * 60)]
    every_ten = [c.occupancy(start + i * 600_000) for i in range(2 * 24 * 6)]
    assert every_ten == every_minute[::10]


def test_parking_resume_reports_only_changes_and_heartbeats() -> None:
    sensor = ParkingSensor(3, heartbeat_every=1000)
    sensor.resume(beijing_ms(2025, 4, 1, 3), 0)
    first = sensor.step(beijing_ms(2025, 4, 1, 3) + 60_000)
    assert first is None or first == 1  # nothing to say unless a car arrived
    with pytest.raises(ValueError):
        ParkingSensor(1, heartbeat_every=0)
