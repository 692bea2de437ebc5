"""Simulated street devices: utility meters and parking-bay sensors.

Pure models, no clock and no network: the caller passes the time of each
measurement, so a simulation can run in real time, much faster (weeks
compressed into minutes) or be replayed in a test.

A meter is a cumulative register in the protocol's base units (water and gas:
litres; electricity: watt-hours) that only grows. Its consumption rate follows
the household's day (water: morning and evening peaks, near zero at night;
electricity: base load at night and an evening peak; gas: cooking peaks plus
space heating), the Beijing seasons (through a simple outdoor temperature model)
and per-household scale and noise.

Consumption is integrated over fixed 15-minute slots whose noise is a pure
function of (household, slot), so the register at a time does not depend on how
often it was sampled: reading every second or once a week ends at the same value
(up to float rounding), which is what lets time be compressed.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Literal

MeterKind = Literal["water", "gas", "electricity"]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SLOT_MS = 15 * 60 * 1000  # a quarter of an hour: the grain of consumption noise
BEIJING_UTC_OFFSET_MS = 8 * HOUR_MS  # China Standard Time, no daylight saving
YEAR_DAYS = 365.2425
WARMEST_DAY = 200  # day of year (mid July) of Beijing's warmest weather
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- seeds and noise


def device_seed(fleet_seed: int, device: str) -> int:
    """A per-device seed that is stable across processes (unlike `hash(str)`)."""
    digest = hashlib.sha256(f"{fleet_seed}/{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _unit(key: int, n: int, salt: int) -> float:
    """A uniform number in (0, 1) that depends only on (key, n, salt)."""
    h = _mix64(key ^ _mix64((n << 3) ^ salt))
    return ((h >> 11) + 0.5) / (1 << 53)


def _gauss(key: int, n: int, salt: int) -> float:
    """A standard normal number that depends only on (key, n, salt) (Box-Muller)."""
    u1, u2 = _unit(key, n, salt), _unit(key, n, salt + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _mean_one_lognormal(z: float, sigma: float) -> float:
    """exp(sigma*z) scaled so that its mean is 1: noise that keeps daily totals on target."""
    return math.exp(sigma * z - sigma * sigma / 2.0)


# ---------------------------------------------------------------- calendar and weather


def local_hour(ts_ms: int) -> float:
    """Hour of the day in Beijing, 0 <= h < 24, with fractions."""
    return ((ts_ms + BEIJING_UTC_OFFSET_MS) % DAY_MS) / HOUR_MS


def day_of_year(ts_ms: int) -> float:
    """Approximate day of the year (0 = 1 January) in Beijing, with fractions."""
    return ((ts_ms + BEIJING_UTC_OFFSET_MS) / DAY_MS) % YEAR_DAYS


def outdoor_temperature(ts_ms: int) -> float:
    """Typical Beijing air temperature in deg C: about -3 in January, 27 in July, +-5 over the day."""
    season = math.cos(2.0 * math.pi * (day_of_year(ts_ms) - WARMEST_DAY) / YEAR_DAYS)
    daily = math.cos(2.0 * math.pi * (local_hour(ts_ms) - 15.0) / 24.0)
    return 12.0 + 15.0 * season + 5.0 * daily


def _hourly(profile: tuple[float, ...], ts_ms: int) -> float:
    """A 24-entry hourly profile, linearly interpolated so rates do not jump on the hour."""
    h = local_hour(ts_ms)
    i = int(h)
    frac = h - i
    return profile[i] * (1.0 - frac) + profile[(i + 1) % 24] * frac


def _normalised(profile: tuple[float, ...]) -> tuple[float, ...]:
    """Scale a profile so that its hours sum to 1: then `daily total * profile` is a rate per hour."""
    total = sum(profile)
    return tuple(p / total for p in profile)


# Relative use per local hour 0..23. Water stops between 01:00 and 05:00: a household's taps are
# shut, and no use at all for hours is what tells a household from a leak (the continuous-flow rule).
WATER_PROFILE = _normalised(
    (0.02, 0.0, 0.0, 0.0, 0.0, 0.05, 0.55, 1.0, 0.8, 0.4, 0.3, 0.3,
     0.5, 0.3, 0.25, 0.25, 0.25, 0.35, 0.6, 0.9, 1.0, 0.9, 0.5, 0.15)
)  # fmt: skip
# A second rhythm, for measuring the detectors on households they were not tuned on (issue 20):
# a larger family with a night-shift worker. Up at noon, showers before and after the night shift,
# taps shut in the late morning instead of the small hours.
SHIFT_WATER_PROFILE = _normalised(
    (0.5, 0.3, 0.15, 0.1, 0.4, 0.8, 0.9, 0.5, 0.2, 0.0, 0.0, 0.0,
     0.3, 0.9, 0.7, 0.4, 0.4, 0.6, 0.9, 1.0, 0.8, 0.6, 0.9, 0.8)
)  # fmt: skip
ELECTRIC_ACTIVITY_PROFILE = _normalised(
    (0.05, 0.02, 0.02, 0.02, 0.02, 0.05, 0.35, 0.6, 0.45, 0.25, 0.25, 0.3,
     0.4, 0.3, 0.25, 0.25, 0.3, 0.5, 0.9, 1.0, 1.0, 0.9, 0.6, 0.25)
)  # fmt: skip
COOKING_PROFILE = _normalised(
    (
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.05,
        0.5,
        0.8,
        0.3,
        0.05,
        0.1,
        0.7,
        0.8,
        0.2,
        0.05,
        0.05,
        0.1,
        0.6,
        1.0,
        0.8,
        0.4,
        0.5,
        0.4,
        0.1,
    )
)  # fmt: skip  (breakfast, lunch, dinner, evening showers on a gas water heater)


# ---------------------------------------------------------------- meters


class MeterModel:
    """A household meter's register, advanced to each measurement time.

    Subclasses say only how fast the household consumes on average at an instant
    (`expected_rate`, base units per hour); this class adds noise, integrates and
    keeps the register whole and monotone.
    """

    kind: MeterKind
    noise_sigma: float = 0.4  # spread of a 15-minute slot around the expected rate
    day_sigma: float = 0.15  # spread of one day around the household's typical day

    def __init__(self, seed: int, *, start_register: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._noise_key = self._rng.getrandbits(64)
        self._configure(self._rng)
        self._register = self._initial_register(self._rng) if start_register is None else start_register
        if self._register < 0:
            raise ValueError("a register is never negative")
        self._fraction = 0.0  # consumption not yet a whole unit
        self._at: int | None = None  # time the register was last advanced to
        self._slot_cache: tuple[int, float] = (-1, 0.0)

    # -- what a subclass provides

    def _configure(self, rng: random.Random) -> None:
        """Draw the household's parameters."""

    def _initial_register(self, rng: random.Random) -> int:
        """What the meter showed when installed in the simulation (an existing meter is not at 0)."""
        raise NotImplementedError

    def expected_rate(self, ts_ms: int) -> float:
        """Average consumption at this instant, base units per hour, before noise."""
        raise NotImplementedError

    # -- the register

    @property
    def register(self) -> int:
        return self._register

    @property
    def at(self) -> int | None:
        """Time (epoch ms) the register was last advanced to, None before the first reading."""
        return self._at

    def resume(self, ts_ms: int, register: int) -> None:
        """Continue from a register already reported (a restarted simulation must never go backwards)."""
        if register < 0:
            raise ValueError("a register is never negative")
        self._at, self._register, self._fraction = ts_ms, register, 0.0

    def advance(self, ts_ms: int) -> int:
        """The register at `ts_ms`, after adding what was consumed since the previous call.

        The first call only fixes the starting time. A time earlier than the
        previous one (a clock stepping back) consumes nothing: the register holds.
        """
        if self._at is None:
            self._at = ts_ms
            return self._register
        if ts_ms <= self._at:
            return self._register
        self._fraction += self.consumption(self._at, ts_ms)
        whole = int(self._fraction)
        self._register += whole
        self._fraction -= whole
        self._at = ts_ms
        return self._register

    def consumption(self, start_ms: int, end_ms: int) -> float:
        """Base units consumed in [start, end), summed slot by slot (pure: no state changes)."""
        total = 0.0
        slot = start_ms // SLOT_MS
        while slot * SLOT_MS < end_ms:
            lo = max(start_ms, slot * SLOT_MS)
            hi = min(end_ms, (slot + 1) * SLOT_MS)
            total += self._slot_rate(slot) * (hi - lo) / HOUR_MS
            slot += 1
        return total

    def _slot_rate(self, slot: int) -> float:
        """The noisy rate of one slot (cached: successive readings usually share a slot)."""
        cached_slot, cached_rate = self._slot_cache
        if cached_slot == slot:
            return cached_rate
        mid = slot * SLOT_MS + SLOT_MS // 2
        day = (mid + BEIJING_UTC_OFFSET_MS) // DAY_MS
        noise = _mean_one_lognormal(_gauss(self._noise_key, slot, 0), self.noise_sigma)
        day_noise = _mean_one_lognormal(_gauss(self._noise_key, day, 4), self.day_sigma)
        rate = max(0.0, self.expected_rate(mid)) * noise * day_noise
        self._slot_cache = (slot, rate)
        return rate


def _household_size(rng: random.Random) -> int:
    """People in a Beijing household (mostly two or three)."""
    return rng.choices((1, 2, 3, 4, 5), weights=(15, 30, 35, 12, 8))[0]


class WaterMeter(MeterModel):
    """Litres. About 0.3-0.5 m3 a day for a family; showers and cooking make it bursty."""

    kind: MeterKind = "water"
    noise_sigma = 0.8
    litres_per_day: float

    def _configure(self, rng: random.Random) -> None:
        persons = _household_size(rng)
        self.litres_per_day = 190.0 * persons**0.8 * rng.lognormvariate(0.0, 0.2)

    def _initial_register(self, rng: random.Random) -> int:
        return rng.randint(20_000, 1_500_000)

    def expected_rate(self, ts_ms: int) -> float:
        # A little more in summer (showers, washing), a little less in winter.
        season = 1.0 + 0.12 * math.cos(2.0 * math.pi * (day_of_year(ts_ms) - WARMEST_DAY) / YEAR_DAYS)
        return self.litres_per_day * season * _hourly(self.profile, ts_ms)

    profile = WATER_PROFILE


class ShiftWaterMeter(WaterMeter):
    """A family of four to six with a night-shift worker (SHIFT_WATER_PROFILE): held-out data."""

    profile = SHIFT_WATER_PROFILE

    def _configure(self, rng: random.Random) -> None:
        persons = rng.choice((4, 5, 6))
        self.litres_per_day = 190.0 * persons**0.8 * rng.lognormvariate(0.0, 0.2)


class ElectricityMeter(MeterModel):
    """Watt-hours. A standing base load, an evening peak, air conditioning in summer, heaters in winter.

    Roughly 6 kWh a day in spring and autumn, 8-10 in winter and 10-14 in summer.
    """

    kind: MeterKind = "electricity"
    noise_sigma = 0.25
    base_watts: float
    activity_wh_per_day: float
    cooling_watts_per_degree: float
    heating_watts_per_degree: float

    def _configure(self, rng: random.Random) -> None:
        persons = _household_size(rng)
        scale = rng.lognormvariate(0.0, 0.2)
        self.base_watts = rng.uniform(90.0, 160.0) * scale  # fridge, standby, router
        self.activity_wh_per_day = (1200.0 + 1000.0 * persons**0.7) * scale
        self.cooling_watts_per_degree = 0.0 if rng.random() < 0.1 else rng.uniform(80.0, 220.0)
        self.heating_watts_per_degree = rng.uniform(5.0, 15.0)  # district heating does most of it

    def _initial_register(self, rng: random.Random) -> int:
        return rng.randint(50_000, 40_000_000)

    def expected_rate(self, ts_ms: int) -> float:
        temperature = outdoor_temperature(ts_ms)
        cooling = self.cooling_watts_per_degree * max(0.0, temperature - 26.0)
        heating = self.heating_watts_per_degree * max(0.0, 8.0 - temperature)
        # Evening lights and appliances run longer when the nights are long.
        winter = max(0.0, -math.cos(2.0 * math.pi * (day_of_year(ts_ms) - WARMEST_DAY) / YEAR_DAYS))
        activity = self.activity_wh_per_day * (1.0 + 0.25 * winter) * _hourly(ELECTRIC_ACTIVITY_PROFILE, ts_ms)
        return self.base_watts + activity + cooling + heating


class GasMeter(MeterModel):
    """Litres of natural gas. Cooking and hot water all year; wall-hung boilers heat in winter.

    About 0.3-0.6 m3 a day in summer, 1-3 m3 a day in a Beijing winter.
    """

    kind: MeterKind = "gas"
    noise_sigma = 0.5
    cooking_litres_per_day: float
    heating_litres_per_degree_hour: float

    def _configure(self, rng: random.Random) -> None:
        persons = _household_size(rng)
        self.cooking_litres_per_day = 150.0 * persons**0.7 * rng.lognormvariate(0.0, 0.2)
        # Litres per degree-hour below the heating threshold (a boiler heating a flat).
        self.heating_litres_per_degree_hour = rng.uniform(2.0, 4.5)

    def _initial_register(self, rng: random.Random) -> int:
        return rng.randint(10_000, 5_000_000)

    def expected_rate(self, ts_ms: int) -> float:
        temperature = outdoor_temperature(ts_ms)
        # Colder mains water needs more gas to heat the same shower.
        winter = max(0.0, -math.cos(2.0 * math.pi * (day_of_year(ts_ms) - WARMEST_DAY) / YEAR_DAYS))
        cooking = self.cooking_litres_per_day * (1.0 + 0.4 * winter) * _hourly(COOKING_PROFILE, ts_ms)
        heating = self.heating_litres_per_degree_hour * max(0.0, 15.0 - temperature)
        return cooking + heating


METER_MODELS: dict[str, type[MeterModel]] = {"water": WaterMeter, "gas": GasMeter, "electricity": ElectricityMeter}
RHYTHMS: dict[str, dict[str, type[MeterModel]]] = {
    "day": METER_MODELS,
    "shift": {**METER_MODELS, "water": ShiftWaterMeter},
}


def meter_for(kind: str, seed: int, *, start_register: int | None = None, rhythm: str = "day") -> MeterModel:
    """The meter model of a kind ("water", "gas" or "electricity"), of the households' `rhythm`
    ("day", the city's; "shift", a held-out one for measuring the detectors)."""
    try:
        model = RHYTHMS[rhythm][kind]
    except KeyError:
        raise ValueError(f"no meter model for kind {kind!r} and rhythm {rhythm!r}") from None
    return model(seed, start_register=start_register)


# ---------------------------------------------------------------- parking


# Arrivals per hour at a free street bay, by local hour.
ARRIVALS_PER_HOUR = (
    0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.4, 1.2, 1.8, 2.0, 2.0, 2.0,
    2.2, 2.0, 1.8, 1.8, 1.8, 2.0, 2.0, 1.5, 1.0, 0.7, 0.4, 0.2,
)  # fmt: skip
_MAX_ARRIVALS_PER_HOUR = max(ARRIVALS_PER_HOUR)
MIN_STAY_MS = 2 * 60 * 1000
MAX_STAY_MS = 16 * HOUR_MS


@dataclass
class _Bay:
    occupied: bool
    until_ms: int  # when the state next changes


class ParkingSensor:
    """A bay sensor: 1 while a vehicle is over it, 0 when free.

    Occupancy is an event process: vehicles arrive (more often in daytime) at a
    free bay and stay minutes to hours (evening arrivals often overnight). Random
    draws happen in event order, so the bay's history depends only on the seed,
    never on how often it is sampled.

    The sensor reports on each change and, when nothing changes, repeats its
    state every `heartbeat_every` intervals so the city knows it is alive.
    """

    kind = "parking"

    def __init__(self, seed: int, *, heartbeat_every: int = 10) -> None:
        if heartbeat_every < 1:
            raise ValueError("heartbeat_every must be at least 1")
        self.heartbeat_every = heartbeat_every
        self._rng = random.Random(seed)
        self._popularity = self._rng.uniform(0.5, 1.5)
        self._bay: _Bay | None = None
        self._reported: int | None = None
        self._quiet = 0  # intervals since the last report

    @property
    def occupied(self) -> bool | None:
        return None if self._bay is None else self._bay.occupied

    def resume(self, ts_ms: int, value: int) -> None:
        """Continue from a state already reported: the next step reports only a change or a heartbeat."""
        self._bay = _Bay(bool(value), self._stay_end(ts_ms) if value else self._next_arrival(ts_ms))
        self._reported = value
        self._quiet = 0

    def step(self, ts_ms: int) -> int | None:
        """Advance to `ts_ms`; the value to publish (1 occupied, 0 free), or None when there is nothing to say."""
        return self.report(int(self.occupancy(ts_ms)))

    @property
    def reported(self) -> int | None:
        """The state last published (None before the first report)."""
        return self._reported

    def report(self, state: int) -> int | None:
        """What to publish for a state measured now: a change at once, else a heartbeat now and then.

        `step` passes the bay's true state; fault injection (edge/faults.py) passes
        a state of its own (a sensor stuck on "occupied", one that flickers) and
        still gets the sensor's reporting rules.
        """
        if state != self._reported:
            self._reported, self._quiet = state, 0
            return state
        self._quiet += 1
        if self._quiet >= self.heartbeat_every:
            self._quiet = 0
            return state
        return None

    def occupancy(self, ts_ms: int) -> bool:
        """Whether the bay is occupied at `ts_ms` (times must not go backwards)."""
        if self._bay is None:
            self._bay = self._first_state(ts_ms)
        bay = self._bay
        while bay.until_ms <= ts_ms:
            changed_at = bay.until_ms
            bay.occupied = not bay.occupied
            bay.until_ms = self._stay_end(changed_at) if bay.occupied else self._next_arrival(changed_at)
        return bay.occupied

    def _first_state(self, ts_ms: int) -> _Bay:
        """The state found when the sensor starts: busier in the daytime."""
        hour = local_hour(ts_ms)
        p_occupied = 0.6 if 8.0 <= hour < 20.0 else 0.4
        if self._rng.random() < p_occupied:
            # Already occupied: a remaining stay, shorter than a full one on average.
            remaining = int((self._stay_end(ts_ms) - ts_ms) * self._rng.random())
            return _Bay(True, ts_ms + max(MIN_STAY_MS, remaining))
        return _Bay(False, self._next_arrival(ts_ms))

    def _arrival_rate(self, ts_ms: int) -> float:
        return ARRIVALS_PER_HOUR[int(local_hour(ts_ms))] * self._popularity

    def _next_arrival(self, after_ms: int) -> int:
        """Next arrival at a free bay: a Poisson process with an hourly rate, by thinning."""
        ceiling = _MAX_ARRIVALS_PER_HOUR * self._popularity
        t = float(after_ms)
        while True:
            t += self._rng.expovariate(ceiling) * HOUR_MS
            if self._rng.random() * ceiling <= self._arrival_rate(int(t)):
                return int(t) + 1

    def _stay_end(self, arrived_ms: int) -> int:
        """When a vehicle that arrived at `arrived_ms` leaves: minutes to hours, overnight in the evening."""
        hour = local_hour(arrived_ms)
        if hour >= 18.0 and self._rng.random() < 0.4:
            # Parked for the night: leaves between 7 and 9 the next morning.
            hours_to_morning = (24.0 - hour) + 7.0 + 2.0 * self._rng.random()
            stay = hours_to_morning * HOUR_MS
        else:
            median_minutes = 180.0 if hour < 6.0 else 45.0
            stay = self._rng.lognormvariate(math.log(median_minutes), 0.9) * 60_000
        return arrived_ms + int(min(MAX_STAY_MS, max(MIN_STAY_MS, stay)))
