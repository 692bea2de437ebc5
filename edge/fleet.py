"""A simulated fleet of street devices in one process and one network thread.

Each device is a real `DeviceAgent` (own key, own broker identity, own seq)
paired with a simulation model; all share one outbox file and one `NetLoop`.
Devices are provisioned on first run (the key is generated here, on the device
side; the caller's `enroll` registers its public key and returns its broker
credentials) and reused on later runs, where seqs continue from the outbox and
registers continue from the last reading.

Each device measures once per `interval`, at its own phase within the interval
(real devices are not synchronised, and a thousand simultaneous publishes would
be a needless burst).
"""

from __future__ import annotations

import fcntl
import heapq
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nacl.signing import SigningKey

from broker.mqtt.tls import TLSSettings
from edge.agent import AgentSettings, DeviceAgent
from edge.faults import Fault, FaultPlan, Injector, Measurement, measure
from edge.identity import DeviceIdentity, Enroll, provision
from edge.meters import MeterModel, ParkingSensor, device_seed, meter_for
from edge.netloop import NetLoop
from edge.outbox import Outbox, OutboxFull
from ledger.clock import now_ms
from ledger.errors import Unavailable
from ledger.home import Home

log = logging.getLogger("cityledger.fleet")

PREFIXES: dict[str, str] = {"water": "wm", "gas": "gm", "electricity": "em", "parking": "ps"}
# The mix of a district's devices, in the order ties are broken.
KIND_SHARES: tuple[tuple[str, float], ...] = (("electricity", 0.35), ("water", 0.30), ("gas", 0.20), ("parking", 0.15))
OUTBOX_FILE = "outbox.sqlite"
LOCK_FILE = "fleet.lock"
FAULTS_FILE = "faults.jsonl"  # the ground truth of a run with injected faults, one fault per line


class FleetBusy(Unavailable):
    """Another process is already running this home's fleet (two would fight over client ids)."""


@dataclass
class FleetStats:
    """Counters of one run (readings of this run; pending includes older backlog)."""

    devices: int = 0
    connected: int = 0  # devices with a live MQTT session
    generated: int = 0  # readings signed and stored
    acked: int = 0  # readings removed from the outbox by the ledger's acks
    pending: int = 0  # readings in the outbox awaiting an ack
    refused: int = 0  # measurements not stored because the outbox was full

    def snapshot(self) -> FleetStats:
        return replace(self)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class DevicePlan:
    """Which device a fleet slot is."""

    device: str
    kind: str
    district: str


def plan_fleet(devices: int, districts: Sequence[str]) -> list[DevicePlan]:
    """The fleet's devices: districts in turn, each with the same kind mix, numbered per kind and district.

    Deterministic and prefix-stable: growing the fleet adds devices and never
    renames one, so a later run finds its earlier devices' directories.
    """
    if devices < 0:
        raise ValueError("devices must be >= 0")
    if not districts:
        raise ValueError("at least one district is needed")
    assigned: dict[tuple[str, str], int] = {}
    plan: list[DevicePlan] = []
    for i in range(devices):
        district = districts[i % len(districts)]
        kind = _next_kind(i // len(districts), {k: assigned.get((k, district), 0) for k, _ in KIND_SHARES})
        n = assigned[(kind, district)] = assigned.get((kind, district), 0) + 1
        plan.append(DevicePlan(f"{PREFIXES[kind]}-{district}-{n:06d}", kind, district))
    return plan


def _next_kind(position: int, counts: dict[str, int]) -> str:
    """The kind furthest below its share after `position + 1` devices (largest-deficit apportionment)."""
    return max(KIND_SHARES, key=lambda ks: ks[1] * (position + 1) - counts[ks[0]])[0]


class SimulatedDevice:
    """A device agent and the physical process it measures (with an injected fault, if it has one)."""

    def __init__(self, agent: DeviceAgent, model: MeterModel | ParkingSensor, fault: Fault | None = None) -> None:
        self.agent = agent
        self.model = model
        self.fault = fault
        self._injector = Injector(fault) if fault is not None else None
        self._dead = False

    @classmethod
    def create(
        cls, agent: DeviceAgent, *, seed: int, heartbeat_every: int = 10, fault: Fault | None = None
    ) -> SimulatedDevice:
        """The model for the agent's kind, continuing from the last reading the outbox remembers."""
        device, kind = agent.identity.device, agent.identity.kind
        model_seed = device_seed(seed, device)
        model: MeterModel | ParkingSensor
        if kind == "parking":
            model = ParkingSensor(model_seed, heartbeat_every=heartbeat_every)
        else:
            model = meter_for(kind, model_seed)
        state = agent.outbox.state(device)
        if state.last_ts is not None and state.last_value is not None:
            model.resume(state.last_ts, state.last_value)
        return cls(agent, model, fault)

    def measure(self, ts_ms: int) -> bool:
        """Take this interval's measurement; True when a reading was recorded."""
        m = measure(self.model, ts_ms, self._injector)
        if m is None:
            if self._injector is not None and not self._injector.alive(ts_ms):
                self._die()
            return False
        if m.bad_signature:
            self._record_forged(m)
        else:
            self.agent.record(m.ts, m.value)
        return True

    # -- fault injection (edge/faults.py decides when; these do it to a real agent)

    def _record_forged(self, m: Measurement) -> None:
        """Sign with a key the ledger never saw: stored, sent and re-sent like any reading; ingest quarantines it."""
        genuine = self.agent.identity
        forger = SigningKey(genuine.device.encode().ljust(32, b"\0")[:32])
        self.agent.identity = replace(genuine, key=forger)
        try:
            self.agent.record(m.ts, m.value)
        finally:
            self.agent.identity = genuine

    def _die(self) -> None:
        """Drop the link without a DISCONNECT, so the broker publishes the Last Will `offline`; never reconnect."""
        if self._dead:
            return
        self._dead = True
        client = self.agent.client

        def refuse() -> None:
            raise OSError(f"{self.agent.device} is dead (fault injection)")

        client.reconnect = refuse  # type: ignore[method-assign,assignment]  # the NetLoop retries, in vain
        sock = client.socket()
        if isinstance(sock, socket.socket):  # paho's socket: plain TCP or TLS (ssl.SSLSocket is one too)
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the loop reads EOF and closes; the broker sees a dead link
            except OSError:
                pass


class _Schedule:
    """Who measures next: each device once per interval at its own phase."""

    def __init__(self, devices: Sequence[SimulatedDevice], interval: float, start: float) -> None:
        self.interval = interval
        self.devices = devices
        n = max(1, len(devices))
        self._heap = [(start + interval * i / n, i) for i in range(len(devices))]
        heapq.heapify(self._heap)

    def due(self, now: float) -> Iterator[SimulatedDevice]:
        """The devices due by `now`, each rescheduled a whole number of intervals on (missed beats are skipped)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, i = heapq.heappop(heap)
            missed = int((now - at) // self.interval)
            heapq.heappush(heap, (at + self.interval * (missed + 1), i))
            yield self.devices[i]


@contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold the fleet's lock file for the duration (released by the kernel if the process dies)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetBusy(f"another fleet is running from {directory}") from None
        yield
    finally:
        os.close(fd)


def provision_fleet(
    home: Home,
    plan: Sequence[DevicePlan],
    enroll: Enroll,
    *,
    stop: threading.Event | None = None,
) -> tuple[list[DeviceIdentity], list[DeviceIdentity]]:
    """Every planned device's identity, enrolling the new ones. Returns (all, newly enrolled)."""
    identities: list[DeviceIdentity] = []
    fresh: list[DeviceIdentity] = []
    for entry in plan:
        if stop is not None and stop.is_set():
            break
        identity, new = provision(home, entry.device, entry.kind, entry.district, enroll)
        identities.append(identity)
        if new:
            fresh.append(identity)
    return identities, fresh


def run_fleet(
    home: Home,
    *,
    devices: int,
    interval: float,
    host: str,
    port: int,
    districts: Sequence[str] = ("d01", "d02", "d03"),
    enroll: Enroll,
    stop: threading.Event,
    seed: int = 0,
    on_progress: Callable[[FleetStats], None] | None = None,
    after_enroll: Callable[[list[DeviceIdentity]], None] | None = None,
    settings: AgentSettings = AgentSettings(),
    heartbeat_every: int = 10,
    clock: Callable[[], int] = now_ms,
    tls: TLSSettings | None = None,
    faults: FaultPlan | None = None,
) -> FleetStats:
    """Run `devices` simulated devices until `stop` is set; returns the run's counters.

    Blocks the calling thread, which becomes the fleet's only network thread.
    `enroll(identity)` is called, on this thread and before any device
    connects, for each device met for the first time; it must return the
    (mqtt username, mqtt password) the broker will accept. `after_enroll`, if
    given, is called once with the devices just enrolled (e.g. to reload the
    broker's password file once rather than per device). `on_progress` gets a
    snapshot about once per max(interval, 1 s), on this thread. `clock()` gives each
    measurement's time in epoch ms (a simulation may run it faster than the wall clock;
    `interval` stays real seconds). With `tls` every device connects over TLS and
    verifies the broker against that CA. With `faults`, the plan's devices get
    their faults (edge/faults.py), with onsets counted from this run's start; the
    ground truth is written to `FAULTS_FILE` in the fleet directory.
    """
    if interval <= 0:
        raise ValueError("interval must be positive")
    home.fleet.mkdir(parents=True, exist_ok=True)
    home.fleet.chmod(0o700)
    stats = FleetStats(devices=devices)
    with _exclusive(home.fleet), Outbox(home.fleet / OUTBOX_FILE) as outbox:
        identities, fresh = provision_fleet(home, plan_fleet(devices, districts), enroll, stop=stop)
        if fresh and after_enroll is not None:
            after_enroll(fresh)

        def acked(n: int) -> None:
            stats.acked += n

        truth = _inject(home, faults, identities, clock(), seed)
        loop = NetLoop(seed=seed)
        sims: list[SimulatedDevice] = []
        for identity in identities:
            agent = DeviceAgent(identity, outbox, host=host, port=port, settings=settings, on_acked=acked, tls=tls)
            sims.append(
                SimulatedDevice.create(
                    agent, seed=seed, heartbeat_every=heartbeat_every, fault=truth.get(identity.device)
                )
            )
            loop.add(agent)
        schedule = _Schedule(sims, interval, time.monotonic())
        full_warned = False

        def measure(now: float) -> None:
            nonlocal full_warned
            for sim in schedule.due(now):
                try:
                    if sim.measure(clock()):
                        stats.generated += 1
                except OutboxFull as exc:
                    stats.refused += 1
                    if not full_warned:
                        log.error("%s; measurements are being dropped until acks free space", exc)
                        full_warned = True

        def refresh() -> FleetStats:
            stats.connected = loop.connected
            stats.pending = sum(sim.agent.pending for sim in sims)
            return stats.snapshot()

        loop.every(min(interval, 0.05), measure)
        if on_progress is not None:
            loop.every(max(interval, 1.0), lambda now: on_progress(refresh()), first_in=max(interval, 1.0))
        loop.run(stop)
        final = refresh()
        final.connected = 0
    return final


def _inject(
    home: Home, plan: FaultPlan | None, identities: Sequence[DeviceIdentity], start: int, seed: int
) -> dict[str, Fault]:
    """Each faulty device's fault, also written down as this run's ground truth (an earlier run's is removed)."""
    path = home.fleet / FAULTS_FILE
    if plan is None:
        path.unlink(missing_ok=True)
        return {}
    truth = plan.assign([(i.device, i.kind) for i in identities], start, seed=seed)
    ordered = sorted(truth.values(), key=lambda f: f.device)
    path.write_text("".join(json.dumps(asdict(f), sort_keys=True) + "\n" for f in ordered))
    log.info("injecting %d faults (ground truth in %s)", len(truth), path)
    return truth
