"""`cityledger bench`: how many signed readings a second this machine ledgers, and at what cost.

    cityledger bench [--seconds 60] [--devices 1000] [--workers W] [--districts N] [--json]

On a fresh home it starts the real Mosquitto and the real `cityledger ingest`,
enrols the devices in bulk, signs their readings before the clock starts
(signing is the devices' cost, not the ledger's), and publishes them QoS 1
from a raw-socket load generator (bench/loadgen.py) that keeps a bounded window
of unacknowledged readings per device. After a warm-up it measures, over
`--seconds`: ledgered readings per second, publish-to-`ack` latency, the CPU
of ingest (and any processes it spawns) per reading against one Ed25519
verification measured in the same run, ingest peak memory, and DuckDB bytes
per reading; the broker's and the load generator's CPU show where the rest of
the machine went. Then it waits until every published reading is ledgered.

With `--districts N` the same is measured on a city of N district chains
(docs/scaling.md): the devices are spread over districts d01..dNN, each enrolled
in its own district's home, one `cityledger ingest` runs per district and
`cityledger anchor` on the city home, all on the one broker. The figures are
sums over the districts (the anchor's CPU counts as ingest CPU), with a
breakdown per district and how far the city chain's anchors trailed the
district heads when the last reading was ledgered.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
from nacl.signing import SigningKey

from bench.loadgen import LoadError, LoadGenerator, Supply
from broker import mosquitto
from broker.mqtt import wire
from ledger.chain.protocol import READING_CONTEXT, device_topic, sign_reading, verify_reading
from ledger.clock import now_ms
from ledger.errors import LedgerError
from ledger.home import Home
from ledger.processes import STDOUT, Child, WaitTimeout, wait_until
from ledger.processes import start as start_child
from ledger.service.homes import initialize
from ledger.service.progress import ProgressBar
from ledger.service.rpc import RemoteLedger, open_ledger

# Readings/s the pre-signed supply is sized for, with room for devices progressing unevenly;
# a faster ledger runs the devices dry, and the result says so (supply_exhausted).
SUPPLY_RATE = 40_000
ENROL_CHUNK = 2_000  # devices per enrol call: the API reads requests of at most 1 MiB
VERIFY_SAMPLES = 20_000
DISTRICTS = ("d01", "d02", "d03", "d04")
KINDS = ("water", "electricity", "gas")
KIND_PREFIX = {"water": "wm", "electricity": "em", "gas": "gm"}  # district devices: wm-d01-000001
ANCHOR_EVERY_S = 1.0
INGEST_START_S = 30.0
# One reading's canonical JSON (PROTOCOL.md section 2), members in sorted order; device ids and
# kinds match [A-Za-z0-9._-], so nothing needs escaping.
_UNSIGNED = '{{"device":"{d}","kind":"{k}","seq":{s},"ts":{t},"v":1,"value":{v}}}'
_SIGNED = '{{"device":"{d}","kind":"{k}","seq":{s},"sig":"{g}","ts":{t},"v":1,"value":{v}}}'


class BenchError(LedgerError, RuntimeError):
    """The run could not measure what it promised; the message says why."""


@dataclass(frozen=True)
class BenchOptions:
    seconds: float = 60.0
    devices: int = 1000
    window: int = 0  # unacknowledged readings per device; 0: enough for about two blocks in flight
    workers: int | None = None  # passed to ingest only when given
    block_readings: int = 5000
    block_seconds: float = 1.0
    home: Path | None = None  # None: a temporary home, removed afterwards
    supply_rate: float = SUPPLY_RATE
    drain_timeout: float = 120.0
    command: str = ""
    districts: int = 0  # 0: one chain; N >= 2: a city of N district chains and the anchor

    def chains(self) -> int:
        return max(1, self.districts)

    def warmup(self) -> float:
        """Seconds of load before the measured window: connections settle, caches fill."""
        return min(5.0, self.seconds / 3)

    def window_per_device(self) -> int:
        """Enough in flight to keep two blocks' worth queued on every chain, whatever the device count."""
        if self.window:
            return self.window
        in_flight = 2 * self.block_readings * self.chains()
        return max(2, min(wire.MAX_PACKET_ID - 1, math.ceil(in_flight / self.devices)))

    def readings_per_device(self) -> int:
        publishing = self.warmup() + self.seconds
        return math.ceil(self.supply_rate * publishing / self.devices) + self.window_per_device()


@dataclass(frozen=True)
class Snapshot:
    """What the ledger and the processes had done at one moment."""

    t: float
    chain_readings: tuple[int, ...]  # per chain: the one ledger, or each district's
    chain_cpu: tuple[float, ...]  # per chain: its ingest's process tree
    anchor_cpu: float  # the city's anchor; 0 on one chain
    broker_cpu: float
    loadgen_cpu: float
    machine_cpu: float  # every process on the machine, ours and anyone else's

    @property
    def readings(self) -> int:
        return sum(self.chain_readings)

    @property
    def ingest_cpu(self) -> float:
        return sum(self.chain_cpu) + self.anchor_cpu


@dataclass
class DeviceSpec:
    device: str
    district: str
    kind: str
    seed: bytes
    password: str = ""


@dataclass
class Service:
    """One `cityledger` process on a home (an ingest, or the city's anchor), and its API once it serves."""

    name: str
    home: Home
    proc: Child
    log: Path
    api: Any = None


@dataclass
class Stack:
    home: Home  # the one chain's home, or the city's (its districts' homes are under it)
    port: int
    broker: Child
    ingests: list[Service] = field(default_factory=list)  # one per chain
    anchor: Service | None = None

    @property
    def services(self) -> list[Service]:
        return self.ingests + ([self.anchor] if self.anchor else [])


# ---------------------------------------------------------------- readings, signed by the "devices"


def encode_reading(key: SigningKey, device: str, kind: str, seq: int, ts: int, value: int) -> bytes:
    """A device's payload, canonical JSON with its signature (byte-equal to `sign_reading(...).payload()`)."""
    unsigned = _UNSIGNED.format(d=device, k=kind, s=seq, t=ts, v=value).encode()
    sig = base64.b64encode(key.sign(READING_CONTEXT + unsigned).signature).decode()
    return _SIGNED.format(d=device, k=kind, s=seq, g=sig, t=ts, v=value).encode()


def sign_supply(task: tuple[str, str, str, bytes, int, int]) -> tuple[str, bytes, bytes]:
    """(device, PUBLISH packets of seqs 1..count back to back, their offsets as bytes).

    Runs in a pool worker. ts are consecutive milliseconds ending at `ts_end`: recent,
    and never in the ledger's future.
    """
    device, district, kind, seed, count, ts_end = task
    key = SigningKey(seed)
    topic = device_topic(district, kind, device, "reading").encode()
    packets, offsets, pos = [], array("Q", [0]), 0
    for seq in range(1, count + 1):
        payload = encode_reading(key, device, kind, seq, ts_end - count + seq, seq * 7)
        packet = wire.publish_packet(topic, payload, qos=1, packet_id=wire.packet_id_for(seq))
        packets.append(packet)
        pos += len(packet)
        offsets.append(pos)
    return device, b"".join(packets), offsets.tobytes()


def presign(specs: list[DeviceSpec], count: int, processes: int) -> list[Supply]:
    """Every device's readings for the whole run, signed on all cores before the clock starts."""
    ts_end = now_ms()
    tasks = [(s.device, s.district, s.kind, s.seed, count, ts_end) for s in specs]
    by_device = {s.device: s for s in specs}
    supplies = []
    bar = ProgressBar("signing readings (devices)")
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for device, blob, raw_offsets in pool.imap_unordered(sign_supply, tasks, chunksize=4):
            spec = by_device[device]
            offsets = array("Q")
            offsets.frombytes(raw_offsets)
            ack = device_topic(spec.district, spec.kind, device, "ack")
            supplies.append(Supply(device, spec.password, ack, blob, offsets))
            bar.update(len(supplies), len(specs))
    bar.close()
    order = {s.device: i for i, s in enumerate(specs)}
    return sorted(supplies, key=lambda s: order[s.device])


def verify_cost_us(samples: int = VERIFY_SAMPLES) -> tuple[float, float]:
    """(µs per `ledger.protocol.verify_reading`, µs per bare Ed25519 verify), on distinct signatures.

    Each is the fastest of several rounds: a round that something else on the machine slowed
    down (the broker loading a city's logins, say) would otherwise flatter every ratio to it.
    """
    keys = [SigningKey.generate() for _ in range(50)]
    readings = [
        sign_reading(keys[i % 50], device=f"v{i % 50}", kind="water", seq=i + 1, ts=i, value=i)
        for i in range(min(samples, 2000))
    ]
    pairs = [(keys[i % 50].verify_key, r) for i, r in enumerate(readings)]
    raw = [(vk, r.signed_message(), base64.b64decode(r.sig)) for vk, r in pairs]
    rounds = max(1, samples // len(pairs))
    per_reading = bare = float("inf")
    for _ in range(rounds):
        t = time.process_time()  # CPU time, like the ingest's figure
        for vk, r in pairs:
            if not verify_reading(vk, r):
                raise BenchError("a freshly signed reading did not verify")
        per_reading = min(per_reading, (time.process_time() - t) / len(pairs) * 1e6)
        t = time.process_time()
        for vk, message, sig in raw:
            vk.verify(message, sig)
        bare = min(bare, (time.process_time() - t) / len(raw) * 1e6)
    return per_reading, bare


# ---------------------------------------------------------------- processes, from /proc


def parse_proc_stat(text: str) -> tuple[int, float, float]:
    """(parent pid, own user+sys ticks, reaped children's user+sys ticks) from /proc/PID/stat."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), float(fields[11]) + float(fields[12]), float(fields[13]) + float(fields[14])


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it that is alive now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = parse_proc_stat((entry / "stat").read_text())[0]
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User+sys CPU of `root`, its live descendants, and the children it has reaped."""
    ticks = 0.0
    for pid in process_tree(root):
        try:
            _, own, reaped = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
        except (OSError, IndexError, ValueError):
            continue
        ticks += own + reaped
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_peak_rss_mb(root: int) -> float:
    """Sum of VmHWM (each process's peak resident memory) over `root` and its descendants."""
    total_kb = 0
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return total_kb / 1024


def parse_machine_busy(proc_stat: str) -> float:
    """Busy ticks (everything but idle and iowait) summed over all CPUs, from /proc/stat's first line."""
    fields = [float(x) for x in proc_stat.splitlines()[0].split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal


def machine_busy_seconds() -> float:
    return parse_machine_busy(_read("/proc/stat")) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- the stack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_open_files_limit(needed: int) -> None:
    """One socket per device in us and in the broker (which inherits our limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"{needed} open files are needed, the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def ingest_argv(opt: BenchOptions) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "ledger.cli",
        "--log-level",
        "WARNING",
        "ingest",
        "--block-readings",
        str(opt.block_readings),
        "--block-seconds",
        str(opt.block_seconds),
    ]
    if opt.workers is not None:
        argv += ["--workers", str(opt.workers)]
    return argv


def anchor_argv() -> list[str]:
    return [sys.executable, "-m", "ledger.cli", "--log-level", "WARNING", "anchor", "--every", str(ANCHOR_EVERY_S)]


def district_names(n: int) -> list[str]:
    return [f"d{i:02d}" for i in range(1, n + 1)]


@contextmanager
def running_stack(home: Home, opt: BenchOptions) -> Iterator[Stack]:
    """Mosquitto, and ingest on `home` or, with districts, on each district's home and the anchor on `home`;
    stopped on exit (the ledger processes first, so they let go of their files)."""
    initialize(home)
    chains = [home]
    if opt.districts:
        city = open_ledger(home)  # nothing runs yet: direct access, letting go of the file after each call
        chains = [home.district_home(city.add_district(d)["district"]) for d in district_names(opt.districts)]
    port = _free_port()
    stack = Stack(home, port, mosquitto.start(home, port))
    try:
        for chain in chains:
            stack.ingests.append(
                _launch(
                    stack,
                    f"ingest of {chain.district}" if chain.district else "ingest",
                    chain,
                    ingest_argv(opt),
                    "bench-ingest.log",
                )
            )
        if opt.districts:
            stack.anchor = _launch(stack, "anchor", home, anchor_argv(), "bench-anchor.log")
        for service in stack.services:
            service.api = _await_api(service)
        yield stack
    finally:
        for service in stack.services:
            service.proc.stop(timeout=60.0)
        stack.broker.stop(timeout=30.0)


def _launch(stack: Stack, name: str, home: Home, argv: list[str], log_name: str) -> Service:
    log = home.logs / log_name
    env = {**os.environ, "CITYLEDGER_HOME": str(home.root), "CITYLEDGER_MQTT_PORT": str(stack.port)}
    return Service(name, home, start_child(argv, env=env, stdout=log, stderr=STDOUT), log)


def _await_api(service: Service) -> RemoteLedger:
    def serving() -> RemoteLedger | None:
        api = open_ledger(service.home)
        if isinstance(api, RemoteLedger):
            return api
        if not service.proc.alive:
            raise BenchError(f"{service.name} did not start:\n{_tail(service.log)}")
        return None

    try:
        return wait_until(serving, INGEST_START_S, 0.1, what=f"{service.name}'s API")
    except WaitTimeout:
        raise BenchError(f"{service.name} did not start:\n{_tail(service.log)}") from None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _logs(stack: Stack) -> str:
    return "".join(f"\n--- {s.name} log ---\n{_tail(s.log)}" for s in stack.services)


def _check_alive(stack: Stack) -> None:
    for s in stack.services:
        if not s.proc.alive:
            raise BenchError(f"{s.name} exited with status {s.proc.returncode}:\n{_tail(s.log)}")
    if not stack.broker.alive:
        raise BenchError(f"mosquitto exited with status {stack.broker.returncode}")


# ---------------------------------------------------------------- enrolment


def device_specs(n: int, districts: int = 0) -> list[DeviceSpec]:
    """N devices spread over districts and meter kinds, each with a fresh key seed.

    On one chain they are bench-NNNNNN in four districts; in a city of district chains the
    districts d01..dNN take turns, and a device is named after its kind and district (wm-d01-000001).
    """
    if not districts:
        return [
            DeviceSpec(f"bench-{i:06d}", DISTRICTS[i % len(DISTRICTS)], KINDS[i % len(KINDS)], os.urandom(32))
            for i in range(n)
        ]
    names, specs = district_names(districts), []
    for i in range(n):
        district, j = names[i % districts], i // districts
        kind = KINDS[j % len(KINDS)]
        specs.append(DeviceSpec(f"{KIND_PREFIX[kind]}-{district}-{j + 1:06d}", district, kind, os.urandom(32)))
    return specs


# The bench's devices publish as fast as their window lets them (hundreds a second each with few
# devices), far past the per-device budget that stops a flooding meter (ledger/service/budget.py, measured
# by bench.flood). The bench measures the ledger's throughput, so each chain's rule lifts it.
BENCH_BUDGET = 1_000_000.0


def enrol(stack: Stack, specs: list[DeviceSpec]) -> None:
    """Bulk enrolment in each device's chain, a block per chunk; fills in each spec's one-time broker password.

    Each chain's per-device budget is lifted first (BENCH_BUDGET)."""
    by_device = {s.device: s for s in specs}
    bar = ProgressBar("enrolling devices")
    done = 0
    for ingest in stack.ingests:
        ingest.api.set_budget_policy(rate=BENCH_BUDGET, burst=BENCH_BUDGET, operator="bench")
        mine = [s for s in specs if ingest.home.district in (None, s.district)]
        for start in range(0, len(mine), ENROL_CHUNK):
            chunk = mine[start : start + ENROL_CHUNK]
            rows = [
                {
                    "device": s.device,
                    "kind": s.kind,
                    "district": s.district,
                    "public_key": SigningKey(s.seed).verify_key.encode().hex(),
                }
                for s in chunk
            ]
            for login in ingest.api.enroll_devices(rows=rows)["devices"]:
                by_device[login["device"]].password = login["mqtt_password"]
            done += len(chunk)
            bar.update(done, len(specs))
    bar.close()


# ---------------------------------------------------------------- the run


def chain_readings(stack: Stack) -> tuple[int, ...]:
    return tuple(int(s.api.status()["readings"]) for s in stack.ingests)


def snapshot(stack: Stack) -> Snapshot:
    """Ledger counts and CPU clocks at (about) one moment: the status calls' midpoint."""
    t0 = time.monotonic()
    readings = chain_readings(stack)
    t1 = time.monotonic()
    return Snapshot(
        (t0 + t1) / 2,
        readings,
        tuple(tree_cpu_seconds(s.proc.pid) for s in stack.ingests),
        tree_cpu_seconds(stack.anchor.proc.pid) if stack.anchor else 0.0,
        tree_cpu_seconds(stack.broker.pid),
        own_cpu_seconds(),
        machine_busy_seconds(),
    )


def drive(stack: Stack, gen: LoadGenerator, opt: BenchOptions) -> tuple[Snapshot, Snapshot, bool]:
    """Warm up, measure `opt.seconds`, stop publishing; (window start, window end, supply ran dry)."""
    warmup = opt.warmup()
    bar = ProgressBar("bench")
    start = time.monotonic()
    gen.start_publishing()
    first: Snapshot | None = None
    dry = False
    last_check, rate_mark = start, (start, 0)
    rate = 0.0
    while True:
        gen.pump(0.05)
        now = time.monotonic()
        if first is None and now - start >= warmup:
            first = snapshot(stack)
            gen.measure_from = first.t
        if first is not None and (now - first.t >= opt.seconds or gen.exhausted == len(gen.devices)):
            dry = gen.exhausted > 0
            break
        if now - last_check >= 1.0:
            _check_alive(stack)
            last_check = now
            rate = (gen.acked_total - rate_mark[1]) / (now - rate_mark[0])
            rate_mark = (now, gen.acked_total)
        phase = "warm-up" if first is None else "measuring"
        bar.label = f"{phase:<9} {gen.acked_total:>10,} acked {rate:>8,.0f}/s"
        total = math.ceil(warmup + opt.seconds)
        bar.update(min(int(now - start), total - 1), total)  # full only once the window has closed
    assert first is not None  # the loop leaves only after the window opened
    last = snapshot(stack)
    gen.measure_until = last.t
    gen.stop_publishing()
    bar.update(math.ceil(warmup + opt.seconds), math.ceil(warmup + opt.seconds))
    bar.close()
    return first, last, dry


def drain(stack: Stack, gen: LoadGenerator, base: int, timeout: float) -> int:
    """Wait until the ledger holds every published reading; return how many the ledger gained."""
    bar = ProgressBar("waiting for the last acks")
    deadline = time.monotonic() + timeout
    last_check = 0.0
    while gen.unacked > 0:
        gen.pump(0.05)
        bar.update(gen.acked_total, gen.sent_total)
        now = time.monotonic()
        if now - last_check >= 1.0:
            _check_alive(stack)
            last_check = now
        if now > deadline:
            ledgered = sum(chain_readings(stack)) - base
            raise BenchError(
                f"after {timeout:.0f} s only {gen.acked_total:,} of {gen.sent_total:,} published "
                f"readings are acknowledged ({ledgered:,} in the ledger)"
            )
    bar.close()
    ledgered = sum(chain_readings(stack)) - base
    if ledgered != gen.sent_total:
        raise BenchError(f"{gen.sent_total:,} readings published and acknowledged, but the ledger gained {ledgered:,}")
    return ledgered


def await_anchor(stack: Stack, timeout: float) -> dict[str, Any]:
    """How many blocks the city chain's anchors trail the district heads by now (the last reading is
    ledgered), and how long the anchor then takes to anchor every head."""
    assert stack.anchor is not None
    start = time.monotonic()
    heads, anchored = anchor_state(stack)
    behind = _behind(heads, anchored)
    while any(_behind(heads, anchored).values()) and time.monotonic() - start < timeout:
        time.sleep(0.1)
        heads, anchored = anchor_state(stack)
    caught_up = None if any(_behind(heads, anchored).values()) else round(time.monotonic() - start, 2)
    return {
        "every_s": ANCHOR_EVERY_S,
        "blocks_behind_at_end": behind,
        "caught_up_s": caught_up,
        "district_heads": heads,
        "anchored_heights": anchored,
        "city_blocks": stack.anchor.api.status()["blocks"],
        "cpu_s_total": round(tree_cpu_seconds(stack.anchor.proc.pid), 2),
    }


def anchor_state(stack: Stack) -> tuple[dict[str, int], dict[str, int | None]]:
    """(each district's head height, the height the city chain anchors for it), anchors read first."""
    assert stack.anchor is not None
    anchored = {r["district"]: r["anchored_height"] for r in stack.anchor.api.districts()}
    return {str(s.home.district): s.api.status()["height"] for s in stack.ingests}, anchored


def _behind(heads: dict[str, int], anchored: dict[str, int | None]) -> dict[str, int]:
    return {d: h - (-1 if (a := anchored.get(d)) is None else a) for d, h in heads.items()}


def run(opt: BenchOptions) -> dict[str, Any]:
    """The whole benchmark on a fresh home; returns the figures (see `format_summary`)."""
    if opt.devices < 1 or opt.seconds <= 0:
        raise BenchError("--devices and --seconds must be positive")
    if opt.districts and not 2 <= opt.districts <= opt.devices:
        raise BenchError("--districts takes 2 or more districts (0: one chain), and at least a device for each")
    home, temporary = _fresh_home(opt.home)
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    ok = False
    try:
        _raise_open_files_limit(opt.devices + 1024)
        result = _run_on(home, opt)
        ok = True
    finally:
        if temporary and ok:
            shutil.rmtree(home.root, ignore_errors=True)
        elif temporary:
            print(f"bench: the run's home is kept for inspection: {home.root}", file=sys.stderr)
    result.update(
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        date=started_at.isoformat(timespec="seconds"),
        machine=machine(),
        command=opt.command,
        home=None if temporary else str(home.root),
    )
    return result


def _fresh_home(given: Path | None) -> tuple[Home, bool]:
    if given is None:
        return Home(Path(tempfile.mkdtemp(prefix="cityledger-bench-"))), True
    home = Home(given.resolve())
    if home.ledger_key.exists() or home.database.exists():
        raise BenchError(
            f"{home.root} already holds a ledger: the bench enrols thousands of devices, give it an empty directory"
        )
    return home, False


def _db_bytes(home: Home) -> int:
    wal = home.database.with_name(home.database.name + ".wal")  # none after a clean close, normally
    return sum(p.stat().st_size for p in (home.database, wal) if p.exists())


def _db_used_bytes(home: Home) -> int:
    """The blocks the ledger's data occupies, without those a checkpoint freed.

    DuckDB keeps freed blocks in the file and reuses them as the file grows, so in a
    short run on a small file they are a visible share of its size (up to 44% seen),
    and over a long-lived ledger a vanishing one.
    """
    con = duckdb.connect(str(home.database), read_only=True)
    try:
        _, _, block_size, _, used_blocks, *_ = con.execute("PRAGMA database_size").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    return int(block_size) * int(used_blocks)


def _run_on(home: Home, opt: BenchOptions) -> dict[str, Any]:
    specs = device_specs(opt.devices, opt.districts)
    window = opt.window_per_device()
    with running_stack(home, opt) as stack:
        t0 = time.monotonic()
        enrol(stack, specs)
        t1 = time.monotonic()
        supplies = presign(specs, opt.readings_per_device(), os.cpu_count() or 1)
        t2 = time.monotonic()
        verify_us, bare_us = verify_cost_us()
        prepare = {
            "enrol_s": round(t1 - t0, 1),
            "sign_s": round(t2 - t1, 1),
            "verify_s": round(time.monotonic() - t2, 1),
        }
        gen = LoadGenerator("127.0.0.1", stack.port, supplies, window)
        try:
            gen.connect()
            base = sum(chain_readings(stack))
            first, last, dry = drive(stack, gen, opt)
            ledgered = drain(stack, gen, base, opt.drain_timeout)
        except LoadError as exc:
            raise BenchError(f"{exc}{_logs(stack)}") from exc
        finally:
            gen.close()
        anchor = await_anchor(stack, opt.drain_timeout) if stack.anchor else None
        peak_rss = sum(tree_peak_rss_mb(s.proc.pid) for s in stack.services)
        statuses = [s.api.status() for s in stack.ingests]
    db_bytes = [_db_bytes(s.home) for s in stack.ingests]
    db_used = sum(_db_used_bytes(s.home) for s in stack.ingests)
    status = {k: sum(s[k] for s in statuses) for k in ("readings", "blocks", "quarantined", "duplicates")}
    status["workers"] = statuses[0]["ingest"]["workers"]  # what ingest chose, given --workers or not
    result = figures(
        opt,
        window,
        first,
        last,
        gen,
        verify_us,
        bare_us,
        peak_rss,
        sum(db_bytes),
        status,
        ledgered=ledgered,
        supply_exhausted=dry,
        db_used_bytes=db_used,
    )
    result.update(prepare=prepare, readings_signed=opt.devices * opt.readings_per_device())
    if anchor is not None:
        result["per_district"] = district_figures(stack, first, last, statuses, db_bytes)
        result["anchor"] = {
            "cpu_s": round(last.anchor_cpu - first.anchor_cpu, 2),
            **anchor,
            "city_db_bytes": _db_bytes(home),
        }
    return result


def district_figures(
    stack: Stack, first: Snapshot, last: Snapshot, statuses: list[dict[str, Any]], db_bytes: list[int]
) -> dict[str, dict[str, Any]]:
    """Each district's share: readings (in the window, and in its ledger), its chain, its ingest's CPU."""
    seconds = last.t - first.t
    out = {}
    for i, service in enumerate(stack.ingests):
        readings = last.chain_readings[i] - first.chain_readings[i]
        out[str(service.home.district)] = {
            "readings_per_s": round(readings / seconds, 1),
            "readings_in_window": readings,
            "readings": statuses[i]["readings"],
            "blocks": statuses[i]["blocks"],
            "height": statuses[i]["height"],
            "ingest_cpu_s": round(last.chain_cpu[i] - first.chain_cpu[i], 2),
            "db_bytes": db_bytes[i],
        }
    return out


def figures(
    opt: BenchOptions,
    window: int,
    first: Snapshot,
    last: Snapshot,
    gen: LoadGenerator,
    verify_us: float,
    bare_us: float,
    peak_rss: float,
    db_bytes: int,
    status: dict[str, Any],
    *,
    ledgered: int,
    supply_exhausted: bool,
    db_used_bytes: int,
) -> dict[str, Any]:
    """The JSON result: the issue's fields first, then what explains them."""
    seconds = last.t - first.t
    readings = last.readings - first.readings
    if readings <= 0:
        raise BenchError(f"nothing was ledgered in the {seconds:.1f} s window")
    ingest_us = (last.ingest_cpu - first.ingest_cpu) / readings * 1e6
    p50, p99 = gen.latencies.percentile(0.50), gen.latencies.percentile(0.99)
    if p50 is None or p99 is None:
        raise BenchError("no reading published in the window was acknowledged")
    cores = {
        name: round((getattr(last, f"{name}_cpu") - getattr(first, f"{name}_cpu")) / seconds, 2)
        for name in ("ingest", "broker", "loadgen", "machine")
    }
    cores["other"] = round(max(0.0, cores["machine"] - cores["ingest"] - cores["broker"] - cores["loadgen"]), 2)
    return {
        "readings_per_s": round(readings / seconds, 1),
        "ingest_cpu_us_per_reading": round(ingest_us, 1),
        # The raw libsodium call, not our verify_reading around it: the stricter denominator.
        "verify_us_per_signature": round(bare_us, 1),
        "ratio": round(ingest_us / bare_us, 2),
        "ack_p50_ms": round(p50 * 1000, 1),
        "ack_p99_ms": round(p99 * 1000, 1),
        "ack_max_ms": round(gen.latencies.percentile(1.0) * 1000, 1),  # type: ignore[operator]
        "bytes_per_reading": round(db_bytes / status["readings"], 1),  # the files' size on disk
        "peak_rss_mb": round(peak_rss, 1),
        "verify_reading_us": round(verify_us, 1),  # ledger.protocol.verify_reading: rebuild the message, then verify
        "window_s": round(seconds, 2),
        "readings_in_window": readings,
        "readings_total": ledgered,
        "acked_readings_timed": gen.latencies.readings,
        "cores": cores,
        "broker_cpu_us_per_reading": round((last.broker_cpu - first.broker_cpu) / readings * 1e6, 1),
        "loadgen_cpu_us_per_reading": round((last.loadgen_cpu - first.loadgen_cpu) / readings * 1e6, 1),
        "devices": opt.devices,
        "districts": opt.districts,
        "window_per_device": window,
        "workers": status["workers"],
        "block_readings": opt.block_readings,
        "block_seconds": opt.block_seconds,
        "blocks": status["blocks"],
        "quarantined": status["quarantined"],
        "duplicates": status["duplicates"],
        "db_bytes": db_bytes,
        "used_bytes_per_reading": round(db_used_bytes / status["readings"], 1),  # without freed blocks
        "supply_exhausted": supply_exhausted,
        "bottleneck": bottleneck(os.cpu_count() or 1, cores, supply_exhausted, window),
    }


ONE_CORE = 0.95  # a single-threaded part (Mosquitto, the load generator) this busy is the limit itself
SATURATED = 0.9  # the machine this busy: its cores, shared by all the parts, set the rate


def bottleneck(cpus: int, cores: dict[str, float], supply_exhausted: bool, window: int) -> dict[str, Any]:
    """What set the rate of this run, so that a figure is not read as ingest's when it was not.

    Everything shares one machine. The generator and Mosquitto each run on one thread: one of
    them using a whole core set the rate, whatever ingest could do. Otherwise, the machine's
    cores all busy set it: then `cpu_share` says which part took how much of them. Cores to
    spare mean the devices waited for acks: their window of unacknowledged readings did.
    """
    spent = sum(cores[k] for k in ("ingest", "broker", "loadgen", "other")) or 1.0
    share = {k: round(cores[k] / spent, 2) for k in ("ingest", "broker", "loadgen", "other")}
    busy = round(cores["machine"] / cpus, 2)
    if supply_exhausted:
        limit, why = "generator", "the devices ran out of pre-signed readings"
    elif cores["loadgen"] >= ONE_CORE:
        limit, why = "generator", f"the load generator kept one core busy ({cores['loadgen']})"
    elif cores["broker"] >= ONE_CORE:
        limit, why = "broker", f"Mosquitto kept one core busy ({cores['broker']})"
    elif busy >= SATURATED:
        limit, why = "cores", f"the machine's {cpus} cores were {busy:.0%} busy; ingest took {share['ingest']:.0%}"
    else:
        limit, why = (
            "window",
            f"cores to spare ({busy:.0%} busy): devices waited for acks ({window} unacknowledged each)",
        )
    return {"limit": limit, "why": why, "machine_busy": busy, "cpu_share": share}


# ---------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), 0
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024**2, 1),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "mosquitto": _mosquitto_version(),
        "duckdb": _version("duckdb"),
        "pynacl": _version("pynacl"),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _mosquitto_version() -> str:
    try:
        out = subprocess.run([mosquitto.mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return "unknown"
    first = (out.stdout or out.stderr).splitlines()
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"


def format_summary(r: dict[str, Any]) -> str:
    m, c, p = r["machine"], r["cores"], r["prepare"]
    lines = [
        f"cityledger bench: {r['devices']:,} devices"
        + (f" in {r['districts']} district chains" if r.get("districts") else "")
        + f", {r['window_s']:.1f} s measured "
        f"(window {r['window_per_device']} unacknowledged readings per device, "
        f"blocks of {r['block_readings']:,} or {r['block_seconds']} s, workers {r['workers'] or 'none'})",
        f"  ledgered readings per second, sustained   {r['readings_per_s']:>12,.0f}",
        f"  publish-to-ack latency p50 / p99 / max    {r['ack_p50_ms']:,.0f} / {r['ack_p99_ms']:,.0f} / "
        f"{r['ack_max_ms']:,.0f} ms",
        f"  ingest CPU per reading (user+sys)         {r['ingest_cpu_us_per_reading']:>12.1f} µs",
        f"  raw Ed25519 verify per signature, this run {r['verify_us_per_signature']:>11.1f} µs",
        f"  ratio                                     {r['ratio']:>12.2f}",
        f"  ingest peak memory (sum of VmHWM)         {r['peak_rss_mb']:>12.1f} MB",
        f"  DuckDB bytes per reading                  {r['bytes_per_reading']:>12.1f}"
        f" (in use: {r['used_bytes_per_reading']:.1f}; DuckDB reuses the freed blocks as the file grows)",
        f"  cores busy: ingest {c['ingest']}, broker {c['broker']}, load generator {c['loadgen']}, "
        f"other processes {c['other']} (of {m['cpus']})",
        f"  what set the rate: {r['bottleneck']['limit']} ({r['bottleneck']['why']})",
        f"  preparation: enrolment {p['enrol_s']} s, signing {p['sign_s']} s "
        f"({r['readings_signed']:,} readings), verify timing {p['verify_s']} s",
        f"  readings: {r['readings_in_window']:,} in the window, {r['readings_total']:,} in all; "
        f"{r['blocks']:,} blocks; quarantined {r['quarantined']}, duplicates {r['duplicates']}",
        f"  machine: {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, {m['system']}, Python {m['python']}, "
        f"Mosquitto {m['mosquitto']}, DuckDB {m['duckdb']}",
        f"  load average before / after: {r['load_before']} / {r['load_after']}",
        f"  command: {r['command']}",
    ]
    if r.get("districts"):
        lines[-3:-3] = district_lines(r)  # before the machine, the load and the command
    if r["supply_exhausted"]:
        lines.append(
            "  NOTE: devices ran out of pre-signed readings before the window ended; "
            f"the supply is sized for {SUPPLY_RATE:,}/s"
        )
    return "\n".join(lines)


def district_lines(r: dict[str, Any]) -> list[str]:
    """The per-district breakdown and the anchor, for the summary."""
    a = r["anchor"]
    lines = [
        f"  {'district':<10} {'readings/s':>10} {'in window':>10} {'readings':>10} {'blocks':>7} "
        f"{'height':>7} {'ingest CPU s':>13}"
    ]
    lines += [
        f"  {d:<10} {x['readings_per_s']:>10,.0f} {x['readings_in_window']:>10,} {x['readings']:>10,} "
        f"{x['blocks']:>7,} {x['height']:>7,} {x['ingest_cpu_s']:>13.2f}"
        for d, x in r["per_district"].items()
    ]
    behind = sum(a["blocks_behind_at_end"].values())
    caught = (
        f"every head anchored {a['caught_up_s']} s later"
        if a["caught_up_s"] is not None
        else "NOT caught up with the district heads"
    )
    lines.append(
        f"  anchor every {a['every_s']} s: {a['cpu_s']} CPU s in the window (counted as ingest CPU), "
        f"{a['city_blocks']:,} city blocks; {behind} district blocks not yet anchored when the last "
        f"reading was ledgered, {caught}"
    )
    return lines


def options_from_args(args: argparse.Namespace, home_given: bool) -> BenchOptions:
    return BenchOptions(
        seconds=args.seconds,
        devices=args.devices,
        window=args.window,
        workers=args.workers,
        block_readings=args.block_readings,
        block_seconds=args.block_seconds,
        home=Path(args.home) if home_given else None,
        districts=getattr(args, "districts", 0) or 0,
        command="cityledger " + shlex.join(sys.argv[1:]),
    )


def main(args: argparse.Namespace, home_given: bool) -> int:
    """The `cityledger bench` command: JSON on stdout with --json, else a readable summary."""
    return report(lambda: run(options_from_args(args, home_given)), format_summary, args.json)


def report(measure: Callable[[], dict[str, Any]], summary: Callable[[dict[str, Any]], str], as_json: bool) -> int:
    """Run a benchmark and print its result; a BenchError is the one failure a user sees, exit 1."""
    try:
        result = measure()
    except BenchError as exc:
        print(f"cityledger bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if as_json else summary(result))
    return 0


if __name__ == "__main__":  # pragma: no cover - `cityledger bench` is the entry point
    print("run `cityledger bench --help`", file=sys.stderr)
    sys.exit(2)
