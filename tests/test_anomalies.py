"""Each anomaly detector on small hand-made series: what it finds, what it must not, and what it rests on.

Times are Beijing local (the default city time zone); readings every 15 minutes
unless a test says otherwise. The fault hooks of edge/faults.py are tested at
the end, and one test runs `cityledger fleet --faults` against a real stack.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from edge.faults import (
    CLOCK_AHEAD_MS,
    Fault,
    FaultPlan,
    Injector,
    measure,
    parse_duration,
    simulate,
)
from edge.meters import ParkingSensor, device_seed, meter_for
from ledger.anomalies.detectors import (
    SEVERITIES,
    TYPES,
    AnomalyConfig,
    DeviceInfo,
    Finding,
    Obs,
    detect,
    detect_clock,
    detect_hostile,
    detect_leaks,
    detect_parking_flicker,
    detect_parking_overstays,
    detect_rollbacks,
    detect_silent,
    detect_spikes,
    detect_zero_consumption,
    median_without,
)
from ledger.processes import PIPE, start
from tests.support.broker import wait_for
from tests.support.stack import Stack

BEIJING = timezone(timedelta(hours=8))
T0 = int(datetime(2025, 1, 6, tzinfo=BEIJING).timestamp() * 1000)  # a Monday, local midnight
MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
STEP = 15 * MIN


def local_hour(ts: int) -> int:
    return (ts + 8 * HOUR) % DAY // HOUR


def meter(
    device: str,
    rate: Callable[[int], float],
    *,
    days: float,
    start: int = T0,
    step: int = STEP,
    first: int = 1000,
    lag: int = 400,
) -> list[Obs]:
    """A register read every `step`, advancing at `rate(ts)` units per hour (seq from 1)."""
    out, used = [], 0.0
    for i in range(int(days * DAY / step) + 1):
        ts = start + i * step
        if i:
            used += rate(ts - step) * step / HOUR
        out.append(Obs(device, i + 1, ts, first + int(used), ts + lag))
    return out


def household(ts: int) -> float:
    """Litres per hour of a household: busy mornings and evenings, nothing at night."""
    h = local_hour(ts)
    return 0.0 if h < 6 else 40.0 if h in (7, 8, 19, 20) else 10.0


def info(device: str, kind: str = "water", **kw: object) -> DeviceInfo:
    base = DeviceInfo(device, kind, "d01", None if kind == "parking" else f"acct-{device}")
    return replace(base, **kw)  # type: ignore[arg-type]


def ledgered(readings: dict[str, list[Obs]], f: Finding) -> None:
    """Every (device, seq) of the evidence is a reading we handed in (or (device, 0) when none is named)."""
    have = {(o.device, o.seq) for obs in readings.values() for o in obs}
    assert f.evidence, f
    for ev in f.evidence:
        assert ev in have or (ev == (f.device, 0)), (ev, f)


def one(findings: Sequence[Finding], type: str, device: str) -> Finding:
    mine = [f for f in findings if f.type == type and f.device == device]
    assert len(mine) == 1, findings
    return mine[0]


# ---------------------------------------------------------------- leak


def test_a_water_leak_is_a_night_flow_that_never_stops() -> None:
    leak_from = T0 + 5 * DAY + 12 * HOUR
    readings = {
        "wm1": meter("wm1", lambda ts: household(ts) + (10.0 if ts >= leak_from else 0.0), days=9),
        "wm2": meter("wm2", household, days=9),
    }
    devices = [info("wm1"), info("wm2")]
    now = T0 + 9 * DAY
    found = detect_leaks(devices, readings, now)
    f = one(found, "leak", "wm1")
    assert [x.device for x in found] == ["wm1"]
    assert f.key == "leak:wm1" and f.severity == "medium" and f.account == "acct-wm1"
    assert local_hour(f.window_start) == 1 and f.window_start == T0 + 6 * DAY + HOUR  # the first leaking night
    assert local_hour(f.window_end) == 5 and f.window_end == T0 + 8 * DAY + 5 * HOUR
    ledgered(readings, f)
    # The evidence is readings taken in the night windows it speaks of.
    by_seq = {o.seq: o for o in readings["wm1"]}
    assert all(1 <= local_hour(by_seq[seq].ts) <= 5 for _, seq in f.evidence)


def test_water_that_never_stops_for_a_day_is_a_leak_even_with_one_peer() -> None:
    """The issue's case: a meter rising 6 litres every hour, day and night, for three days, in a
    district with one other meter. The night rule cannot judge it (no earlier nights of its own, and
    one peer is too few), the continuous-flow rule can: not one still hour in 24."""
    leaking = meter("wm1", lambda ts: 6.0, days=3)
    readings = {"wm1": leaking, "wm2": meter("wm2", household, days=3)}
    now = T0 + 3 * DAY
    found = detect_leaks([info("wm1"), info("wm2")], readings, now, "Asia/Shanghai")
    f = one(found, "leak", "wm1")
    assert len(found) == 1 and "every hour of the last 24 h" in f.detail and "6.0/h" in f.detail
    assert f.severity == "medium" and (f.window_start, f.window_end) == (now - DAY, now)
    ledgered(readings, f)


def test_one_still_hour_in_a_day_is_no_continuous_flow() -> None:
    def mostly_running(ts: int) -> float:
        return 0.0 if local_hour(ts) == 3 else 6.0  # the flow stops for one hour a night

    readings = {"wm1": meter("wm1", mostly_running, days=3)}
    assert detect_leaks([info("wm1")], readings, T0 + 3 * DAY, "Asia/Shanghai") == []


def test_peer_medians_leave_out_the_device_judged_and_need_enough_peers() -> None:
    assert median_without([1.0, 2.0, 10.0], 10.0, 2) == 1.5  # the others' median, not 2.0
    assert median_without([1.0, 2.0, 3.0, 10.0], 1.0, 3) == 3.0
    assert median_without([4.0, 4.0, 4.0], 4.0, 2) == 4.0  # a value others share leaves them be
    assert median_without([1.0, 2.0], 2.0, 3) is None  # one peer is too few
    assert median_without([5.0, 7.0, 9.0], None, 3) == 7.0  # the device has no value of its own there


def test_a_night_when_the_flow_stops_is_no_leak() -> None:
    # A night owl: water at 03:00 on two nights out of three, never all night long.
    def owl(ts: int) -> float:
        day = (ts - T0) // DAY
        return household(ts) + (30.0 if local_hour(ts) == 3 and day % 3 != 0 else 0.0)

    readings = {"wm1": meter("wm1", owl, days=9)}
    assert detect_leaks([info("wm1")], readings, T0 + 9 * DAY) == []


def gas(
    base: float, *, extra: float = 0.0, since: int | None = None, scale_after: float = 1.0
) -> Callable[[int], float]:
    """A gas boiler heating all night (base litres/h), cooking by day; `extra` from `since` on."""

    def rate(ts: int) -> float:
        later = since is not None and ts >= since
        r = base * (scale_after if later else 1.0) + (30.0 if local_hour(ts) in (7, 12, 18) else 0.0)
        return r + (extra if later else 0.0)

    return rate


def test_a_gas_leak_under_the_heating_is_told_by_its_own_earlier_nights() -> None:
    since = T0 + 6 * DAY + 12 * HOUR
    rates = {f"gm{i}": gas(40.0 + 3 * i) for i in range(8)}
    rates["gm3"] = gas(49.0, extra=45.0, since=since)
    readings = {d: meter(d, r, days=11) for d, r in rates.items()}
    found = detect_leaks([info(d, "gas") for d in rates], readings, T0 + 11 * DAY)
    assert [f.device for f in found] == ["gm3"]
    assert found[0].severity == "high"  # a gas leak is a danger, not only a bill
    assert found[0].window_start == T0 + 7 * DAY + HOUR
    ledgered(readings, found[0])


def test_the_first_frost_raising_every_boiler_is_not_a_leak() -> None:
    since = T0 + 6 * DAY + 12 * HOUR
    rates = {f"gm{i}": gas(20.0 + 3 * i, since=since, scale_after=2.5) for i in range(8)}
    readings = {d: meter(d, r, days=11) for d, r in rates.items()}
    assert detect_leaks([info(d, "gas") for d in rates], readings, T0 + 11 * DAY) == []


def test_a_leak_older_than_the_look_back_stands_out_from_the_peers() -> None:
    rates: dict[str, Callable[[int], float]] = {f"wm{i}": household for i in range(5)}
    rates["wm4"] = lambda ts: household(ts) + 35.0
    readings = {d: meter(d, r, days=6) for d, r in rates.items()}
    found = detect_leaks([info(d) for d in rates], readings, T0 + 6 * DAY)
    assert [f.device for f in found] == ["wm4"]
    assert found[0].severity == "high" and "district" in found[0].detail


# ---------------------------------------------------------------- rollback


def obs(device: str, values: Sequence[int], *, start: int = T0, step: int = STEP) -> list[Obs]:
    return [Obs(device, i + 1, start + i * step, v, start + i * step + 500) for i, v in enumerate(values)]


def test_a_register_going_down_is_a_rollback_resting_on_both_readings() -> None:
    readings = {"em1": obs("em1", [100, 110, 120, 90, 95, 96])}
    found = detect_rollbacks([info("em1", "electricity")], readings, T0 + DAY)
    assert len(found) == 1
    f = found[0]
    assert f.evidence == (("em1", 3), ("em1", 4)) and f.key == "rollback:em1:4" and f.severity == "high"
    assert (f.window_start, f.window_end) == (T0 + 2 * STEP, T0 + 3 * STEP)
    assert "120 to 90" in f.detail


def test_seq_order_not_ts_order_decides_a_rollback() -> None:
    # Seq 4's clock stepped back an hour: sorted by ts it comes first, but the register never fell.
    readings = obs("wm1", [100, 110, 120, 130, 140])
    readings[3] = replace(readings[3], ts=readings[0].ts - HOUR)
    by_ts = {"wm1": sorted(readings, key=lambda o: o.ts)}
    assert detect_rollbacks([info("wm1")], by_ts, T0 + DAY) == []


def test_a_recorded_meter_replacement_explains_the_drop() -> None:
    readings = {"wm1": obs("wm1", [5000, 5010, 3, 8])}
    replaced = {"wm1": [(T0 + STEP + 60_000, 5012, 0)]}
    assert detect_rollbacks([info("wm1")], readings, T0 + DAY, replacements=replaced) == []
    assert len(detect_rollbacks([info("wm1")], readings, T0 + DAY)) == 1


# ---------------------------------------------------------------- spike


def electricity(
    i: int, *, factor: float = 1.0, since: int | None = None, until: int | None = None
) -> Callable[[int], float]:
    """Wh per hour: a base load and an evening peak, slightly different per household and hour."""

    def rate(ts: int) -> float:
        h = local_hour(ts)
        r = (150.0 + 10 * i) * (1.0 + 0.1 * math.sin(ts / HOUR + i)) + (600.0 if 18 <= h < 22 else 100.0)
        if since is not None and since <= ts < (until or since + 10 * DAY):
            r *= factor
        return r

    return rate


def test_a_spike_is_an_hour_far_above_the_device_and_its_peers() -> None:
    at = T0 + 5 * DAY + 10 * HOUR
    rates = {f"em{i}": electricity(i) for i in range(6)}
    rates["em2"] = electricity(2, factor=20.0, since=at, until=at + HOUR)
    readings = {d: meter(d, r, days=8) for d, r in rates.items()}
    found = detect_spikes([info(d, "electricity") for d in rates], readings, T0 + 8 * DAY)
    assert [f.device for f in found] == ["em2"]
    f = found[0]
    assert (f.window_start, f.window_end) == (at, at + HOUR)
    assert f.key == f"spike:em2:{at}"
    ledgered(readings, f)
    # It rests on the readings from the one before the hour to the one after it.
    seqs = [q for _, q in f.evidence]
    by_seq = {o.seq: o for o in readings["em2"]}
    assert by_seq[min(seqs)].ts <= at and by_seq[max(seqs)].ts >= at + HOUR


def test_a_lasting_rise_is_a_change_of_level_not_a_spike() -> None:
    since = T0 + 5 * DAY
    rates = {f"em{i}": electricity(i) for i in range(6)}
    rates["em2"] = electricity(2, factor=12.0, since=since)  # a new tenant with a kiln, from day 5 on
    readings = {d: meter(d, r, days=8) for d, r in rates.items()}
    assert detect_spikes([info(d, "electricity") for d in rates], readings, T0 + 8 * DAY) == []


def test_a_stuck_spell_is_not_history_to_call_an_ordinary_hour_a_spike() -> None:
    # A big but ordinary morning (7.5 times usual) two days before the meter stuck for five days.
    big = T0 + DAY + 7 * HOUR
    stuck = T0 + 3 * DAY

    def rate(ts: int) -> float:
        return 0.0 if ts >= stuck else 300.0 if big <= ts < big + HOUR else household(ts)

    rates: dict[str, Callable[[int], float]] = {f"wm{i}": household for i in range(5)}
    rates["wm0"] = rate
    readings = {d: meter(d, r, days=8) for d, r in rates.items()}
    assert detect_spikes([info(d) for d in rates], readings, T0 + 8 * DAY) == []


def test_a_meter_whose_clock_runs_behind_is_not_judged_hour_by_hour() -> None:
    at = T0 + 5 * DAY + 10 * HOUR
    rates = {f"em{i}": electricity(i) for i in range(6)}
    rates["em2"] = electricity(2, factor=20.0, since=at, until=at + HOUR)
    readings = {d: meter(d, r, days=8) for d, r in rates.items()}
    readings["em2"] = [replace(o, received_at=o.received_at + 50 * MIN) for o in readings["em2"]]
    devices = [info(d, "electricity") for d in rates]
    assert detect_spikes(devices, readings, T0 + 8 * DAY) == []
    assert [f.device for f in detect_clock(devices, readings, {}, T0 + 8 * DAY)] == ["em2"]


# ---------------------------------------------------------------- zero consumption


def test_an_occupied_meter_that_stops_advancing_for_days() -> None:
    values = list(range(1000, 1100)) + [1100] * 300  # flat for 300 readings (75 h)
    readings = {"wm1": obs("wm1", values)}
    found = detect_zero_consumption([info("wm1")], readings, T0 + 5 * DAY)
    f = one(found, "zero_consumption", "wm1")
    assert f.evidence == (("wm1", 100), ("wm1", 101), ("wm1", 400))  # last change, first flat, latest
    assert f.key == "zero_consumption:wm1" and f.severity == "medium"
    assert f.window_start == T0 + 100 * STEP and f.window_end == T0 + 399 * STEP


def test_a_vacant_flat_or_a_short_pause_is_not_zero_consumption() -> None:
    readings = {"wm1": obs("wm1", [1000] * 300), "wm2": obs("wm2", list(range(100)) + [100] * 100)}
    assert detect_zero_consumption([info("wm1", account=None), info("wm2")], readings, T0 + 5 * DAY) == []


# ---------------------------------------------------------------- silent


def test_no_reading_for_eight_intervals_is_silence() -> None:
    readings = {"em1": obs("em1", range(100)), "em2": obs("em2", range(100))}
    last = T0 + 99 * STEP
    quiet = detect_silent([info("em1", "electricity"), info("em2", "electricity")], readings, {}, last + 90 * MIN)
    assert quiet == []
    found = detect_silent([info("em1", "electricity")], readings, {}, last + 5 * HOUR)
    f = one(found, "silent", "em1")
    assert f.evidence == (("em1", 100),) and f.key == "silent:em1" and f.severity == "medium"
    assert f.window_start == last + 500 and f.window_end == last + 5 * HOUR


def test_while_ingest_is_behind_a_device_heard_late_is_not_silent() -> None:
    readings = {"em1": obs("em1", range(100))}
    last = T0 + 99 * STEP
    now = last + 3 * HOUR  # past the limit of eight 15-minute intervals by an hour
    assert one(detect_silent([info("em1", "electricity")], readings, {}, now), "silent", "em1")
    assert detect_silent([info("em1", "electricity")], readings, {}, now, lag_ms=90 * MIN) == []
    assert one(detect_silent([info("em1", "electricity")], readings, {}, now, lag_ms=30 * MIN), "silent", "em1")


def test_offline_without_online_is_silence_at_once() -> None:
    readings = {"em1": obs("em1", range(100))}
    last = T0 + 99 * STEP
    dead = info("em1", "electricity", status="offline", status_at=last + MIN)
    found = detect_silent([dead], readings, {}, last + 40 * MIN)
    assert one(found, "silent", "em1").window_start == last + 500
    # A reading after the Will: it came back (its `online` may simply have been lost).
    back = info("em1", "electricity", status="offline", status_at=last - HOUR)
    assert detect_silent([back], readings, {}, last + 40 * MIN) == []


def test_a_device_never_heard_of_rests_on_no_reading_and_rejects_count_as_heard() -> None:
    now = T0 + 3 * DAY
    found = detect_silent([info("wm9")], {}, {}, now)
    assert one(found, "silent", "wm9").evidence == (("wm9", 0),)
    talking = {"wm9": [((now - 10 * MIN) // MIN, "bad_signature", 3)]}
    assert detect_silent([info("wm9")], {}, talking, now) == []


def test_a_bay_sensor_is_silent_after_missed_heartbeats() -> None:
    # Heartbeats every 10 intervals of 15 minutes.
    readings = {"ps1": obs("ps1", [0] * 40, step=10 * STEP)}
    last = T0 + 39 * 10 * STEP
    devices = [info("ps1", "parking")]
    assert detect_silent(devices, readings, {}, last + 7 * HOUR) == []
    assert one(detect_silent(devices, readings, {}, last + 8 * HOUR), "silent", "ps1")


# ---------------------------------------------------------------- clock


def lagging(device: str, lag: int, n: int = 200) -> list[Obs]:
    return [Obs(device, i + 1, T0 + i * STEP - lag, 1000 + i, T0 + i * STEP + 300) for i in range(n)]


def test_a_clock_behind_shows_as_every_reading_arriving_late() -> None:
    readings = {"em1": lagging("em1", 40 * MIN), **{d: lagging(d, 0) for d in ("em2", "em3", "em4")}}
    now = T0 + 200 * STEP
    found = detect_clock([info(d, "electricity") for d in readings], readings, {}, now)
    f = one(found, "clock", "em1")
    assert len(found) == 1 and "behind" in f.detail and f.severity == "medium" and f.key == "clock:em1"
    ledgered(readings, f)


def test_a_lone_late_meter_is_not_called_behind_without_peers_to_tell_it_from_an_outage() -> None:
    readings = {"em1": lagging("em1", 40 * MIN), "em2": lagging("em2", 0)}  # one peer: fewer than peer_min
    assert detect_clock([info(d, "electricity") for d in readings], readings, {}, T0 + 200 * STEP) == []


def test_an_ingest_outage_delays_everyone_and_is_no_clock_trouble() -> None:
    readings = {d: lagging(d, 3 * HOUR) for d in ("em1", "em2", "em3")}
    assert detect_clock([info(d, "electricity") for d in readings], readings, {}, T0 + 200 * STEP) == []


def test_a_clock_ahead_is_told_by_future_timestamp_rejects() -> None:
    now = T0 + DAY
    rejects = {"wm1": [(now // MIN - 30, "future_timestamp", 4), (now // MIN - 10, "bad_signature", 1)]}
    f = one(detect_clock([info("wm1")], {}, rejects, now), "clock", "wm1")
    assert f.severity == "high" and f.evidence == (("wm1", 0),) and "4 readings" in f.detail
    assert f.window_start == (now // MIN - 30) * MIN


def test_a_timestamp_before_the_previous_seq_is_clock_trouble() -> None:
    readings = obs("wm1", range(1000, 1020))
    readings[10] = replace(readings[10], ts=readings[9].ts - 2 * HOUR)
    f = one(detect_clock([info("wm1")], {"wm1": sorted(readings, key=lambda o: o.ts)}, {}, T0 + DAY), "clock", "wm1")
    assert f.evidence == (("wm1", 10), ("wm1", 11)) and "seq 11" in f.detail


# ---------------------------------------------------------------- hostile


def test_a_burst_of_bad_signatures_is_hostile_traffic() -> None:
    now = T0 + DAY
    m = now // MIN - 100
    rejects = {
        "em1": [(m, "bad_signature", 2), (m + 5, "bad_signature", 2), (m + 30, "replay", 1)],
        "em2": [(m, "bad_signature", 2), (m + 500, "bad_signature", 2)],  # two apart: not a burst
        "em3": [(m, "future_timestamp", 50)],
    }  # the clock rule's business
    found = detect_hostile([info(d, "electricity") for d in rejects], rejects, now)
    f = one(found, "hostile", "em1")
    assert len(found) == 1
    assert f.evidence == (("em1", 0),) and f.severity == "high"  # a replay: someone holds a signed copy
    assert (f.window_start, f.window_end) == (m * MIN, (m + 31) * MIN) and f.key == "hostile:em1"


# ---------------------------------------------------------------- parking


def bay(
    device: str, states: Sequence[tuple[float, int]], *, until: float | None = None, heartbeat: float = 2.5
) -> list[Obs]:
    """Reports of a bay: (hours from T0, state) changes, with heartbeats repeating the state in between
    (after the last change, up to `until` hours)."""
    out: list[Obs] = []
    ends = [at for at, _ in states[1:]] + [until if until is not None else states[-1][0] + heartbeat / 2]
    for (at, state), end in zip(states, ends):
        t = at
        while t < end:
            out.append(Obs(device, len(out) + 1, T0 + int(t * HOUR), state, T0 + int(t * HOUR) + 300))
            t += heartbeat
    return out


def test_a_space_occupied_for_days_is_an_overstay() -> None:
    readings = {"ps1": bay("ps1", [(0, 0), (10, 1), (50, 0), (52, 1), (54, 0)])}
    found = detect_parking_overstays([info("ps1", "parking")], readings, T0 + 3 * DAY)
    f = one(found, "parking_overstay", "ps1")
    first = next(o for o in readings["ps1"] if o.value == 1)
    freed = next(o for o in readings["ps1"] if o.ts == T0 + 50 * HOUR)
    assert (f.window_start, f.window_end) == (T0 + 10 * HOUR, T0 + 50 * HOUR)
    assert f.key == f"parking_overstay:ps1:{first.seq}"
    assert f.evidence[0] == ("ps1", first.seq) and f.evidence[-1] == ("ps1", freed.seq)
    assert f.severity == "medium" and f.account is None


def test_an_ongoing_overstay_keeps_its_key_as_it_grows() -> None:
    readings = {"ps1": bay("ps1", [(0, 0), (10, 1)], until=60)}
    cut = [o for o in readings["ps1"] if o.ts <= T0 + 45 * HOUR]
    early = detect_parking_overstays([info("ps1", "parking")], {"ps1": cut}, T0 + 45 * HOUR)
    late = detect_parking_overstays([info("ps1", "parking")], readings, T0 + 60 * HOUR)
    assert early[0].key == late[0].key and "still occupied" in late[0].detail
    assert early[0].window_end < late[0].window_end


def test_a_stay_is_only_as_long_as_the_readings_that_witness_it() -> None:
    # Occupied at 10 h, heartbeats to 20 h, then a day and a half of silence, then occupied again.
    readings = {"ps1": bay("ps1", [(0, 0), (10, 1)], until=20) + bay("ps1", [(56, 1)], until=70)}
    readings["ps1"] = [replace(o, seq=i + 1) for i, o in enumerate(readings["ps1"])]
    assert detect_parking_overstays([info("ps1", "parking")], readings, T0 + 70 * HOUR) == []


def test_a_night_parked_car_is_lawful_unless_a_daytime_limit_is_set() -> None:
    # 20:00 to 08:00 the next morning (two daytime hours), then 10:00 to 16:00 (six).
    readings = {"ps1": bay("ps1", [(0, 0), (20, 1), (32, 0), (34, 1), (40, 0)])}
    devices = [info("ps1", "parking")]
    assert detect_parking_overstays(devices, readings, T0 + 2 * DAY) == []
    strict = AnomalyConfig(parking_daytime_limit_ms=4 * HOUR)
    found = detect_parking_overstays(devices, readings, T0 + 2 * DAY, config=strict)
    assert [(f.window_start, f.window_end) for f in found] == [(T0 + 34 * HOUR, T0 + 40 * HOUR)]


def test_a_sensor_flipping_every_reading_flickers_and_traffic_does_not() -> None:
    flicker = [(i * 0.25, i % 2) for i in range(20)] + [(6, 0)]  # five hours of flipping every 15 min
    busy = [(i * 0.75, i % 2) for i in range(20)]  # cars coming and going every 45 min
    readings = {"ps1": bay("ps1", flicker), "ps2": bay("ps2", busy)}
    found = detect_parking_flicker([info("ps1", "parking"), info("ps2", "parking")], readings, T0 + DAY)
    f = one(found, "parking_flicker", "ps1")
    assert len(found) == 1 and f.key == "parking_flicker:ps1"
    assert f.window_start == T0 + 15 * MIN and f.window_end == T0 + int(4.75 * HOUR)  # first to last quick flip
    ledgered(readings, f)


# ---------------------------------------------------------------- registers anywhere in the protocol's range


def _shifted(readings: dict[str, list[Obs]], to_top: bool) -> dict[str, list[Obs]]:
    """Every register moved up by one constant, so that the largest is 2^63-1 (the protocol's limit)."""
    if not to_top:
        return readings
    k = 2**63 - 1 - max(o.value for obs in readings.values() for o in obs)
    return {d: [replace(o, value=o.value + k) for o in obs] for d, obs in readings.items()}


def _what(findings: Sequence[Finding]) -> list[tuple[object, ...]]:
    """A finding without its sentence (which quotes the registers)."""
    return [(f.type, f.device, f.window_start, f.window_end, f.severity, f.evidence, f.key) for f in findings]


def test_registers_near_2_63_give_the_same_findings_as_near_zero() -> None:
    # Hourly use is a difference of two registers. As floats, registers near 2^63-1 are only known to
    # 1,024 units, so a 10 L/h leak read as 0 or 1,024 L an hour: no leak, and spikes out of nothing.
    leak_from = T0 + 5 * DAY + 12 * HOUR
    spike_at = T0 + 5 * DAY + 10 * HOUR
    readings = {
        "wm1": meter("wm1", lambda ts: household(ts) + (10.0 if ts >= leak_from else 0.0), days=9),
        "wm2": meter("wm2", household, days=9),
        "wm3": meter("wm3", household, days=9),
    }
    rates = {f"em{i}": electricity(i) for i in range(6)}
    rates["em2"] = electricity(2, factor=20.0, since=spike_at, until=spike_at + HOUR)
    readings |= {d: meter(d, r, days=9) for d, r in rates.items()}
    devices = [info(d) for d in ("wm1", "wm2", "wm3")] + [info(d, "electricity") for d in rates]
    low = detect(devices, readings, {}, T0 + 9 * DAY)
    assert {(f.type, f.device) for f in low} == {("leak", "wm1"), ("spike", "em2")}
    assert _what(detect(devices, _shifted(readings, True), {}, T0 + 9 * DAY)) == _what(low)


# ---------------------------------------------------------------- all of them


def small_city() -> tuple[list[DeviceInfo], dict[str, list[Obs]], dict[str, list[tuple[int, str, int]]]]:
    devices = [info(f"wm{i}") for i in range(4)] + [info("em0", "electricity"), info("ps0", "parking")]
    readings = {d.device: meter(d.device, household, days=4) for d in devices if d.kind == "water"}
    readings["wm1"][200:] = [replace(o, value=o.value - 500) for o in readings["wm1"][200:]]  # a rollback
    readings["em0"] = meter("em0", electricity(0), days=2)  # then silent
    readings["ps0"] = bay("ps0", [(0, 0), (5, 1)], until=96)  # occupied since, and still after four days
    rejects = {"wm2": [((T0 + 3 * DAY) // MIN + k, "bad_signature", 1) for k in range(10)]}
    return devices, readings, rejects


def test_detect_runs_every_detector_and_sorts_its_findings() -> None:
    devices, readings, rejects = small_city()
    found = detect(devices, readings, rejects, T0 + 4 * DAY)
    assert [(f.type, f.device) for f in found] == [
        ("rollback", "wm1"),
        ("silent", "em0"),
        ("hostile", "wm2"),
        ("parking_overstay", "ps0"),
    ]
    for f in found:
        assert f.type in TYPES and f.severity in SEVERITIES and f.window_start <= f.window_end
        assert f.district == "d01" and f.detail and f.key.startswith(f"{f.type}:{f.device}")
        ledgered(readings, f)
    assert detect([], {}, {}, T0) == []


def test_running_again_later_gives_the_same_keys() -> None:
    devices, readings, rejects = small_city()
    now = T0 + 4 * DAY
    earlier = {d: [o for o in obs if o.received_at <= now - 3 * HOUR] for d, obs in readings.items()}
    first = detect(devices, earlier, rejects, now - 3 * HOUR)
    later = detect(devices, readings, rejects, now)
    assert {f.key for f in first} == {f.key for f in later}
    grown = {f.key: f for f in later}
    assert all(grown[f.key].window_end >= f.window_end for f in first)


# ---------------------------------------------------------------- fault injection (edge/faults.py)


def test_a_fault_plan_parses_and_refuses_nonsense() -> None:
    plan = FaultPlan.parse("leak=0.02, rollback=0.01,horizon=6h")
    assert dict(plan.rates) == {"leak": 0.02, "rollback": 0.01} and plan.horizon_ms == 6 * HOUR
    assert parse_duration("90s") == 90_000 and parse_duration("2d") == 2 * DAY
    for bad in ("leek=0.1", "leak=2", "leak", "leak=x", "horizon=-1h"):
        with pytest.raises(ValueError):
            FaultPlan.parse(bad)


def test_faults_go_to_the_right_kinds_in_the_right_numbers_and_stay_put() -> None:
    devices = [(f"wm{i}", "water") for i in range(100)] + [(f"ps{i}", "parking") for i in range(100)]
    plan = FaultPlan.parse("leak=0.1,overstay=0.05,dead=0.02,horizon=1d")
    truth = plan.assign(devices, T0, seed=3)
    by_fault: dict[str, list[Fault]] = {}
    for f in truth.values():
        by_fault.setdefault(f.fault, []).append(f)
    assert len(by_fault["leak"]) == 10 and all(f.kind == "water" for f in by_fault["leak"])
    assert len(by_fault["overstay"]) == 5 and all(f.kind == "parking" for f in by_fault["overstay"])
    assert len(by_fault["dead"]) == 4
    assert all(T0 + 6 * HOUR <= f.start <= T0 + 18 * HOUR for f in truth.values() if f.fault != "spike")
    assert plan.assign(devices, T0, seed=3) == truth
    assert plan.assign(devices, T0, seed=4) != truth


def test_the_injector_changes_registers_as_each_fault_says() -> None:
    def run(fault: Fault, kind: str = "water") -> list[int]:
        model = meter_for(kind, device_seed(1, "x"))
        inj = Injector(fault)
        out = []
        for i in range(0, 96):
            m = measure(model, T0 + i * STEP, inj)
            out.append(-1 if m is None else m.value)
        return out

    base = run(Fault("x", "water", "leak", T0 + 10 * DAY, size=20.0))  # never starts within the run
    leak = run(Fault("x", "water", "leak", T0 + 12 * HOUR, size=20.0))
    assert leak[:48] == base[:48] and leak[-1] - base[-1] == pytest.approx(20 * 11.75, abs=1)
    stuck = run(Fault("x", "water", "stuck", T0 + 12 * HOUR))
    assert len(set(stuck[48:])) == 1 and stuck[47] < stuck[48]
    roll = run(Fault("x", "water", "rollback", T0 + 12 * HOUR, size=0.01))
    assert roll[48] < roll[47] and all(b >= a for a, b in zip(roll[48:], roll[49:]))
    dead = run(Fault("x", "water", "dead", T0 + 12 * HOUR))
    assert dead[47] >= 0 and set(dead[48:]) == {-1}


def test_the_injector_skews_clocks_corrupts_signatures_and_holds_bays() -> None:
    ahead = Injector(Fault("x", "water", "clock", T0 + HOUR, size=CLOCK_AHEAD_MS, mode="ahead"))
    assert ahead.stamp(T0) == T0 and ahead.stamp(T0 + 2 * HOUR) == T0 + 2 * HOUR + CLOCK_AHEAD_MS
    back = Injector(Fault("x", "water", "clock", T0 + HOUR, size=2 * HOUR, mode="backwards"))
    stamps = [back.stamp(T0 + i * STEP) for i in range(8)]
    assert stamps[4] == stamps[3] - 2 * HOUR and stamps[5:] == [T0 + i * STEP for i in range(5, 8)]
    sig = Injector(Fault("x", "water", "badsig", T0 + HOUR, T0 + 2 * HOUR))
    assert [sig.corrupt(T0 + k * 30 * MIN) for k in range(6)] == [False, False, True, True, False, False]
    sensor = ParkingSensor(device_seed(1, "bay"))
    hold = Injector(Fault("bay", "parking", "overstay", T0 + HOUR, T0 + 40 * HOUR))
    states = [measure(sensor, T0 + i * STEP, hold) for i in range(4 * 40)]
    assert {m.value for m in states[4:] if m is not None} == {1}


def test_simulate_quarantines_what_ingest_would_and_counts_the_resends() -> None:
    devices = [("wm1", "water", "d01"), ("wm2", "water", "d01"), ("wm3", "water", "d01")]
    faults = {
        "wm1": Fault("wm1", "water", "badsig", T0 + HOUR, T0 + 2 * HOUR),
        "wm2": Fault("wm2", "water", "clock", T0 + HOUR, size=CLOCK_AHEAD_MS, mode="ahead"),
        "wm3": Fault("wm3", "water", "dead", T0 + 3 * HOUR),
    }
    sims = {s.device: s for s in simulate(devices, start=T0, days=0.25, faults=faults)}
    bad = sims["wm1"]
    assert {reason for _, reason in bad.rejects} == {"bad_signature"}
    assert sum(bad.rejects.values()) == 4 * 10  # four readings, each sent 10 times in its first hour
    seqs = [r[0] for r in bad.readings]
    assert len(seqs) == 24 - 4 and max(seqs) == 24  # the corrupted ones leave gaps in the ledgered seqs
    assert {reason for _, reason in sims["wm2"].rejects} == {"future_timestamp"}
    assert all(r[1] < T0 + HOUR for r in sims["wm2"].readings)
    assert sims["wm3"].status == ("offline", T0 + 3 * HOUR + 45_000)
    assert max(r[1] for r in sims["wm3"].readings) < T0 + 3 * HOUR


# ---------------------------------------------------------------- a real fleet with faults


def test_fleet_faults_reach_the_ledger_as_rejects_and_a_last_will(stack: Stack) -> None:
    proc = start(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "fleet",
            "--devices",
            "8",
            "--interval",
            "0.2",
            "--districts",
            "d01",
            "--faults",
            "dead=0.25,badsig=0.25,horizon=4s",
        ],
        env=stack.env,
        stdout=PIPE,
        stderr=PIPE,
        text=True,
    )
    try:
        truth_file = stack.home.fleet / "faults.jsonl"
        wait_for(lambda: truth_file.exists() and truth_file.read_text(), 60, "the fleet's ground truth")
        truth = [json.loads(line) for line in truth_file.read_text().splitlines()]
        dead = {f["device"] for f in truth if f["fault"] == "dead"}
        forged = {f["device"] for f in truth if f["fault"] == "badsig"}
        assert len(dead) == 2 and len(forged) == 2

        def effects_visible() -> bool:
            statuses = {d["device"]: d["online"] for d in stack.api.devices()}
            quarantined = [q["device"] for q in stack.api.quarantine(reason="bad_signature", limit=1000)]
            return all(statuses.get(d) == "offline" for d in dead) and all(quarantined.count(d) >= 5 for d in forged)

        wait_for(effects_visible, 60, "Last Wills of the dead devices and bad signatures of the forged ones")
        scan = stack.api.scan_anomalies(lookback_days=1)
        assert scan["by_type"].get("hostile") == 2, scan
    finally:
        proc.stop(signal.SIGTERM, timeout=60)
        err = proc.err
    assert proc.returncode == 0, err
