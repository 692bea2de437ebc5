"""Anomaly detectors: pure functions over ledgered readings, reject counts and device statuses.

The scheduler runs `detect` every few minutes over the last `lookback_days`, and
an operator can run it on demand; `ledger/anomalies/investigations.py` stores what it
finds. No database and no network here: the inputs are plain data, so every
rule is tested with small hand-made series and measured on a simulated city
(tests/test_anomaly_accuracy.py, figures in docs/anomalies.md).

Every finding carries its evidence as (device, seq) pairs of ledgered readings,
so each claim can be proven with a receipt, and a `key` that stays the same
while the condition lasts, so a detector running again updates its anomaly
instead of raising a second one.

Principles the rules share, and why:

- A device is judged against its own history and its district's peers of the
  same kind, not against fixed numbers alone: households differ threefold in
  size, and the season moves everyone together (gas boilers run all night in a
  Beijing winter).
- Order by seq, not ts, wherever the order of measurements matters: seq is the
  device's own count, ts is whatever its clock said (and a clock can be wrong).
- Time is local where people are involved (the night, daytime parking), epoch
  ms everywhere else.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from ledger.defaults import DEFAULT_TIMEZONE

TYPES = (
    "leak",
    "rollback",
    "spike",
    "zero_consumption",
    "silent",
    "clock",
    "hostile",
    "parking_overstay",
    "parking_flicker",
)
SEVERITIES = ("low", "medium", "high")
METER_KINDS = ("water", "gas", "electricity")

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


# ---------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True, slots=True)
class Obs:
    """One ledgered reading."""

    device: str
    seq: int
    ts: int
    value: int
    received_at: int


@dataclass(frozen=True)
class DeviceInfo:
    """An active device as the registry knows it, with its last status message."""

    device: str
    kind: str
    district: str
    account: str | None
    status: str | None = None  # last "online"/"offline" and when
    status_at: int | None = None
    interval_ms: int | None = None  # expected reporting interval if known (else inferred from data)


@dataclass(frozen=True)
class Finding:
    """One anomaly as a detector sees it now."""

    type: str
    device: str
    account: str | None
    district: str
    window_start: int  # epoch ms
    window_end: int
    severity: str  # "low" | "medium" | "high"
    evidence: tuple[tuple[str, int], ...]  # (device, seq) of ledgered readings; (device, 0): no reading to show
    detail: str  # one sentence for operators
    key: str  # the same ongoing condition keeps the same key


@dataclass(frozen=True)
class AnomalyConfig:
    """Every threshold of every detector; docs/anomalies.md says why each default is what it is."""

    lookback_days: int = 14  # how much history `detect` is given (the query's business; documented here)
    default_interval_ms: int = 15 * MINUTE_MS  # when neither DeviceInfo nor the data tell
    max_gap_intervals: int = 3  # consumption is not interpolated across a longer gap between readings
    evidence_max: int = 12  # readings named per finding at most (the most telling ones)

    # leak: minimum night flow
    night_start_hour: int = 1  # local night window [start, end): nobody showers at 3 a.m.
    night_end_hour: int = 5
    leak_nights: int = 3  # the flow must not stop on any of the last this many nights
    leak_min_flow: float = 4.0  # base units (litres) per hour, below which a night counts as "stopped"
    leak_baseline_nights: int = 3  # earlier nights needed to judge against the device's own history
    leak_z: float = 4.0  # the rise, in robust standard deviations of the device's night-to-night noise
    leak_min_sigma: float = 0.05  # floor of that noise (a very steady meter is not infinitely sure)
    leak_own_rise: float = 0.5  # and at least this fraction above what its earlier nights predict
    leak_peer_ratio: float = 3.0  # ...or every recent night this many times the district's night flow (+ min flow)
    leak_high_flow: float = 30.0  # water litres per hour from which a leak is "high" (gas is always high)
    # leak: continuous flow (what utility portals call a leak): water that never stopped for a whole window
    continuous_flow_hours: int = 24  # every hour of the last this many used more than...
    continuous_min_flow: float = 0.0  # ...this many base units (litres): a day without one still hour

    # peers: a device is compared with the other meters of its district and kind, never with itself,
    # and only when there are at least this many of them (fewer say more about themselves than the norm)
    peer_min: int = 3

    # spike: one hour against the same local hour on the device's other days, and against its peers that hour
    spike_z: float = 3.0  # robust z of log consumption: (log x - median) / (1.4826 * MAD)
    spike_min_sigma: float = 0.2  # floor of that sigma (a very regular meter is not infinitely sure)
    spike_own_ratio: float = 8.0  # x at least this many times the device's usual (median) for that hour
    spike_peer_ratio: float = 4.0  # and this many times the district peers' median that same hour
    spike_peer_floor: float = 1.0  # peers' median taken as at least this many base units (empty night hours)
    spike_min_units: float = 20.0  # and the hour's excess at least this many base units
    spike_max_hours: int = 4  # longer elevations are a change of level (a leak, a new tenant), not a spike
    spike_context_hours: int = 6  # the hours either side of a spike...
    spike_context_share: float = 0.2  # ...must be ordinary: their median excess below this share of the peak's
    spike_high_ratio: float = 25.0  # severity high from this many times usual

    # zero consumption
    zero_days: float = 2.0  # an occupied account's register flat for this long
    zero_min_readings: int = 8  # and confirmed by at least this many readings
    zero_high_days: float = 7.0  # severity high from here (a bill the customer will dispute)

    # silent
    silent_intervals: int = 8  # no reading (and no reject) for this many intervals
    parking_heartbeat_intervals: int = 10  # a quiet bay sensor repeats its state this often
    parking_silent_heartbeats: int = 3  # a bay sensor is silent after this many missed heartbeats
    silent_offline_grace_ms: int = 30 * MINUTE_MS  # `offline` not followed by `online` (or a reading) this long
    silent_high_ms: int = DAY_MS  # severity high from here (someone has to go out to it)

    # clock
    clock_skew_ms: int = 10 * MINUTE_MS  # readings consistently received this much after their ts
    clock_skew_intervals: float = 2.0  # ...and this many intervals (a backlog's freshest reading is up to one late)
    clock_window_ms: int = 12 * HOUR_MS  # the skew must hold for every reading received in this window
    clock_min_readings: int = 4
    clock_ahead_ms: int = 2 * MINUTE_MS  # ledgered readings all stamped this far ahead of receipt
    clock_future_rejects: int = 1  # readings quarantined as future_timestamp
    clock_backwards_ms: int = 0  # a ts more than this before the previous seq's ts

    # hostile traffic
    hostile_reasons: tuple[str, ...] = ("bad_signature", "replay", "topic_mismatch", "malformed", "too_large")
    hostile_window_minutes: int = 120
    hostile_min_rejects: int = 5  # rejects of those reasons within one window
    hostile_high_rejects: int = 100  # from this many (or any replay) the severity is high

    # parking
    parking_max_stay_ms: int = 30 * HOUR_MS  # a day, a night and more: abandoned, or a sensor stuck on "occupied"
    parking_daytime_limit_ms: int | None = None  # optional: also flag stays with more daytime than this
    parking_day_start_hour: int = 7  # daytime as parking is charged (docs/billing.md)
    parking_day_end_hour: int = 21
    parking_high_stay_ms: int = 48 * HOUR_MS
    flicker_window_ms: int = 3 * HOUR_MS
    flicker_min_flips: int = 10  # state changes within one window
    flicker_max_state_ms: int = 20 * MINUTE_MS  # ...each state lasting at most this (a parked car stays longer)
    flicker_medium_flips: int = 30  # severity medium from this many in one episode (else low)


# ---------------------------------------------------------------- shared helpers


@dataclass
class _Series:
    """One device's readings in seq order, and the same without readings stamped before their predecessor."""

    obs: list[Obs]  # seq order, all
    clean: list[Obs] = field(default_factory=list)  # seq order, ts strictly increasing
    ts: list[int] = field(default_factory=list)  # of clean


def _series(readings: Sequence[Obs]) -> _Series:
    obs = sorted(readings, key=lambda o: o.seq)
    clean: list[Obs] = []
    for o in obs:
        if not clean or o.ts > clean[-1].ts:
            clean.append(o)
    return _Series(obs, clean, [o.ts for o in clean])


@lru_cache(maxsize=4096)
def _offset_ms(tz: str, hour: int) -> int:
    """UTC offset of `tz` during the UTC hour `hour` (epoch hours), in ms."""
    at = datetime.fromtimestamp(hour * 3600, tz=UTC).astimezone(ZoneInfo(tz))
    off = at.utcoffset()
    return int(off.total_seconds() * 1000) if off is not None else 0


def local_hour(ts: int, tz: str) -> int:
    """The local hour of the day, 0..23."""
    return (ts + _offset_ms(tz, ts // HOUR_MS)) % DAY_MS // HOUR_MS


def local_day(ts: int, tz: str) -> int:
    """A number for the local calendar day (days since the epoch, local)."""
    return (ts + _offset_ms(tz, ts // HOUR_MS)) // DAY_MS


def _local_midnight(day: int, tz: str) -> int:
    """Epoch ms of local midnight starting local day `day`."""
    guess = day * DAY_MS
    return guess - _offset_ms(tz, guess // HOUR_MS)


def _cadence(info: DeviceInfo, s: _Series, config: AnomalyConfig) -> int:
    """The device's measuring interval: as registered, else inferred from the gaps between its readings.

    A meter reports every interval, so the median gap is its interval. A bay
    sensor reports changes plus a heartbeat every `parking_heartbeat_intervals`
    quiet intervals, so its longer gaps are heartbeats: the 90th percentile gap
    over the heartbeat count.
    """
    if info.interval_ms:
        return info.interval_ms
    gaps = sorted(b - a for a, b in zip(s.ts, s.ts[1:]) if b > a)
    if info.kind == "parking":
        if len(gaps) < 10:
            return config.default_interval_ms
        return max(1, gaps[int(0.9 * (len(gaps) - 1))] // config.parking_heartbeat_intervals)
    return int(statistics.median(gaps)) if len(gaps) >= 4 else config.default_interval_ms


def _register_at(s: _Series, t: int, max_gap: int) -> tuple[int, float, int, int] | None:
    """The register at `t`, linear between the clean readings either side: (reading, part, i_before, i_after),
    the register being the reading's value plus the part of the step to the next one.

    Kept in two pieces because a register may be anywhere up to 2^63-1 (PROTOCOL.md): as
    one float, a register near there is only known to 1,024 units, and an hour's use
    (a difference of two) came out as 0 or 1,024 litres. The readings' values subtract
    exactly as integers; only the parts, at most one step's use, are floats.
    None outside the readings, across a gap longer than `max_gap`, or across a drop.
    """
    i = bisect.bisect_right(s.ts, t) - 1
    if i < 0:
        return None
    a = s.clean[i]
    if a.ts == t:
        return a.value, 0.0, i, i
    if i + 1 >= len(s.clean):
        return None
    b = s.clean[i + 1]
    if b.ts - a.ts > max_gap or b.value < a.value:
        return None
    return a.value, (b.value - a.value) * (t - a.ts) / (b.ts - a.ts), i, i + 1


def _hourly(s: _Series, start: int, end: int, max_gap: int) -> list[tuple[int, float, int, int] | None]:
    """Consumption per hour [h, h+1) from `start` (an hour boundary) to `end`: (hour start, units, i0, i1).

    i0 and i1 are the clean readings the two boundary values rest on (the evidence).
    An hour that cannot be measured (gap, drop, outside the readings) is None.
    """
    out: list[tuple[int, float, int, int] | None] = []
    prev = _register_at(s, start, max_gap)
    h = start
    while h + HOUR_MS <= end:
        nxt = _register_at(s, h + HOUR_MS, max_gap)
        if prev is None or nxt is None or (used := (nxt[0] - prev[0]) + (nxt[1] - prev[1])) < 0:
            out.append(None)
        else:
            out.append((h, used, prev[2], nxt[3]))
        prev = nxt
        h += HOUR_MS
    return out


def _hour_floor(ts: int) -> int:
    return ts // HOUR_MS * HOUR_MS


def _evidence(device: str, seqs: Iterable[int], limit: int) -> tuple[tuple[str, int], ...]:
    """(device, seq) pairs, each once, in seq order, at most `limit` (the first and the last kept)."""
    unique = sorted(set(seqs))
    if len(unique) > limit:
        unique = unique[: limit - 1] + unique[-1:]
    return tuple((device, q) for q in unique)


def _finding(
    info: DeviceInfo,
    type: str,
    start: int,
    end: int,
    severity: str,
    evidence: tuple[tuple[str, int], ...],
    detail: str,
    key: str | None = None,
) -> Finding:
    return Finding(
        type,
        info.device,
        info.account,
        info.district,
        start,
        end,
        severity,
        evidence or ((info.device, 0),),
        detail,
        key or f"{type}:{info.device}",
    )


def median_without(ordered: Sequence[float], own: float | None, least: int) -> float | None:
    """The median of `ordered` (sorted) with one value `own` left out: the peers of the device whose
    value it is (None: it has none there). None when fewer than `least` peers remain."""
    m = len(ordered) - (own is not None)
    if m < max(1, least):
        return None
    skip = bisect.bisect_left(ordered, own) if own is not None else len(ordered)

    def at(j: int) -> float:
        return ordered[j + (1 if j >= skip else 0)]

    return at(m // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2


def _mad_sigma(values: Sequence[float], centre: float) -> float:
    """1.4826 x the median absolute deviation: a standard deviation that outliers do not inflate."""
    return 1.4826 * statistics.median(abs(v - centre) for v in values)


def _by_district_kind(devices: Iterable[DeviceInfo]) -> dict[tuple[str, str], list[DeviceInfo]]:
    groups: dict[tuple[str, str], list[DeviceInfo]] = {}
    for d in devices:
        groups.setdefault((d.district, d.kind), []).append(d)
    return groups


def _series_of(readings: Mapping[str, Sequence[Obs]], devices: Iterable[DeviceInfo]) -> dict[str, _Series]:
    return {d.device: _series(readings.get(d.device, ())) for d in devices}


# ---------------------------------------------------------------- leak


@dataclass(frozen=True)
class _Night:
    """One local night window: its smallest hourly flow, its mean flow, and the readings they rest on."""

    start: int
    end: int
    floor: float  # the smallest hourly flow (units/h): does the flow ever stop?
    level: float  # the mean flow over the window (units/h): less noisy, for comparisons
    seqs: tuple[int, ...]  # the readings the floor hour rests on


def _nights(s: _Series, now: int, tz: str, config: AnomalyConfig, max_gap: int) -> list[_Night]:
    """Every complete local night window in the readings, oldest first (nights with an unmeasured hour left out)."""
    if not s.clean:
        return []
    out = []
    first, last = local_day(s.ts[0], tz), local_day(min(now, s.ts[-1]), tz)
    for day in range(first, last + 1):
        midnight = _local_midnight(day, tz)
        lo, hi = midnight + config.night_start_hour * HOUR_MS, midnight + config.night_end_hour * HOUR_MS
        if lo < s.ts[0] or hi > s.ts[-1] or hi > now:
            continue
        hours = _hourly(s, lo, hi, max_gap)
        measured = [h for h in hours if h is not None]
        if not measured or len(measured) < len(hours):
            continue
        _, flow, i0, i1 = min(measured, key=lambda h: h[1])
        level = sum(h[1] for h in measured) / len(measured)
        out.append(_Night(lo, hi, flow, level, (s.clean[i0].seq, s.clean[i1].seq)))
    return out


def detect_leaks(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """Water or gas that never stops flowing at night, judged by the minimum night flow over several nights.

    A household's taps are shut between 01:00 and 05:00, so the smallest hourly
    flow of that window is the night's floor. A leak is a floor that has not
    dropped below `leak_min_flow` on any night since some night c (at least
    `leak_nights` nights, up to the latest): consumption without a break. And
    the night flow must stand out, either

    - from the device's own nights before c (a leak that began within the
      look-back): a change-point test on the log of the night's mean flow
      relative to its district's median that night. The district divides out
      the season (the first frost starts every gas boiler at once); the test
      asks for `leak_z` robust standard deviations of the device's own
      night-to-night noise and a rise of `leak_own_rise`; or
    - from its district's peers on each of the last nights (`leak_peer_ratio`):
      a leak older than the look-back.
    """
    candidates = [d for d in devices if d.kind in ("water", "gas")]
    series = _series_of(readings, candidates)
    nights = {
        d.device: _nights(
            series[d.device], now, tz, config, config.max_gap_intervals * _cadence(d, series[d.device], config)
        )
        for d in candidates
    }
    out: list[Finding] = []
    for (_, kind), group in _by_district_kind(candidates).items():
        per_night: dict[int, list[float]] = {}
        for d in group:
            for n in nights[d.device]:
                per_night.setdefault(n.start, []).append(n.level)
        ordered = {start: sorted(levels) for start, levels in per_night.items()}
        for d in group:
            mine = nights[d.device]
            peers = {n.start: median_without(ordered[n.start], n.level, config.peer_min) for n in mine}
            found = _leak_of(mine, peers, config)
            if found is None:
                if kind == "water":
                    out.extend(_continuous_flow(d, series[d.device], now, config))
                continue
            since, rule, level, expected = found
            last = nights[d.device][since:]
            floor = min(n.floor for n in last)
            high = kind == "gas" or floor >= config.leak_high_flow
            why = (
                f"about {expected:.0f}/h expected from its own earlier nights"
                if rule == "own"
                else f"{expected:.0f}/h for its district's {kind} meters"
            )
            detail = (
                f"{kind} has not stopped flowing on any of the last {len(last)} nights: never below "
                f"{floor:.0f}/h between {config.night_start_hour:02d}:00 and {config.night_end_hour:02d}:00, "
                f"about {level:.0f}/h on average, against {why}"
            )
            shown = last[-config.evidence_max // 2 :]  # two readings per night: the latest nights
            out.append(
                _finding(
                    d,
                    "leak",
                    last[0].start,
                    last[-1].end,
                    "high" if high else "medium",
                    _evidence(d.device, (q for n in shown for q in n.seqs), config.evidence_max),
                    detail,
                )
            )
    return out


def _leak_of(
    ns: list[_Night], peers: Mapping[int, float | None], config: AnomalyConfig
) -> tuple[int, str, float, float] | None:
    """(index of the first leaking night, "own" or "peers", mean flow since, what was expected) or None.

    `peers`: each night's median of the other meters (None: too few that night). Without peers on
    every night, the device is judged against its own nights alone, and the peers rule is not used."""
    k, floor = config.leak_nights, config.leak_min_flow
    with_peers = all(v is not None for v in peers.values())
    district = {start: (v if with_peers and v is not None else 0.0) for start, v in peers.items()}
    unbroken = len(ns)
    while unbroken > 0 and ns[unbroken - 1].floor >= floor:
        unbroken -= 1
    if len(ns) - unbroken < k:
        return None  # on some recent night the flow stopped: no leak
    # The night's flow relative to the district's, in logs (offset by the floor so that empty nights are 0).
    rel = [math.log((n.level + floor) / (district[n.start] + floor)) for n in ns]
    steps = [abs(b - a) for a, b in zip(rel, rel[1:])]
    # Night-to-night noise: a median is not moved by the one step a leak makes.
    sigma = max(config.leak_min_sigma, 1.4826 * statistics.median(steps) / math.sqrt(2)) if steps else 1.0
    best: tuple[float, int, float, float] | None = None  # (step of the means, c, level, expected)
    for c in range(max(unbroken, config.leak_baseline_nights), len(ns) - k + 1):
        before, after = rel[:c], rel[c:]
        rise = statistics.median(after) - statistics.median(before)  # medians: one odd night moves nothing
        z = rise / (sigma * math.sqrt(1 / len(before) + 1 / len(after)))
        expected = statistics.median(
            (district[n.start] + floor) * math.exp(statistics.median(before)) - floor for n in ns[c:]
        )
        level = statistics.median(n.level for n in ns[c:])
        if z >= config.leak_z and rise >= math.log1p(config.leak_own_rise) and level - expected >= floor:
            # Several splits pass; the onset is where the means step most (a mixed segment steps less).
            step = statistics.fmean(after) - statistics.fmean(before)
            if best is None or step > best[0]:
                best = (step, c, level, max(0.0, expected))
    if best is not None:
        return best[1], "own", best[2], best[3]
    last = ns[-k:]
    if with_peers and all(n.level >= config.leak_peer_ratio * district[n.start] + floor for n in last):
        return (
            len(ns) - k,
            "peers",
            statistics.median(n.level for n in last),
            statistics.median(district[n.start] for n in last),
        )
    return None


def _continuous_flow(d: DeviceInfo, s: _Series, now: int, config: AnomalyConfig) -> list[Finding]:
    """Water that used something in every hour of the last `continuous_flow_hours`: the rule utility
    portals call a leak. A household has some still hour in a day; a running toilet or a burst pipe
    does not. It needs no peers and no history before the window, so a new or lone meter is judged."""
    if len(s.clean) < 2:
        return []
    gap = config.max_gap_intervals * _cadence(d, s, config)
    end = _hour_floor(min(now, s.ts[-1]))
    start = end - config.continuous_flow_hours * HOUR_MS
    hours = _hourly(s, start, end, gap)
    if not hours or any(h is None or h[1] <= config.continuous_min_flow for h in hours):
        return []  # an hour unmeasured, or a still one: no finding
    measured = [h for h in hours if h is not None]
    low = min(measured, key=lambda h: h[1])
    mean = sum(h[1] for h in measured) / len(measured)
    seqs = (s.clean[low[2]].seq, s.clean[low[3]].seq, s.clean[measured[0][2]].seq, s.clean[measured[-1][3]].seq)
    detail = (
        f"water has flowed in every hour of the last {config.continuous_flow_hours} h: never below "
        f"{low[1]:.1f}/h, about {mean:.1f}/h on average (a household has some hour without any use)"
    )
    severity = "high" if low[1] >= config.leak_high_flow else "medium"
    return [_finding(d, "leak", start, end, severity, _evidence(d.device, seqs, config.evidence_max), detail)]


# ---------------------------------------------------------------- register rollback


def detect_rollbacks(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
    *,
    replacements: Mapping[str, Sequence[tuple[int, int, int]]] | None = None,
) -> list[Finding]:
    """A cumulative register going down: tampering, or a meter replaced without the operator recording it.

    Judged in seq order (a clock stepping back does not make a register fall).
    Drops explained by a recorded replacement (ts, old_final, new_initial) are
    left out. Each drop is its own anomaly, keyed by the seq after it.
    """
    out = []
    for d in devices:
        if d.kind not in METER_KINDS:
            continue
        obs = sorted(readings.get(d.device, ()), key=lambda o: o.seq)
        recorded = (replacements or {}).get(d.device, ())
        for a, b in zip(obs, obs[1:]):
            if b.value >= a.value:
                continue
            if any(a.ts < ts <= b.ts for ts, _, _ in recorded):
                continue
            detail = (
                f"register fell from {a.value} to {b.value} ({a.value - b.value} units) between seq {a.seq} "
                f"and {b.seq}, with no recorded meter replacement"
            )
            out.append(
                _finding(
                    d,
                    "rollback",
                    a.ts,
                    b.ts,
                    "high",
                    ((d.device, a.seq), (d.device, b.seq)),
                    detail,
                    key=f"rollback:{d.device}:{b.seq}",
                )
            )
    return out


# ---------------------------------------------------------------- spike


def detect_spikes(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """An hour's consumption far above the device's own history and far above its district's peers.

    Own history: the same local hour on the device's other days, in logs
    (median and MAD, so one odd day does not move the bar); days on which the
    meter did not move at all are not history (a stuck or vacant spell would
    make every ordinary hour look enormous). Peers: the median of the district's
    meters of the same kind in that same hour. Only short elevations count
    (`spike_max_hours`), with ordinary hours around them; extra units that run
    on are a change of level, which the leak rule or an operator judges. A
    device whose clock runs systematically off (the clock rule) is not judged
    hour by hour at all: its hours are not the hours it claims.
    """
    meters = [d for d in devices if d.kind in METER_KINDS]
    series = _series_of(readings, meters)
    skewed = _skews(meters, series, now, config)
    start = _hour_floor(now - config.lookback_days * DAY_MS)
    end = _hour_floor(now)
    hours: dict[str, list[tuple[int, float, int, int] | None]] = {}
    for d in meters:
        s = series[d.device]
        if len(s.clean) < 2:
            continue
        gap = config.max_gap_intervals * _cadence(d, s, config)
        lo = max(start, _hour_floor(s.ts[0]) + HOUR_MS)
        before: list[tuple[int, float, int, int] | None] = [None] * ((lo - start) // HOUR_MS)
        hours[d.device] = before + _hourly(s, lo, end, gap)
    n_hours = (end - start) // HOUR_MS
    out: list[Finding] = []
    for (_, _kind), group in _by_district_kind(meters).items():
        present = [d for d in group if d.device in hours]
        ordered = [sorted(h[1] for d in present if (h := hours[d.device][k]) is not None) for k in range(n_hours)]
        for d in present:
            if d.device not in skewed:
                mine = hours[d.device]
                peer_median = [
                    median_without(ordered[k], h[1] if (h := mine[k]) is not None else None, config.peer_min)
                    for k in range(n_hours)
                ]
                out.extend(_spikes_of(d, series[d.device], mine, peer_median, tz, config))
    return out


def _spikes_of(
    d: DeviceInfo,
    s: _Series,
    hours: list[tuple[int, float, int, int] | None],
    peer_median: list[float | None],
    tz: str,
    config: AnomalyConfig,
) -> list[Finding]:
    daily: dict[int, float] = {}
    for h in hours:
        if h is not None:
            day = local_day(h[0], tz)
            daily[day] = daily.get(day, 0.0) + h[1]
    known = [h for h in hours if h is not None and daily[local_day(h[0], tz)] > 0]  # days the meter moved
    if len(known) < 48:
        return []  # two days are too little history to call anything unusual
    day_median = statistics.median(h[1] for h in known)
    offset = max(1.0, 0.1 * day_median)  # logs of near-empty hours must not explode
    logs: dict[int, list[float]] = {}
    for h in known:
        logs.setdefault(local_hour(h[0], tz), []).append(math.log(h[1] + offset))
    usual: dict[int, tuple[float, float]] = {}  # local hour -> (median log, robust sigma of logs)
    for hod, vals in logs.items():
        med = statistics.median(vals)
        usual[hod] = (med, max(config.spike_min_sigma, _mad_sigma(vals, med)))

    def ratio(k: int) -> float:
        """This hour against the device's usual for its local hour (1.0 when unknown)."""
        h = hours[k]
        if h is None or local_hour(h[0], tz) not in usual:
            return 1.0
        med, _ = usual[local_hour(h[0], tz)]
        return (h[1] + offset) / math.exp(med)

    def excess(k: int) -> float:
        """This hour's units above the device's usual for its local hour."""
        h = hours[k]
        assert h is not None
        return h[1] + offset - math.exp(usual[local_hour(h[0], tz)][0]) if local_hour(h[0], tz) in usual else 0.0

    def elevated(k: int) -> bool:
        h = hours[k]
        if h is None or peer_median[k] is None or local_hour(h[0], tz) not in usual:
            return False
        x = h[1]
        med, sigma = usual[local_hour(h[0], tz)]
        peer = max(peer_median[k] or 0.0, config.spike_peer_floor)
        return (
            math.log(x + offset) - med >= config.spike_z * sigma
            and ratio(k) >= config.spike_own_ratio
            and x >= config.spike_peer_ratio * peer
            and x - math.exp(med) >= config.spike_min_units
        )

    flags = [elevated(k) for k in range(len(hours))]
    out = []
    k = 0
    while k < len(hours):
        if not flags[k]:
            k += 1
            continue
        j = k
        while j + 1 < len(hours) and flags[j + 1]:
            j += 1
        context = [
            excess(i)
            for i in range(max(0, k - config.spike_context_hours), min(len(hours), j + 1 + config.spike_context_hours))
            if not k <= i <= j and hours[i] is not None
        ]
        peak = max(excess(i) for i in range(k, j + 1))
        # A spike is brief: the hours around it are ordinary. Extra units that also run through the
        # hours around it are a change of level (a leak adds the same litres every hour), not a spike.
        if j - k + 1 <= config.spike_max_hours and (
            not context or statistics.median(context) < config.spike_context_share * peak
        ):
            out.append(_spike_finding(d, s, hours[k : j + 1], max(ratio(i) for i in range(k, j + 1)), tz, config))
        k = j + 1
    return out


def _spike_finding(
    d: DeviceInfo,
    s: _Series,
    run: list[tuple[int, float, int, int] | None],
    ratio: float,
    tz: str,
    config: AnomalyConfig,
) -> Finding:
    hours = [h for h in run if h is not None]
    total = sum(h[1] for h in hours)
    seqs = [s.clean[i].seq for h in hours for i in range(h[2], h[3] + 1)]
    severity = "high" if ratio >= config.spike_high_ratio else "medium"
    detail = (
        f"{total:.0f} units in {len(run)} h from {_hhmm(hours[0][0], tz)}, up to {ratio:.0f} times the "
        f"device's usual for that hour of the day and far above its district's {d.kind} meters"
    )
    return _finding(
        d,
        "spike",
        hours[0][0],
        hours[-1][0] + HOUR_MS,
        severity,
        _evidence(d.device, seqs, config.evidence_max),
        detail,
        key=f"spike:{d.device}:{hours[0][0]}",
    )


def _hhmm(ts: int, tz: str) -> str:
    return datetime.fromtimestamp(ts / 1000, tz=ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


# ---------------------------------------------------------------- zero consumption


def detect_zero_consumption(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """An occupied account whose meter keeps reporting but stops advancing for days.

    Occupied means the meter has an account. The flat stretch runs from the
    first reading with the final value to the last reading (a device that
    stopped reporting is `silent`, not this). Even an empty flat's fridge and
    standby keep an electricity meter moving; a water meter idle for two days
    in a lived-in home is a stuck meter, a bypass, or a vacancy nobody recorded.
    """
    out = []
    for d in devices:
        if d.kind not in METER_KINDS or d.account is None:
            continue
        obs = sorted(readings.get(d.device, ()), key=lambda o: o.seq)
        if len(obs) < config.zero_min_readings:
            continue
        last = obs[-1]
        i = len(obs) - 1
        while i > 0 and obs[i - 1].value == last.value:
            i -= 1
        first = obs[i]
        flat_ms = last.ts - first.ts
        if flat_ms < config.zero_days * DAY_MS or len(obs) - i < config.zero_min_readings:
            continue
        seqs = [first.seq, last.seq] + ([obs[i - 1].seq] if i > 0 else [])
        days = flat_ms / DAY_MS
        detail = (
            f"register stayed at {last.value} for {days:.1f} days over {len(obs) - i} readings "
            f"(seq {first.seq} to {last.seq}) on an occupied account"
        )
        severity = "high" if days >= config.zero_high_days else "medium"
        out.append(
            _finding(
                d,
                "zero_consumption",
                first.ts,
                last.ts,
                severity,
                _evidence(d.device, seqs, config.evidence_max),
                detail,
            )
        )
    return out


# ---------------------------------------------------------------- silent


def detect_silent(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    rejects: Mapping[str, Sequence[tuple[int, str, int]]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
    *,
    lag_ms: int = 0,
) -> list[Finding]:
    """No reading for too many intervals, or an `offline` status that no `online` followed.

    "Heard from" counts rejected messages too: a device whose readings are all
    quarantined is not silent, it is failing, and the clock or hostile rule
    names how. A bay sensor reports on change plus a heartbeat every
    `parking_heartbeat_intervals`, so its limit is counted in heartbeats.
    `lag_ms` is how far behind ingest is (ledger.health.silence_margin_ms): while
    it is behind, the ledger hears from every device late, and the limit grows by it.
    """
    out = []
    for d in devices:
        s = _series(readings.get(d.device, ()))
        last_obs = max(s.obs, key=lambda o: o.received_at) if s.obs else None
        heard_at = [m * MINUTE_MS + MINUTE_MS - 1 for m, _, _ in rejects.get(d.device, ())]
        if last_obs is not None:
            heard_at.append(last_obs.received_at)
        heard = max(heard_at, default=None)
        cadence = _cadence(d, s, config)
        limit = (
            config.parking_silent_heartbeats * config.parking_heartbeat_intervals * cadence
            if d.kind == "parking"
            else config.silent_intervals * cadence
        )
        offline = (
            d.status == "offline"
            and d.status_at is not None
            and now - d.status_at >= config.silent_offline_grace_ms
            and (heard is None or heard <= d.status_at)
        )
        if not offline and heard is not None and now - heard <= limit + lag_ms:
            continue
        since = heard if heard is not None else now - config.lookback_days * DAY_MS
        if offline and d.status_at is not None:
            since = d.status_at if heard is None else min(heard, d.status_at)
        hours = (now - since) / HOUR_MS
        why = (
            f"went offline {hours:.1f} h ago (its Last Will) and has not come back"
            if offline
            else f"has not been heard from for {hours:.1f} h (limit {limit / HOUR_MS:.1f} h)"
        )
        shown = "its last reading" if last_obs else "no reading in the look-back"
        evidence = ((d.device, last_obs.seq),) if last_obs else ((d.device, 0),)
        severity = "high" if now - since >= config.silent_high_ms else "medium"
        out.append(_finding(d, "silent", since, now, severity, evidence, f"{d.kind} device {why}; evidence: {shown}"))
    return out


# ---------------------------------------------------------------- clock


def detect_clock(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    rejects: Mapping[str, Sequence[tuple[int, str, int]]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """Timestamps far from receive time, or going backwards.

    - Behind: every reading received in the last `clock_window_ms` arrived at
      least the skew limit after its ts. The least delay is what counts,
      because transit and an outbox backlog only ever add delay; and the device
      must lag its district's peers by as much, so an ingest outage is not a
      thousand broken clocks.
    - Ahead: a reading stamped more than five minutes ahead is quarantined by
      ingest (`future_timestamp`), so those rejects are the evidence; a smaller
      lead shows as every recent reading stamped after it was received.
    - Backwards: a reading stamped before the reading with the previous seq.
    """
    series = _series_of(readings, devices)
    skews = _skews(devices, series, now, config)
    out = []
    for d in devices:
        f = _clock_of(d, series[d.device], skews.get(d.device), rejects.get(d.device, ()), now, config)
        if f is not None:
            out.append(f)
    return out


def _skews(
    devices: Sequence[DeviceInfo], series: Mapping[str, _Series], now: int, config: AnomalyConfig
) -> dict[str, tuple[str, int]]:
    """Devices whose recent timestamps are systematically off: device -> ("behind" | "ahead", delay in ms)."""
    lags: dict[str, tuple[int, int]] = {}  # device -> (least, greatest) receive delay in the window
    for d in devices:
        delays = [o.received_at - o.ts for o in series[d.device].obs if o.received_at >= now - config.clock_window_ms]
        if len(delays) >= config.clock_min_readings:
            lags[d.device] = (min(delays), max(delays))
    out: dict[str, tuple[str, int]] = {}
    for group in _by_district_kind(devices).values():
        leasts = sorted(lags[d.device][0] for d in group if d.device in lags)
        greatests = sorted(lags[d.device][1] for d in group if d.device in lags)
        for d in group:
            if d.device not in lags:
                continue
            least, greatest = lags[d.device]
            least_peer = median_without(leasts, least, config.peer_min)
            greatest_peer = median_without(greatests, greatest, config.peer_min)
            limit = max(config.clock_skew_ms, config.clock_skew_intervals * _cadence(d, series[d.device], config))
            # Late receipt is a device's only if its peers were on time (else ingest was down): it needs
            # peers. Timestamps ahead of their receipt cannot come from an outage: peers only confirm.
            if least >= limit and least_peer is not None and least - least_peer >= limit:
                out[d.device] = ("behind", least)
            elif greatest <= -config.clock_ahead_ms and (
                greatest_peer is None or greatest - greatest_peer <= -config.clock_ahead_ms
            ):
                out[d.device] = ("ahead", greatest)
    return out


def _clock_of(
    d: DeviceInfo,
    s: _Series,
    skew: tuple[str, int] | None,
    rejects: Sequence[tuple[int, str, int]],
    now: int,
    config: AnomalyConfig,
) -> Finding | None:
    problems: list[tuple[str, int, int, list[int]]] = []  # (what, from, to, seqs)
    future = sorted((m, c) for m, reason, c in rejects if reason == "future_timestamp")
    n_future = sum(c for _, c in future)
    if future and n_future >= config.clock_future_rejects:
        problems.append(
            (
                f"{n_future} readings quarantined for timestamps more than five minutes ahead",
                future[0][0] * MINUTE_MS,
                future[-1][0] * MINUTE_MS + MINUTE_MS,
                [],
            )
        )
    backwards = [(a, b) for a, b in zip(s.obs, s.obs[1:]) if b.ts < a.ts - config.clock_backwards_ms]
    if backwards:
        a, b = backwards[-1]
        more = f" ({len(backwards)} such steps)" if len(backwards) > 1 else ""
        problems.append(
            (
                f"seq {b.seq} is stamped {(a.ts - b.ts) / MINUTE_MS:.0f} min before seq {a.seq}{more}",
                min(x.ts for pair in backwards for x in pair),
                max(x.ts for pair in backwards for x in pair),
                [x.seq for pair in backwards for x in pair],
            )
        )
    if skew is not None:
        way, delay = skew
        recent = [o for o in s.obs if o.received_at >= now - config.clock_window_ms]
        hours = config.clock_window_ms / HOUR_MS
        what = (
            f"every reading of the last {hours:.0f} h arrived at least {delay / MINUTE_MS:.0f} min after its "
            "timestamp (clock behind)"
            if way == "behind"
            else f"every reading of the last {hours:.0f} h is stamped at least {-delay / MINUTE_MS:.0f} min after it "
            "was received (clock ahead)"
        )
        problems.append((what, recent[0].ts, recent[-1].ts, [recent[0].seq, recent[-1].seq]))
    if not problems:
        return None
    severity = "high" if future else "medium"  # quarantined readings are readings the ledger lacks
    detail = "clock trouble: " + "; ".join(p[0] for p in problems)
    return _finding(
        d,
        "clock",
        min(p[1] for p in problems),
        max(p[2] for p in problems),
        severity,
        _evidence(d.device, (q for p in problems for q in p[3]), config.evidence_max),
        detail,
    )


# ---------------------------------------------------------------- hostile traffic


def detect_hostile(
    devices: Sequence[DeviceInfo],
    rejects: Mapping[str, Sequence[tuple[int, str, int]]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """Bursts of quarantined messages from one device: bad signatures, replays, malformed payloads.

    A healthy device never sends one (its outbox re-sends byte-identical
    readings, which are counted duplicates, not rejects); a few in one window
    mean a forged or cloned device, or a broken one. Future timestamps are the
    clock rule's business and are not counted here.
    """
    out = []
    window = config.hostile_window_minutes
    for d in devices:
        rows = sorted((m, reason, c) for m, reason, c in rejects.get(d.device, ()) if reason in config.hostile_reasons)
        if not rows:
            continue
        minutes = [m for m, _, _ in rows]
        counts = [c for _, _, c in rows]
        peak, total, j = 0, 0, 0
        for i, m in enumerate(minutes):  # sliding window [m - window + 1, m]
            total += counts[i]
            while minutes[j] <= m - window:
                total -= counts[j]
                j += 1
            peak = max(peak, total)
        if peak < config.hostile_min_rejects:
            continue
        by_reason: dict[str, int] = {}
        for _, reason, c in rows:
            by_reason[reason] = by_reason.get(reason, 0) + c
        n = sum(by_reason.values())
        high = n >= config.hostile_high_rejects or "replay" in by_reason
        reasons = ", ".join(f"{c} {r}" for r, c in sorted(by_reason.items(), key=lambda x: -x[1]))
        detail = (
            f"{n} quarantined messages ({reasons}), up to {peak} within {window} minutes: "
            "a forged, cloned or broken device"
        )
        out.append(
            _finding(
                d,
                "hostile",
                minutes[0] * MINUTE_MS,
                minutes[-1] * MINUTE_MS + MINUTE_MS,
                "high" if high else "medium",
                ((d.device, 0),),
                detail,
            )
        )
    return out


# ---------------------------------------------------------------- parking


def _stays(obs: Sequence[Obs], max_gap: int) -> list[tuple[int, int]]:
    """(first, end) index ranges of consecutive readings saying "occupied" (seq order): end is exclusive.

    A stay is only as long as the readings that witness it: a silence longer
    than `max_gap` ends it at the last reading before the silence (at `end` - 1;
    the reading at `end` is then not a "free" one).
    """
    out = []
    i = 0
    while i < len(obs):
        if obs[i].value != 1:
            i += 1
            continue
        j = i + 1
        while j < len(obs) and obs[j].value == 1 and obs[j].ts - obs[j - 1].ts <= max_gap:
            j += 1
        out.append((i, j))
        i = j
    return out


def detect_parking_overstays(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """A space occupied far longer than any zone allows: an abandoned vehicle, or a sensor stuck on "occupied".

    A stay runs from the first reading saying occupied to the reading saying
    free (or, while it lasts, to the latest heartbeat still saying occupied).
    The default limit is one stay of `parking_max_stay_ms`, longer than a night
    and a working day, because overnight parking is lawful and readings taken
    every few minutes cannot tell two cars that follow each other closely from
    one (docs/anomalies.md). A city that wants its daytime zone limit checked
    here too sets `parking_daytime_limit_ms`: then the stay's daytime hours
    (`parking_day_start_hour` to `parking_day_end_hour`, local) count on their own.
    """
    out = []
    for d in devices:
        if d.kind != "parking":
            continue
        s = _series(readings.get(d.device, ()))
        obs = s.obs  # seq order: what the sensor said, in the order it said it
        witnessed = config.parking_silent_heartbeats * config.parking_heartbeat_intervals * _cadence(d, s, config)
        for i, j in _stays(obs, witnessed):
            first = obs[i]
            freed = j < len(obs) and obs[j].value == 0 and obs[j].ts - obs[j - 1].ts <= witnessed
            until = obs[j] if freed else obs[j - 1]
            length = until.ts - first.ts
            daytime = _daytime_ms(first.ts, until.ts, tz, config)
            too_long = length > config.parking_max_stay_ms
            if not (
                too_long or config.parking_daytime_limit_ms is not None and daytime > config.parking_daytime_limit_ms
            ):
                continue
            ongoing = j >= len(obs)
            seqs = [first.seq, obs[j - 1].seq] + ([obs[j].seq] if freed else [])
            day_limit = (config.parking_daytime_limit_ms or 0) / HOUR_MS
            limit = (
                f"limit {config.parking_max_stay_ms / HOUR_MS:.0f} h"
                if too_long
                else f"{daytime / HOUR_MS:.1f} h of it in daytime, limit {day_limit:.1f} h"
            )
            how = " and still occupied" if ongoing else "" if freed else ", then its readings stopped"
            detail = f"space occupied for {length / HOUR_MS:.1f} h from {_hhmm(first.ts, tz)}{how} ({limit})"
            severity = "high" if length >= config.parking_high_stay_ms else "medium"
            out.append(
                _finding(
                    d,
                    "parking_overstay",
                    first.ts,
                    until.ts,
                    severity,
                    _evidence(d.device, seqs, config.evidence_max),
                    detail,
                    key=f"parking_overstay:{d.device}:{first.seq}",
                )
            )
    return out


def _daytime_ms(start: int, end: int, tz: str, config: AnomalyConfig) -> int:
    """How much of [start, end) falls in local daytime (the charged hours)."""
    total = 0
    for day in range(local_day(start, tz), local_day(end, tz) + 1):
        midnight = _local_midnight(day, tz)
        lo = max(start, midnight + config.parking_day_start_hour * HOUR_MS)
        hi = min(end, midnight + config.parking_day_end_hour * HOUR_MS)
        total += max(0, hi - lo)
    return total


def detect_parking_flicker(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
) -> list[Finding]:
    """A bay sensor flipping between occupied and free implausibly fast.

    Counted are flips whose state lasted at most `flicker_max_state_ms`; at
    least `flicker_min_flips` of them inside one `flicker_window_ms` is more
    coming and going than a street bay sees (cars stay minutes to hours).
    """
    out = []
    for d in devices:
        if d.kind != "parking":
            continue
        obs = _series(readings.get(d.device, ())).clean
        flips = [k for k in range(1, len(obs)) if obs[k].value != obs[k - 1].value]
        # (a, k): the flip at k ended a state that the flip at a began, and lasted no time at all.
        fast = [(a, k) for a, k in zip(flips, flips[1:]) if obs[k].ts - obs[a].ts <= config.flicker_max_state_ms]
        best: tuple[int, int] | None = None  # (first, last) index into fast of the densest window
        j = 0
        for i in range(len(fast)):
            while obs[fast[i][1]].ts - obs[fast[j][1]].ts > config.flicker_window_ms:
                j += 1
            if i - j + 1 >= config.flicker_min_flips and (best is None or i - j > best[1] - best[0]):
                best = (j, i)
        if best is None:
            continue
        # The whole episode: extend to every quick flip chained within a window of the densest ones.
        lo, hi = best
        while lo > 0 and obs[fast[lo][1]].ts - obs[fast[lo - 1][1]].ts <= config.flicker_window_ms:
            lo -= 1
        while hi + 1 < len(fast) and obs[fast[hi + 1][1]].ts - obs[fast[hi][1]].ts <= config.flicker_window_ms:
            hi += 1
        start, end = obs[fast[lo][0]], obs[fast[hi][1]]
        n = hi - lo + 1
        detail = (
            f"{n} quick state changes (each state lasting {config.flicker_max_state_ms // MINUTE_MS} min or "
            f"less) between {_hhmm(start.ts, tz)} and {_hhmm(end.ts, tz)}: a faulty sensor, not traffic"
        )
        seqs = [start.seq] + [obs[k].seq for _, k in fast[lo : hi + 1]]
        severity = "medium" if n >= config.flicker_medium_flips else "low"
        out.append(
            _finding(
                d, "parking_flicker", start.ts, end.ts, severity, _evidence(d.device, seqs, config.evidence_max), detail
            )
        )
    return out


# ---------------------------------------------------------------- all of them


def detect(
    devices: Sequence[DeviceInfo],
    readings: Mapping[str, Sequence[Obs]],
    rejects: Mapping[str, Sequence[tuple[int, str, int]]],
    now: int,
    tz: str = DEFAULT_TIMEZONE,
    config: AnomalyConfig = AnomalyConfig(),
    *,
    replacements: Mapping[str, Sequence[tuple[int, int, int]]] | None = None,
    lag_ms: int = 0,
) -> list[Finding]:
    """Every detector over the same inputs; findings sorted by type, device and window.

    `readings`: device -> its ledgered readings of the look-back, sorted by ts.
    `rejects`: device -> (epoch minute, reason, count) from reject_counts.
    `replacements` (optional): device -> recorded meter replacements (ts, old_final, new_initial).
    `lag_ms`: how far behind ingest is now; silence is judged against it.
    """
    found = [
        *detect_leaks(devices, readings, now, tz, config),
        *detect_rollbacks(devices, readings, now, tz, config, replacements=replacements),
        *detect_spikes(devices, readings, now, tz, config),
        *detect_zero_consumption(devices, readings, now, tz, config),
        *detect_silent(devices, readings, rejects, now, tz, config, lag_ms=lag_ms),
        *detect_clock(devices, readings, rejects, now, tz, config),
        *detect_hostile(devices, rejects, now, tz, config),
        *detect_parking_overstays(devices, readings, now, tz, config),
        *detect_parking_flicker(devices, readings, now, tz, config),
    ]
    order = {t: i for i, t in enumerate(TYPES)}
    return sorted(found, key=lambda f: (order[f.type], f.device, f.window_start, f.key))
