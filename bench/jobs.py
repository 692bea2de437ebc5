"""`cityledger bench --job JOB`: does a heavy job hold up sealing? (issue 14, point 2)

    cityledger bench --job all [--seconds 30] [--devices 1000] [--workers 2] [--history-devices 1000]
                     [--history-days 21] [--json]

The scheduler runs audits, anomaly scans, roll-ups and the month-end close, and the
dashboard checks passwords, all inside the one ingest process that also seals. This
bench measures what each costs the sealing, on a ledger with weeks of history:

1. A fresh home is filled with `--history-days` of 15-minute readings from
   `--history-devices` meters (a household per three meters), before any ingest runs:
   real device keys and signatures (signed on every core), real Merkle roots and
   ledger-signed headers, inserted with Arrow. So `verify`, `verify --deep`, the scan,
   the roll-up and the close each do the work they do in a city, seconds of it.
2. The standard load of `cityledger bench` (bench/city.py: the real Mosquitto, the real
   `cityledger ingest`, the raw-socket load generator, its window) runs on top.
3. Phase by phase: a baseline with no job, then each job called over and over through
   the real API from a process of its own (as the scheduler calls it:
   `open_ledger(home).<method>()`), for `--seconds`. Between phases the load stops, every
   reading is acknowledged and the job's last call returns, so no phase inherits another's.

Per phase it reports:
- seal gap p50 / p99 / max: the time between consecutive blocks' `sealed_at` (the
  header's own clock) for the blocks sealed in the window and the first one after it.
  Under load ingest seals a block every few hundred ms; a job that holds the writer's
  lock or the GIL shows as a long gap. This is the "block seal latency" of the issue.
- ack p50 / p99: publish-to-ack latency of the readings published in the window.
- readings/s ledgered in the window, ingest cores used (ingest and its workers).
- ingest peak RSS: the sum of VmHWM over ingest and its workers, reset (clear_refs) at
  the start of the phase, read when the job's last call has returned.
- the job's calls: how many, and how long each took.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import multiprocessing
import os
import queue
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
from nacl.signing import SigningKey

from bench.city import (
    DISTRICTS,
    KINDS,
    BenchError,
    BenchOptions,
    Stack,
    _check_alive,
    _logs,
    _raise_open_files_limit,
    chain_readings,
    device_specs,
    enrol,
    machine,
    machine_busy_seconds,
    own_cpu_seconds,
    presign,
    process_tree,
    report,
    running_stack,
    tree_cpu_seconds,
    tree_peak_rss_mb,
)
from bench.loadgen import Latencies, LoadError, LoadGenerator, weighted_percentile
from ledger.chain.blocks import block_hash, make_header, sign_header
from ledger.chain.protocol import READING_CONTEXT, canonical_json
from ledger.clock import now_ms
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.progress import ProgressBar
from ledger.service.rpc import open_ledger
from ledger.service.writer import LedgerWriter
from ledger.store.sqlaudit import READING_LEAF_SQL

JOBS = ("audit", "deep-audit", "scan", "roll-up", "close", "sign-in")
STEP_MS = 900_000  # the history's cadence: a reading every 15 minutes
SIGN_INS = 16  # concurrent password checks per sign-in round
PASSWORD = "bench sign-in password"
# The load runs only during phases (warm-up + window), so the supply is sized for the phases:
# above what this machine ledgers under load (docs/benchmarks.md: 9,000-17,000/s, 16,000 seen here).
SUPPLY_RATE = 20_000
WARMUP_S = 3.0
HASH_BLOCKS = 250  # history blocks hashed per query while the headers are made
_UNSIGNED = '{{"device":"{d}","kind":"{k}","seq":{s},"ts":{t},"v":1,"value":{v}}}'
_RATE = {"water": 5, "electricity": 50, "gas": 5}  # register units per 15 minutes, about


@dataclass(frozen=True)
class JobsOptions:
    jobs: tuple[str, ...] = JOBS
    seconds: float = 30.0  # measured per phase
    load: BenchOptions = BenchOptions()  # the standard bench load (devices, window, workers, blocks)
    history_devices: int = 1000
    history_days: float = 21.0
    extra_accounts: int = 0  # accounts without meters: bills for the close to issue (5,000 to a block)
    home: Path | None = None
    command: str = ""

    def readings_per_device(self) -> int:
        phases = 1 + len(self.jobs)
        return (
            math.ceil(self.load.supply_rate * phases * (WARMUP_S + self.seconds) / self.load.devices)
            + self.load.window_per_device()
        )


# ---------------------------------------------------------------- the history


def history_plan(devices: int, days: float, end_ms: int) -> tuple[int, int]:
    """(first timestamp, steps): 15-minute steps ending an hour before `end_ms` (so nothing looks silent yet)."""
    steps = max(1, int(days * 96))
    return end_ms - 3_600_000 - steps * STEP_MS, steps


def history_values(kind: str, i: int, steps: int) -> np.ndarray:
    """A meter's register over the steps: its own rate, more by day than by night, never backwards."""
    rate = _RATE[kind] * (1 + i % 4)
    n = np.arange(steps, dtype=np.int64)
    hour = (n // 4) % 24
    use = np.where((hour >= 1) & (hour < 5), 0, rate) + (n * 7 + i) % 3
    return 1_000 + np.cumsum(use)


def sign_history(task: tuple[str, str, bytes, int, int, bytes]) -> tuple[str, bytes]:
    """(device, 64-byte signatures of seqs 1..steps back to back); runs in a pool worker."""
    device, kind, seed, t0, steps, values = task
    sign = SigningKey(seed).sign
    vals = np.frombuffer(values, dtype=np.int64)
    sigs = [
        sign(
            READING_CONTEXT + _UNSIGNED.format(d=device, k=kind, s=n + 1, t=t0 + n * STEP_MS, v=int(vals[n])).encode()
        ).signature
        for n in range(steps)
    ]
    return device, b"".join(sigs)


def history_device(i: int) -> tuple[str, str, str, str]:
    """(device, kind, district, account) of history meter i: households of a water, an electricity and a gas meter."""
    kind = KINDS[i % len(KINDS)]
    return f"hist-{i:06d}", kind, DISTRICTS[(i // 3) % len(DISTRICTS)], f"hh-{i // 3:06d}"


def fabricate_history(home: Home, devices: int, days: float, end_ms: int, extra_accounts: int = 0) -> dict[str, Any]:
    """Enrol the meters (real entries), then ledger their signed readings, a block per 15-minute step.

    `extra_accounts`: accounts without a meter, whose (empty) bills the close issues all the same.
    """
    started = time.perf_counter()
    initialize(home)
    t0, steps = history_plan(devices, days, end_ms)
    meters = [history_device(i) for i in range(devices)]
    seeds = [os.urandom(32) for _ in meters]
    values = [history_values(kind, i, steps) for i, (_, kind, _, _) in enumerate(meters)]
    writer = LedgerWriter.open(home)
    try:
        con = writer.store.con
        accounts = sorted({m[3] for m in meters})
        con.executemany(
            "INSERT INTO accounts VALUES (?, ?, 'residential', ?)", [[a, f"Household {a}", t0] for a in accounts]
        )
        con.execute(
            "INSERT INTO accounts SELECT 'hx-' || lpad(i::VARCHAR, 7, '0'), 'Household x' || i, 'residential', ?"
            " FROM range(?) t(i)",
            [t0, extra_accounts],
        )
        for start in range(0, devices, 2000):
            writer.enroll_devices(
                [
                    {
                        "device": d,
                        "kind": k,
                        "district": di,
                        "account": a,
                        "public_key": SigningKey(seeds[start + j]).verify_key.encode().hex(),
                    }
                    for j, (d, k, di, a) in enumerate(meters[start : start + 2000])
                ]
            )
        base, prev = writer.height + 1, writer.head_hash
        sigs = _sign_all(meters, seeds, values, t0, steps)
        _insert_readings(con, meters, values, sigs, base, t0, steps)
        _seal_history(con, writer, base, prev, t0, steps)
    finally:
        writer.close()
    return {
        "devices": devices,
        "accounts": len(accounts) + extra_accounts,
        "days": days,
        "readings": devices * steps,
        "blocks": steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _sign_all(
    meters: list[tuple[str, str, str, str]], seeds: list[bytes], values: list[np.ndarray], t0: int, steps: int
) -> dict[str, bytes]:
    tasks = [(d, k, seed, t0, steps, v.tobytes()) for (d, k, _, _), seed, v in zip(meters, seeds, values)]
    out: dict[str, bytes] = {}
    bar = ProgressBar("signing history (devices)")
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        for device, sigs in pool.imap_unordered(sign_history, tasks, chunksize=4):
            out[device] = sigs
            bar.update(len(out), len(tasks))
    bar.close()
    return out


def _insert_readings(
    con: duckdb.DuckDBPyConnection,
    meters: list[tuple[str, str, str, str]],
    values: list[np.ndarray],
    sigs: dict[str, bytes],
    base: int,
    t0: int,
    steps: int,
) -> None:
    """Step n's readings are block base + n, in device order (idx), received half a second after their ts."""
    bar = ProgressBar("inserting history")
    n = np.arange(steps, dtype=np.int64)
    for i, (device, kind, _, _) in enumerate(meters):
        raw = sigs[device]
        table = pa.table(
            {
                "height": pa.array(base + n),
                "idx": pa.array(np.full(steps, i, np.int32)),
                "device": pa.array([device] * steps),
                "kind": pa.array([kind] * steps),
                "seq": pa.array(n + 1),
                "ts": pa.array(t0 + n * STEP_MS),
                "value": pa.array(values[i]),
                "sig": pa.array([raw[j * 64 : (j + 1) * 64] for j in range(steps)], pa.binary()),
                "received_at": pa.array(t0 + n * STEP_MS + 500),
            }
        )
        con.register("_hist", table)
        con.execute(
            "INSERT INTO _stage SELECT * FROM _hist" if i else "CREATE TEMP TABLE _stage AS SELECT * FROM _hist"
        )
        con.unregister("_hist")
        bar.update(i + 1, len(meters) + 1)
    con.execute("INSERT INTO readings SELECT * FROM _stage ORDER BY height, idx")  # arrival order, as ingest stores
    con.execute("DROP TABLE _stage")
    bar.update(len(meters) + 1, len(meters) + 1)
    bar.close()


def _seal_history(
    con: duckdb.DuckDBPyConnection, writer: LedgerWriter, base: int, prev: str, t0: int, steps: int
) -> None:
    """Each step's header: the Merkle root of its leaves (hashed in DuckDB, as `verify` hashes them), signed."""
    bar = ProgressBar("sealing history")
    for lo in range(base, base + steps, HASH_BLOCKS):
        hi = min(base + steps, lo + HASH_BLOCKS) - 1
        rows = con.execute(
            f"SELECT height, sha256({READING_LEAF_SQL}) FROM readings WHERE height BETWEEN ? AND ?"
            " ORDER BY height, idx",
            [lo, hi],
        ).fetchall()
        leaves: dict[int, list[bytes]] = {}
        for height, digest in rows:
            leaves.setdefault(height, []).append(bytes.fromhex(digest))
        blocks = []
        for height in range(lo, hi + 1):
            sealed_at = t0 + (height - base) * STEP_MS + 60_000
            header = make_header(height=height, prev=prev, leaf_hashes=leaves[height], sealed_at=sealed_at, v=1)
            digest = block_hash(header)
            blocks.append(
                (
                    height,
                    digest,
                    prev,
                    canonical_json(header).decode(),
                    sign_header(writer.key, header),
                    header["size"],
                    sealed_at,
                )
            )
            prev = digest
        cols = list(zip(*blocks))
        con.register(
            "_blocks",
            pa.table(
                {
                    "height": pa.array(cols[0], pa.int64()),
                    "hash": cols[1],
                    "prev": cols[2],
                    "header": cols[3],
                    "sig": pa.array(cols[4], pa.binary()),
                    "size": pa.array(cols[5], pa.int32()),
                    "sealed_at": pa.array(cols[6], pa.int64()),
                }
            ),
        )
        con.execute("INSERT INTO blocks SELECT * FROM _blocks")
        con.unregister("_blocks")
        bar.update(hi - base + 1, steps)
    bar.close()


# ---------------------------------------------------------------- the jobs, from another process


def previous_month(now_ms: int, tz: str = "Asia/Shanghai") -> str:
    """The month the scheduler's close would issue now."""
    first = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(tz)).date().replace(day=1)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


def call_job(ledger: Any, job: str, month: str, login: str) -> int:
    """One run of `job` through the API, as the scheduler (or, for sign-in, the dashboard) makes it.

    Returns how many connections the API refused (a full listen queue) and were tried again.
    """
    if job == "audit":
        ledger.verify()
    elif job == "deep-audit":
        ledger.verify(deep=True)
    elif job == "scan":
        ledger.scan_anomalies()
    elif job == "roll-up":
        ledger.roll_up()
    elif job == "close":
        ledger.close_month(month=month)
    elif job == "sign-in":
        failed: list[BaseException] = []
        refused = 0

        def sign_in() -> None:
            nonlocal refused
            deadline = time.monotonic() + 60
            try:
                while True:
                    try:
                        found = ledger.authenticate(role="citizen", principal=login, password=PASSWORD)
                        break
                    except BlockingIOError:  # the API's listen queue is full: the dashboard would retry too
                        refused += 1
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                if found.get("outcome") != "signed_in":
                    raise RuntimeError("the right password was refused")
            except Exception as exc:
                failed.append(exc)

        threads = [threading.Thread(target=sign_in) for _ in range(SIGN_INS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise RuntimeError(
                f"{len(failed)} of {SIGN_INS} sign-ins failed, first: {type(failed[0]).__name__}: {failed[0]}"
            )
        return refused
    else:
        raise ValueError(f"no job {job!r}")
    return 0


def job_loop(home_root: str, job: str, month: str, login: str, stop: Any, results: Any) -> None:
    """Run `job` again and again until `stop` is set; put (durations, first errors, errors, refused) on `results`."""
    ledger = open_ledger(Home(Path(home_root)))
    durations: list[float] = []
    errors: list[str] = []
    refused = 0
    while not stop.is_set():
        t = time.monotonic()
        try:
            refused += call_job(ledger, job, month, login)
        except Exception as exc:  # reported with the figures: a failing job must not pass for a fast one
            errors.append(f"{type(exc).__name__}: {exc}")
            stop.wait(1.0)
        durations.append(time.monotonic() - t)
    results.put((durations, errors[:5], len(errors), refused))


# ---------------------------------------------------------------- measuring


def window_gaps(heights_sealed: Sequence[tuple[int, int]], start_ms: int, end_ms: int) -> list[int]:
    """Gaps ending at a block sealed in [start_ms, end_ms], and the gap to the first block after it.

    `heights_sealed`: (height, sealed_at) in height order. The gap that spans the window's
    end counts, so a stall that the window's end cuts short is still seen.
    """
    times = [s for _, s in heights_sealed]
    gaps = []
    for a, b in zip(times, times[1:]):
        if start_ms <= b <= end_ms or (a <= end_ms < b):
            gaps.append(b - a)
    return gaps


def percentile(values: Sequence[float], q: float) -> float | None:
    return weighted_percentile([(float(v), 1) for v in values], q)


def reset_peak_rss(root: int) -> None:
    """Start VmHWM afresh for `root` and its descendants (Linux: clear_refs 5), so a phase sees its own peak."""
    for pid in process_tree(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass  # gone, or not ours: its peak then stays as it was


@dataclass
class Phase:
    job: str  # "baseline" for no job
    window_s: float = 0.0
    readings: int = 0
    cpu_s: float = 0.0
    gaps_ms: list[int] | None = None
    latencies: Latencies | None = None
    peak_rss_mb: float = 0.0
    durations: list[float] | None = None
    errors: list[str] | None = None
    failed_runs: int = 0
    refused: int = 0  # connections the API refused and the job tried again
    other_cpu_s: float = 0.0  # CPU the machine spent outside this bench's processes during the window
    dry: bool = False

    def figures(self) -> dict[str, Any]:
        gaps, lat, runs = self.gaps_ms or [], self.latencies or Latencies(), self.durations or []

        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1000, 1)

        return {
            "job": self.job,
            "seal_gap_p50_ms": percentile(gaps, 0.5),
            "seal_gap_p99_ms": percentile(gaps, 0.99),
            "seal_gap_max_ms": max(gaps, default=None),
            "blocks": len(gaps),
            "ack_p50_ms": ms(lat.percentile(0.5)),
            "ack_p99_ms": ms(lat.percentile(0.99)),
            "ack_max_ms": ms(lat.percentile(1.0)),
            "readings_per_s": round(self.readings / self.window_s, 1) if self.window_s else 0.0,
            "ingest_cores": round(self.cpu_s / self.window_s, 2) if self.window_s else 0.0,
            # Cores other processes on the machine took: a busy neighbour makes a noisy phase.
            "other_cores": round(self.other_cpu_s / self.window_s, 2) if self.window_s else 0.0,
            "ingest_peak_rss_mb": round(self.peak_rss_mb, 1),
            "job_runs": len(runs),
            "job_s_median": round(statistics.median(runs), 2) if runs else None,
            "job_s_max": round(max(runs), 2) if runs else None,
            "job_errors": self.errors or [],
            "job_failed_runs": self.failed_runs,
            "api_connections_refused": self.refused,
            "window_s": round(self.window_s, 2),
            "supply_exhausted": self.dry,
        }


def run_phase(stack: Stack, gen: LoadGenerator, job: str, opt: JobsOptions, month: str, login: str) -> Phase:
    """Warm up the load, start the job's process, measure `opt.seconds`, then let both finish."""
    ingest = stack.ingests[0]
    phase = Phase(job)
    bar = ProgressBar(f"{job:<10}")
    total = math.ceil(WARMUP_S + opt.seconds)
    started = time.monotonic()
    gen.start_publishing()
    _pump(stack, gen, WARMUP_S, bar, started, total)
    reset_peak_rss(ingest.proc.pid)
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    runner = None
    if job != "baseline":
        runner = ctx.Process(
            target=job_loop,
            args=(str(stack.home.root), job, month, login, stop, results),
            name=f"bench-job-{job}",
            daemon=True,
        )
        runner.start()
    h0 = ingest.api.status()["height"]
    r0, cpu0, t0, wall0 = chain_readings(stack)[0], tree_cpu_seconds(ingest.proc.pid), time.monotonic(), now_ms()
    rest0 = _rest_cpu(stack, runner)
    gen.latencies, gen.measure_from, gen.measure_until = Latencies(), t0, float("inf")
    _pump(stack, gen, opt.seconds, bar, started, total)
    r1, cpu1, t1, wall1 = chain_readings(stack)[0], tree_cpu_seconds(ingest.proc.pid), time.monotonic(), now_ms()
    rest1 = _rest_cpu(stack, runner)
    phase.other_cpu_s = max(0.0, (rest1[0] - rest0[0]) - (rest1[1] - rest0[1]) - (cpu1 - cpu0))
    gen.measure_until = t1
    phase.window_s, phase.readings, phase.cpu_s = t1 - t0, r1 - r0, cpu1 - cpu0
    phase.dry = gen.exhausted > 0
    gen.stop_publishing()
    stop.set()
    bar.label = f"{job:<10} waiting for the job's last call and the last acks"
    deadline = time.monotonic() + max(600.0, opt.load.drain_timeout)
    outcome = None
    while gen.unacked > 0 or (runner is not None and outcome is None):
        gen.pump(0.05)
        bar.update(total - 1, total)
        if runner is not None and outcome is None and not results.empty():
            outcome = results.get()  # read before joining: a child exits only once its queue is drained
        if runner is not None and outcome is None and not runner.is_alive():
            try:
                outcome = results.get(timeout=5)  # it may have put its result just before it exited
            except queue.Empty:
                raise BenchError(f"phase {job}: the job's process died (exit code {runner.exitcode})") from None
        if time.monotonic() > deadline:
            raise BenchError(f"phase {job}: the job or the acks did not finish in time{_logs(stack)}")
    if runner is not None and outcome is not None:
        phase.durations, phase.errors, phase.failed_runs, phase.refused = outcome
        runner.join(30)
    phase.peak_rss_mb = tree_peak_rss_mb(ingest.proc.pid)
    h1 = ingest.api.status()["height"]
    sealed = _sealed_at(ingest.api, h0, h1)
    phase.gaps_ms = window_gaps(sealed, wall0, wall1)
    phase.latencies = gen.latencies
    bar.update(total, total)
    bar.close()
    return phase


def _rest_cpu(stack: Stack, runner: Any) -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, of this bench's processes apart from ingest): the broker,
    the load generator (this process) and the job's process."""
    ours = tree_cpu_seconds(stack.broker.pid) + own_cpu_seconds()
    if runner is not None and runner.pid is not None:
        ours += tree_cpu_seconds(runner.pid)
    return machine_busy_seconds(), ours


def _pump(stack: Stack, gen: LoadGenerator, seconds: float, bar: ProgressBar, started: float, total: int) -> None:
    end, last_check = time.monotonic() + seconds, 0.0
    while (now := time.monotonic()) < end:
        gen.pump(0.05)
        if now - last_check >= 1.0:
            _check_alive(stack)
            last_check = now
        bar.update(min(int(now - started), total - 1), total)


def _sealed_at(api: Any, first: int, last: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo in range(first, last + 1, 10_000):
        hi = min(last, lo + 9_999)
        out += [(h["height"], h["sealed_at"]) for h in api.headers(first=lo, last=hi)]
    return out


# ---------------------------------------------------------------- the run


def run(opt: JobsOptions) -> dict[str, Any]:
    unknown = set(opt.jobs) - set(JOBS)
    if unknown:
        raise BenchError(f"no such job: {', '.join(sorted(unknown))} (jobs: {', '.join(JOBS)}, or all)")
    if opt.load.districts:
        raise BenchError("--job measures one chain: leave out --districts")
    if opt.load.devices < 1 or opt.seconds <= 0 or opt.history_devices < 3 or opt.history_days <= 0:
        raise BenchError("--devices, --seconds and --history-days must be positive, --history-devices at least 3")
    given = opt.home is not None
    root = opt.home.resolve() if opt.home else Path(tempfile.mkdtemp(prefix="cityledger-bench-jobs-"))
    home = Home(root)
    if home.ledger_key.exists() or home.database.exists():
        raise BenchError(f"{home.root} already holds a ledger: give the bench an empty directory")
    load_before, started_at, ok = os.getloadavg(), datetime.now(dt.UTC), False
    try:
        _raise_open_files_limit(opt.load.devices + 1024)
        result = _run_on(home, opt)
        ok = True
    finally:
        if not given and ok:
            shutil.rmtree(root, ignore_errors=True)
        elif not given:
            print(f"bench: the run's home is kept for inspection: {root}", file=sys.stderr)
    result.update(
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        date=started_at.isoformat(timespec="seconds"),
        machine=machine(),
        command=opt.command,
        home=str(root) if given else None,
    )
    return result


def _run_on(home: Home, opt: JobsOptions) -> dict[str, Any]:
    now = now_ms()
    history = fabricate_history(home, opt.history_devices, opt.history_days, now, opt.extra_accounts)
    specs = device_specs(opt.load.devices)
    month, login = previous_month(now), history_device(0)[3]
    with running_stack(home, opt.load) as stack:
        api = stack.ingests[0].api
        enrol(stack, specs)
        api.set_password(role="citizen", principal=login, password=PASSWORD)
        t = time.monotonic()
        supplies = presign(specs, opt.readings_per_device(), os.cpu_count() or 1)
        sign_s = time.monotonic() - t
        gen = LoadGenerator("127.0.0.1", stack.port, supplies, opt.load.window_per_device())
        phases = []
        try:
            gen.connect()
            for job in ("baseline", *opt.jobs):
                phases.append(run_phase(stack, gen, job, opt, month, login).figures())
        except LoadError as exc:
            raise BenchError(f"{exc}{_logs(stack)}") from exc
        finally:
            gen.close()
        status = api.status()
    return {
        "phases": phases,
        "history": history,
        "close_month": month,
        "devices": opt.load.devices,
        "workers": opt.load.workers,
        "window_per_device": opt.load.window_per_device(),
        "block_readings": opt.load.block_readings,
        "block_seconds": opt.load.block_seconds,
        "seconds": opt.seconds,
        "readings": status["readings"],
        "blocks": status["blocks"],
        "quarantined": status["quarantined"],
        "duplicates": status["duplicates"],
        "sign_s": round(sign_s, 1),
        "readings_signed": opt.load.devices * opt.readings_per_device(),
    }


def format_summary(r: dict[str, Any]) -> str:
    h, m = r["history"], r["machine"]
    lines = [
        f"cityledger bench --job: {r['devices']:,} devices of load (window {r['window_per_device']} per device, "
        f"workers {r['workers'] if r['workers'] is not None else 'default'}), {r['seconds']:.0f} s per job, on "
        f"{h['readings']:,} readings of history ({h['devices']:,} meters, {h['accounts']:,} accounts, {h['days']} days, {h['blocks']:,} blocks; "
        f"made in {h['seconds']} s); close month {r['close_month']}",
        f"  {'job':<10} {'seal gap p50/p99/max ms':>24} {'ack p50/p99 ms':>16} {'readings/s':>10} "
        f"{'ingest cores':>12} {'peak RSS MB':>11} {'job runs, median s':>19} {'other cores':>11}",
    ]
    for p in r["phases"]:
        gap = f"{_n(p['seal_gap_p50_ms'])} / {_n(p['seal_gap_p99_ms'])} / {_n(p['seal_gap_max_ms'])}"
        ack = f"{_n(p['ack_p50_ms'])} / {_n(p['ack_p99_ms'])}"
        runs = f"{p['job_runs']}, {p['job_s_median']}" if p["job"] != "baseline" else "-"
        lines.append(
            f"  {p['job']:<10} {gap:>24} {ack:>16} {p['readings_per_s']:>10,.0f} {p['ingest_cores']:>12} "
            f"{p['ingest_peak_rss_mb']:>11,.0f} {runs:>19} {p.get('other_cores', 0):>11}"
        )
        if p["job_errors"]:
            lines.append(f"    ERRORS in {p['job_failed_runs']} runs: {p['job_errors']}")
        if p["api_connections_refused"]:
            lines.append(
                f"    the API refused {p['api_connections_refused']:,} connections (listen queue full); "
                "each was tried again after 50 ms"
            )
        if p["supply_exhausted"]:
            lines.append("    NOTE: devices ran out of pre-signed readings in this window")
    lines += [
        f"  readings {r['readings']:,} in {r['blocks']:,} blocks; quarantined {r['quarantined']}, "
        f"duplicates {r['duplicates']}",
        f"  machine: {m['cpus']} x {m['cpu_model']}, {m['memory_gib']} GiB, {m['system']}, Python {m['python']}, "
        f"Mosquitto {m['mosquitto']}, DuckDB {m['duckdb']}",
        f"  load average before / after: {r['load_before']} / {r['load_after']}",
        f"  command: {r['command']}",
    ]
    return "\n".join(lines)


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def options_from_args(args: argparse.Namespace, home_given: bool) -> JobsOptions:
    named = [j.strip() for arg in args.job for j in arg.split(",") if j.strip()]
    jobs = tuple(JOBS) if "all" in named else tuple(dict.fromkeys(named))
    load = BenchOptions(
        devices=args.devices,
        window=args.window,
        workers=args.workers,
        block_readings=args.block_readings,
        block_seconds=args.block_seconds,
    )
    opt = JobsOptions(
        jobs=jobs,
        seconds=args.seconds,
        load=load,
        history_devices=args.history_devices,
        history_days=args.history_days,
        extra_accounts=getattr(args, "extra_accounts", 0) or 0,
        home=Path(args.home) if home_given else None,
        command="cityledger " + shlex.join(sys.argv[1:]),
    )
    return replace(opt, load=replace(load, supply_rate=SUPPLY_RATE))


def main(args: argparse.Namespace, home_given: bool) -> int:
    """`cityledger bench --job …`: JSON on stdout with --json, else a readable summary."""
    return report(lambda: run(options_from_args(args, home_given)), format_summary, args.json)
