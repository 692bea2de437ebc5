"""Fault injection for simulated devices, and the ground truth the anomaly detectors are scored on.

A `FaultPlan` says what fraction of the devices of each relevant kind get each
fault, e.g. `leak=0.02,rollback=0.01,spike=0.01,dead=0.01,clock=0.01,badsig=0.01,overstay=0.02`.
`FaultPlan.assign` turns it into one `Fault` per chosen device (at most one per
device, so every device has a single expected anomaly type), with an onset and
a size drawn from the fleet seed: the same plan, seed and fleet always give the
same faults. That list is the ground truth.

An `Injector` applies one device's fault while the device measures: it changes
the register (leak, rollback, spike, stuck), the bay state (overstay, flicker),
the timestamp (clock), whether the device still reports (dead) and whether the
reading gets a valid signature (badsig). `measure` is the one place that
combines a model and an injector; the live fleet (edge/fleet.py) and the
in-process `simulate` both call it, so a test scores exactly what a fleet would
publish.

Faults change what a device *sends*; what the ledger then holds follows from
the protocol: a reading with a bad signature or a timestamp more than five
minutes ahead is quarantined (counted in `reject_counts`), a dead device's
broker publishes its Last Will `offline`. `simulate` plays that part too, so the
detectors can be measured without a broker or a database.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edge.agent import AgentSettings
from edge.meters import (
    BEIJING_UTC_OFFSET_MS,
    DAY_MS,
    HOUR_MS,
    MeterModel,
    ParkingSensor,
    device_seed,
    meter_for,
)
from ledger.chain.protocol import FUTURE_TOLERANCE_MS, METER_KINDS

MINUTE_MS = 60_000
ALL_KINDS = (*METER_KINDS, "parking")

# Fault name -> the kinds it applies to, in the order devices are chosen (rarer kinds first).
FAULT_KINDS: dict[str, tuple[str, ...]] = {
    "overstay": ("parking",),
    "flicker": ("parking",),
    "leak": ("water", "gas"),
    "rollback": METER_KINDS,
    "spike": METER_KINDS,
    "stuck": METER_KINDS,
    "dead": ALL_KINDS,
    "clock": ALL_KINDS,
    "badsig": ALL_KINDS,
}
# Fault name -> the anomaly type (ledger/anomalies/detectors.py) it should raise.
EXPECTED: dict[str, str] = {
    "leak": "leak",
    "rollback": "rollback",
    "spike": "spike",
    "stuck": "zero_consumption",
    "dead": "silent",
    "clock": "clock",
    "badsig": "hostile",
    "overstay": "parking_overstay",
    "flicker": "parking_flicker",
}

# Sizes of the injected faults (documented in docs/anomalies.md).
LEAK_LITRES_PER_HOUR = {"water": (8.0, 40.0), "gas": (80.0, 250.0)}
SPIKE_FACTOR = (20.0, 40.0)  # consumption multiplied by this (a burst pipe, a stuck valve)...
SPIKE_HOURS = (1.0, 2.0)  # ...for this long, starting on a local hour between 07:00 and 20:00
ROLLBACK_FRACTION = (0.002, 0.05)  # the register drops by this fraction of itself (at least 10 units)
CLOCK_AHEAD_MS = 20 * MINUTE_MS  # "ahead": every reading from the onset is quarantined as future_timestamp
CLOCK_BEHIND_MS = (45 * MINUTE_MS, 120 * MINUTE_MS)  # "behind": ledgered, but stamped this much late
CLOCK_BACKWARDS_MS = (HOUR_MS, 3 * HOUR_MS)  # "backwards": one reading stamped this much before the previous one
BADSIG_HOURS = (3.0, 6.0)  # every reading in the burst carries a bad signature (> a bay sensor's 2.5 h heartbeat)
OVERSTAY_HOURS = (36.0, 72.0)  # an abandoned vehicle (or a sensor stuck on "occupied")
FLICKER_HOURS = (3.0, 8.0)  # the reported state toggles at every measurement
WILL_DELAY_MS = 45_000  # the broker sends the Last Will 1.5 keepalives (30 s) after the link died
ONSET = (0.25, 0.75)  # onsets fall in this part of the horizon


def parse_duration(text: str) -> int:
    """`90s`, `20m`, `6h`, `14d` (or plain seconds) in milliseconds."""
    units = {"s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
    text = text.strip().lower()
    unit = units.get(text[-1:], None)
    number = text[:-1] if unit else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 20m, 6h, 14d)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return int(value * (unit or 1000))


@dataclass(frozen=True)
class Fault:
    """One device's injected fault: the ground truth a detector is scored against."""

    device: str
    kind: str
    fault: str  # a key of FAULT_KINDS
    start: int  # epoch ms of the onset
    end: int | None = None  # epoch ms it stops; None: lasts
    size: float = 0.0  # litres per hour (leak), factor (spike), fraction (rollback), ms (clock)
    mode: str = ""  # clock: "ahead", "behind" or "backwards"

    @property
    def anomaly(self) -> str:
        """The anomaly type this fault should raise."""
        return EXPECTED[self.fault]

    def active(self, ts: int) -> bool:
        return ts >= self.start and (self.end is None or ts < self.end)


@dataclass(frozen=True)
class FaultPlan:
    """Fractions of devices to fault, per fault; onsets fall within `horizon_ms` of the start."""

    rates: Mapping[str, float] = field(default_factory=dict)
    horizon_ms: int = DAY_MS
    scale: float = 1.0  # sizes of leaks, spikes and rollbacks times this: faults of other magnitudes

    def __post_init__(self) -> None:
        for name, rate in self.rates.items():
            if name not in FAULT_KINDS:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULT_KINDS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate of {name} must be between 0 and 1, not {rate}")
        if self.horizon_ms <= 0:
            raise ValueError("horizon must be positive")
        if not 0.0 < self.scale <= 100.0:
            raise ValueError(f"scale must be above 0 and at most 100, not {self.scale}")

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """`leak=0.02,rollback=0.01,...[,horizon=6h][,scale=0.5]`: a rate per fault, optionally the onset
        horizon and a factor on the faults' sizes."""
        rates: dict[str, float] = {}
        horizon, scale = DAY_MS, 1.0
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"expected NAME=VALUE, got {part!r}")
            if name == "horizon":
                horizon = parse_duration(value)
                continue
            if name == "scale":
                try:
                    scale = float(value)
                except ValueError:
                    raise ValueError(f"scale is not a number: {value!r}") from None
                continue
            try:
                rates[name] = float(value)
            except ValueError:
                raise ValueError(f"rate of {name} is not a number: {value!r}") from None
        return cls(rates, horizon, scale)

    def assign(self, devices: Iterable[tuple[str, str]], start: int, *, seed: int = 0) -> dict[str, Fault]:
        """The fault of each chosen device, from (device, kind) pairs; devices left out have none.

        For each fault in turn, `round(rate * n)` devices are taken from the n of
        its kinds, among those not yet given a fault, in an order fixed by the seed.
        """
        pool = list(devices)
        taken: dict[str, Fault] = {}
        for name, kinds in FAULT_KINDS.items():
            rate = self.rates.get(name, 0.0)
            if rate <= 0:
                continue
            eligible = [(d, k) for d, k in pool if k in kinds]
            want = round(rate * len(eligible))
            free = sorted(
                (x for x in eligible if x[0] not in taken), key=lambda x: device_seed(seed, f"fault/{name}/{x[0]}")
            )
            for device, kind in free[:want]:
                taken[device] = _draw(name, device, kind, start, self.horizon_ms, seed, self.scale)
        return taken


def _draw(name: str, device: str, kind: str, start: int, horizon: int, seed: int, scale: float = 1.0) -> Fault:
    """Onset and size of one fault, from its own random stream (sizes of leaks, spikes and rollbacks x `scale`)."""
    rng = random.Random(device_seed(seed, f"fault-draw/{name}/{device}"))
    onset = start + int(horizon * rng.uniform(*ONSET))
    if name == "leak":
        return Fault(device, kind, name, onset, size=scale * rng.uniform(*LEAK_LITRES_PER_HOUR[kind]))
    if name == "spike":
        # On a local hour when the household is up, so the extra consumption is there to see.
        local_day = (onset + BEIJING_UTC_OFFSET_MS) // DAY_MS * DAY_MS - BEIJING_UTC_OFFSET_MS
        onset = local_day + rng.randint(7, 20) * HOUR_MS
        return Fault(
            device,
            kind,
            name,
            onset,
            onset + int(rng.uniform(*SPIKE_HOURS) * HOUR_MS),
            size=scale * rng.uniform(*SPIKE_FACTOR),
        )
    if name == "rollback":
        return Fault(device, kind, name, onset, size=scale * rng.uniform(*ROLLBACK_FRACTION))
    if name == "clock":
        mode = rng.choice(("ahead", "behind", "backwards"))
        size = {
            "ahead": CLOCK_AHEAD_MS,
            "behind": rng.uniform(*CLOCK_BEHIND_MS),
            "backwards": rng.uniform(*CLOCK_BACKWARDS_MS),
        }[mode]
        return Fault(device, kind, name, onset, size=size, mode=mode)
    if name == "badsig":
        return Fault(device, kind, name, onset, onset + int(rng.uniform(*BADSIG_HOURS) * HOUR_MS))
    if name == "overstay":
        return Fault(device, kind, name, onset, onset + int(rng.uniform(*OVERSTAY_HOURS) * HOUR_MS))
    if name == "flicker":
        return Fault(device, kind, name, onset, onset + int(rng.uniform(*FLICKER_HOURS) * HOUR_MS))
    return Fault(device, kind, name, onset)  # dead, stuck: from the onset on


# ---------------------------------------------------------------- applying a fault


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a device publishes for one measurement: its (maybe skewed) timestamp, value and signature health."""

    ts: int
    value: int
    bad_signature: bool = False


class Injector:
    """Applies one device's fault to its measurements (keeps the little state a fault needs)."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self._frozen: int | None = None  # stuck: the register at the onset
        self._drop: int | None = None  # rollback: how far the register fell
        self._glitched = False  # clock "backwards": the one bad timestamp was sent
        self._last_stamp: int | None = None

    def alive(self, ts: int) -> bool:
        """False once a dead device has died: it measures and sends nothing more."""
        return not (self.fault.fault == "dead" and ts >= self.fault.start)

    def meter(self, model: MeterModel, ts: int) -> int:
        """The register the meter shows at `ts` (the model advances as usual underneath)."""
        f = self.fault
        value = model.advance(ts)
        if f.fault == "leak" and ts > f.start:
            value += int(f.size * (ts - f.start) / HOUR_MS)
        elif f.fault == "spike" and ts > f.start:
            assert f.end is not None
            value += int((f.size - 1.0) * model.consumption(f.start, min(ts, f.end)))
        elif f.fault == "stuck" and ts >= f.start:
            if self._frozen is None:
                self._frozen = value
            value = self._frozen
        elif f.fault == "rollback" and ts >= f.start:
            if self._drop is None:
                self._drop = min(value, max(10, int(value * f.size)))
            value -= self._drop
        return value

    def parking(self, sensor: ParkingSensor, ts: int) -> int | None:
        """The value a bay sensor publishes at `ts`, or None (nothing to say)."""
        f = self.fault
        state = int(sensor.occupancy(ts))  # the street goes on underneath
        if f.active(ts):
            if f.fault == "overstay":
                state = 1
            elif f.fault == "flicker":
                state = 1 - (sensor.reported or 0)
        return sensor.report(state)

    def stamp(self, ts: int) -> int:
        """The timestamp the device writes on a reading taken at true time `ts` (call once per reading)."""
        f = self.fault
        stamp = ts
        if f.fault == "clock" and ts >= f.start:
            if f.mode == "ahead":
                stamp = ts + int(f.size)
            elif f.mode == "behind":
                stamp = ts - int(f.size)
            elif not self._glitched:  # "backwards": one reading, stamped before the one it follows
                self._glitched = True
                stamp = (self._last_stamp if self._last_stamp is not None else ts) - int(f.size)
        self._last_stamp = stamp
        return stamp

    def corrupt(self, ts: int) -> bool:
        """Whether the reading taken at `ts` goes out with a signature that does not verify."""
        return self.fault.fault == "badsig" and self.fault.active(ts)


def measure(model: MeterModel | ParkingSensor, ts: int, injector: Injector | None = None) -> Measurement | None:
    """One measurement at true time `ts`, faults applied; None when the device says nothing."""
    if injector is None:
        value = model.step(ts) if isinstance(model, ParkingSensor) else model.advance(ts)
        return None if value is None else Measurement(ts, value)
    if not injector.alive(ts):
        return None
    value = injector.parking(model, ts) if isinstance(model, ParkingSensor) else injector.meter(model, ts)
    if value is None:
        return None
    return Measurement(injector.stamp(ts), value, injector.corrupt(ts))


# ---------------------------------------------------------------- an in-process city


@dataclass
class SimDevice:
    """What the ledger would hold about one device after a simulated run."""

    device: str
    kind: str
    district: str
    readings: list[tuple[int, int, int, int]] = field(default_factory=list)  # (seq, ts, value, received_at)
    rejects: dict[tuple[int, str], int] = field(default_factory=dict)  # (minute, reason) -> count
    status: tuple[str, int] | None = None  # last "online"/"offline" and when


def simulate(
    devices: Sequence[tuple[str, str, str]],
    *,
    start: int,
    days: float,
    interval_ms: int = 15 * MINUTE_MS,
    seed: int = 0,
    faults: Mapping[str, Fault] | None = None,
    heartbeat_every: int = 10,
    latency_ms: tuple[int, int] = (40, 900),
    outages: Sequence[tuple[int, int]] = (),
    resend_for_ms: int = HOUR_MS,
    agent: AgentSettings = AgentSettings(),
    rhythm: str = "day",
) -> list[SimDevice]:
    """Run (device, kind, district) devices from `start` for `days`, without a broker or a database.

    Time-compressed and deterministic: each device measures once per interval at
    its own phase (as `edge.fleet` schedules it), its fault applied. Then what
    ingest would do: a reading arrives `latency_ms` later (or, if it was taken
    during one of the `outages` (start, end), when the outage ends: the outbox
    backlog), a bad signature or a timestamp more than five minutes ahead is
    quarantined and counted per minute and reason, anything else is ledgered.
    A quarantined reading is never acknowledged, so its device re-sends it with
    the agent's backoff (30 s, then 60, 120 ... up to every 600 s) for as long as
    it runs; each re-send is one more reject. Only the first `resend_for_ms` of
    that is modelled, which keeps the table small and understates, never
    overstates, a faulty device's rejects.
    A device says `online` at the start; a dead one's Last Will says `offline`. `rhythm` picks the
    households' daily rhythm (edge/meters.py RHYTHMS: the city's "day", or the held-out "shift").
    """
    resends = _resend_offsets(agent, resend_for_ms)
    faults = faults or {}
    end = start + int(days * DAY_MS)
    n = max(1, len(devices))
    out: list[SimDevice] = []
    for i, (device, kind, district) in enumerate(devices):
        rng = random.Random(device_seed(seed, f"latency/{device}"))
        model_seed = device_seed(seed, device)
        model: MeterModel | ParkingSensor = (
            ParkingSensor(model_seed, heartbeat_every=heartbeat_every)
            if kind == "parking"
            else meter_for(kind, model_seed, rhythm=rhythm)
        )
        fault = faults.get(device)
        injector = Injector(fault) if fault is not None else None
        sim = SimDevice(device, kind, district, status=("online", start))
        seq = 0
        ts = start + interval_ms * i // n
        while ts < end:
            m = measure(model, ts, injector)
            if m is not None:
                seq += 1
                received = _arrival(ts, outages) + rng.randint(*latency_ms)
                reason = (
                    "bad_signature"
                    if m.bad_signature
                    else "future_timestamp"
                    if m.ts > received + FUTURE_TOLERANCE_MS
                    else None
                )
                if reason is None:
                    sim.readings.append((seq, m.ts, m.value, received))
                else:
                    for offset in resends:
                        key = ((received + offset) // MINUTE_MS, reason)
                        sim.rejects[key] = sim.rejects.get(key, 0) + 1
            ts += interval_ms
        if injector is not None and fault is not None and fault.fault == "dead" and fault.start < end:
            sim.status = ("offline", fault.start + WILL_DELAY_MS)
        sim.readings.sort(key=lambda r: (r[1], r[0]))  # as the store hands them over: by ts
        out.append(sim)
    return out


def _resend_offsets(agent: AgentSettings, horizon_ms: int) -> list[int]:
    """When a never-acknowledged reading goes out again, in ms after its first send (0 included)."""
    offsets, at, attempts = [0], 0.0, 0
    while True:
        at += min(agent.resend_max, agent.resend_after * (1 << attempts))
        attempts += 1
        if at * 1000 > horizon_ms:
            return offsets
        offsets.append(int(at * 1000))


def _arrival(ts: int, outages: Sequence[tuple[int, int]]) -> int:
    """When a reading taken at `ts` can reach the ledger: at once, or when the outage it fell in ends."""
    for lo, hi in outages:
        if lo <= ts < hi:
            return hi
    return ts
