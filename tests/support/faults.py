"""Fault injection against real processes: a fleet, a broker, an ingest, and an exact count.

`FaultLab` runs the project's Mosquitto and `cityledger ingest` (tests.support.stack.Stack)
plus `cityledger fleet` as a subprocess, exactly as an operator starts them. A test
injects a fault (kill -9 a process, stop the broker, cut the edge off through
`EdgeProxy`, keep ingest down), ends it, and then asks two questions:

1. How long until the ledger caught up? `fault_over()` notes, per device, the
   highest seq the fleet had generated at the end of the fault; `wait_recovered()`
   waits until every device's outbox records an end-to-end `ack` at or above that
   seq (PROTOCOL.md section 1: the ack says the ledger holds everything up to it).
   The time from the end of the fault to that moment is the time to recover.

2. Was anything lost or doubled? For that the set of readings must stop growing and
   every one of them must be acknowledged, which a running fleet never offers (it
   always has a reading in flight). `settle()` therefore stops the fleet cleanly
   (SIGTERM: the outbox keeps whatever was not acked), then runs it again with
   `--interval 3600`. On connect every agent learns its retained ack and re-sends its
   whole unacknowledged backlog (edge/agent.py `_on_connect` rewinds the send cursor
   to the ack), and at that interval it measures at most a few new readings (the
   schedule gives device i its first measurement at i * 3600/N s, so device 0 once
   at start). Once the outbox is empty the fleet is stopped again; if it measured
   something in between, the round repeats. When the fleet is stopped and its
   outbox is empty, every reading it ever generated has been acknowledged.

   `outcome()` then stops ingest (DuckDB lets nobody else open the file while it
   runs), and compares, for every device of the fleet, seqs 1..last_seq from the
   outbox (seqs are allocated contiguously, in the same transaction that stores
   the reading) with the (device, seq) multiset in the `readings` table, opened
   read-only. It runs `cityledger verify --deep` and `cityledger status --json`
   (for the duplicates the ledger collapsed).

The outbox is read through its own read-only SQLite connection (WAL allows a
reader beside the fleet's writer), never through edge.outbox.Outbox, which would
write.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from broker import mosquitto
from edge.fleet import OUTBOX_FILE, plan_fleet
from ledger.processes import STDOUT, Child, start
from tests.support.broker import wait_for
from tests.support.stack import Stack

T = TypeVar("T")

DISTRICTS = ("d01", "d02", "d03")
DRAIN_INTERVAL_S = 3600.0


def poll_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """wait_for at a gentler pace (each poll opens a database)."""
    return wait_for(predicate, timeout, what, every)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- cutting the edge off


class EdgeProxy:
    """A TCP relay between the fleet and the broker, so the edge alone can be cut off.

    `cut("reset")` closes every relayed connection (both sides see the socket close,
    the broker sends each device's Last Will) and closes new ones as soon as they are
    accepted, like a link that is down. `cut("blackhole")` stops relaying in both
    directions but keeps every connection open, like a partition: bytes already read,
    and a close by either side, are held and delivered on `restore()` (as TCP would,
    after retransmitting). The broker drops a silent device after 1.5 x its 30 s
    keepalive, the device (paho) its broker after an unanswered PINGREQ, about 60 s;
    neither learns of the other's close before the link is back. Ingest talks to the
    broker directly and never notices either cut.
    """

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(1024)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._threads: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()
        self._mode = "open"
        self._closed = False
        self.accepted = 0
        self.refused = 0
        self._start(self._accept_loop, "edge-proxy-accept")

    @property
    def mode(self) -> str:
        return self._mode

    def _start(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._mode == "reset":
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                if self._closed:
                    _close(client, upstream)
                    return
                self._pairs.add(pair)
            self.accepted += 1
            self._start(self._pump, "edge-proxy-up", pair, client, upstream)
            self._start(self._pump, "edge-proxy-down", pair, upstream, client)

    def _pump(self, pair: tuple[socket.socket, socket.socket], src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                self._flowing.wait()  # a blackhole holds what it read, and a close, until restore()
                if not data or self._closed or pair not in self._pairs:
                    break
                dst.sendall(data)
        except OSError:
            self._flowing.wait()
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        _close(*pair)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut(self, mode: str = "reset") -> None:
        if mode not in ("reset", "blackhole"):
            raise ValueError(mode)
        self._mode = mode
        if mode == "blackhole":
            self._flowing.clear()
            return
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            _close(*pair)

    def restore(self) -> None:
        self._mode = "open"
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        _close(self._listener)
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
            threads = list(self._threads)
        for pair in pairs:
            _close(*pair)
        for thread in threads:
            thread.join(timeout=5)
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, f"edge proxy threads still running: {alive}"


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


# ---------------------------------------------------------------- the outcome


@dataclass
class Outcome:
    """What one fault run produced, and the evidence when it went wrong."""

    fault: str
    devices: int
    generated: int  # (device, seq) the fleet allocated: seqs 1..last_seq of every device
    ledgered: int  # distinct (device, seq) in the ledger's readings table
    ledger_rows: int  # rows in the readings table (== ledgered when nothing is doubled)
    duplicates_collapsed: int  # `status --json` duplicates: redeliveries counted, not ledgered
    quarantined: int
    blocks: int
    verify_ok: bool
    recover_s: float | None  # end of the fault -> every reading generated by then acked end to end
    missing: list[tuple[str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    doubled: list[tuple[str, int, int]] = field(default_factory=list)
    verify_output: str = ""
    notes: dict[str, Any] = field(default_factory=dict)
    logs: str = ""

    def figures(self) -> dict[str, Any]:
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("missing", "unexpected", "doubled", "logs", "verify_output")
        }
        out["missing"] = len(self.missing)
        out["unexpected"] = len(self.unexpected)
        out["doubled"] = len(self.doubled)
        if self.recover_s is not None:
            out["recover_s"] = round(self.recover_s, 2)
        return out

    def report(self) -> None:
        print(f"\nFAULT {self.fault}: {json.dumps(self.figures(), sort_keys=True)}", flush=True)

    def assert_exact(self) -> None:
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} generated readings are not in the ledger, e.g. {self.missing[:20]}")
        if self.unexpected:
            problems.append(
                f"{len(self.unexpected)} ledgered readings were never generated, e.g. {self.unexpected[:20]}"
            )
        if self.doubled:
            problems.append(f"{len(self.doubled)} readings are ledgered more than once, e.g. {self.doubled[:20]}")
        if self.quarantined:
            problems.append(f"{self.quarantined} messages were quarantined")
        if not self.verify_ok:
            problems.append(f"cityledger verify failed:\n{self.verify_output}")
        if self.generated == 0:
            problems.append("the fleet generated nothing")
        assert not problems, (
            f"fault {self.fault}: " + "\n".join(problems) + f"\nfigures: {json.dumps(self.figures())}\n{self.logs}"
        )


# ---------------------------------------------------------------- the lab


class FaultLab:
    """A stack, a fleet subprocess, the faults, and the exact comparison; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        devices: int = 50,
        interval: float = 0.2,
        block_readings: int = 500,
        block_seconds: float = 0.3,
        seed: int | None = None,
    ) -> None:
        if devices < 1:
            raise ValueError("devices must be >= 1")
        self.stack = Stack(root / "home", block_readings=block_readings, block_seconds=block_seconds)
        self.home = self.stack.home
        self.devices_n = devices
        self.devices = [p.device for p in plan_fleet(devices, DISTRICTS)]
        self._device_set = frozenset(self.devices)
        self.interval = interval
        self.fleet: Child | None = None
        self.fleet_log = self.home.logs / "fleet.log"
        self.fleet_starts = 0
        self._broker_log_offset = 0
        self.fleet_port: int | None = None  # None: the broker's own port; else (say) an EdgeProxy's
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.proxy: EdgeProxy | None = None
        self.fault_end: float | None = None
        self.target: dict[str, int] = {}
        self.recover_s: float | None = None
        self.notes: dict[str, Any] = {"seed": self.seed}

    # ------------------------------------------------------------ life cycle

    def __enter__(self) -> FaultLab:
        try:
            self.stack.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything this lab started, then check that nothing is left running."""
        procs: list[Child] = []
        try:
            if self.fleet is not None:
                procs.append(self.fleet)
                self._resume_fleet()
                self.fleet.stop(signal.SIGKILL, timeout=30)
                self.fleet = None
        finally:
            try:
                if self.proxy is not None:
                    self.proxy.close()
                    self.proxy = None
            finally:
                ingest = self.stack.ingest
                if ingest is not None:
                    procs.append(ingest)
                try:
                    self.stack.close()
                finally:
                    if ingest is not None:
                        ingest.stop(signal.SIGKILL)
        left = [p.args for p in procs if p.alive]
        assert not left and not self.stack.broker.running, f"processes left running: {left}"

    # ------------------------------------------------------------ the fleet

    def fleet_env(self, port: int | None = None) -> dict[str, str]:
        env = self.stack.env
        if port is not None:
            env["CITYLEDGER_MQTT_PORT"] = str(port)
        return env

    def start_fleet(self, interval: float | None = None, *, port: int | None = None) -> None:
        assert self.fleet is None or not self.fleet.alive, "the fleet is already running"
        self.fleet_log.parent.mkdir(parents=True, exist_ok=True)
        broker_log = mosquitto.log_path(self.home)
        self._broker_log_offset = broker_log.stat().st_size if broker_log.exists() else 0
        with self.fleet_log.open("ab") as log:
            log.write(f"--- fleet start {self.fleet_starts + 1} (interval {interval or self.interval})\n".encode())
        self.fleet = start(
            [
                sys.executable,
                "-m",
                "ledger.cli",
                "fleet",
                "--devices",
                str(self.devices_n),
                "--interval",
                str(interval or self.interval),
                "--districts",
                ",".join(DISTRICTS),
                "--seed",
                "7",
            ],
            env=self.fleet_env(port if port is not None else self.fleet_port),
            stdout=self.fleet_log,
            stderr=STDOUT,
        )
        self.fleet_starts += 1

    def wait_fleet_connected(self, timeout: float = 60) -> None:
        """Wait until the broker has logged a connection of every device since the fleet last started.

        Then the fleet is in its network loop, past installing its SIGTERM handler.
        """
        path = mosquitto.log_path(self.home)

        def all_connected() -> bool:
            self._fleet_alive()
            with path.open("rb") as f:
                f.seek(self._broker_log_offset)
                text = f.read().decode(errors="replace")
            seen = {
                line.split(" as ", 1)[1].split(" ", 1)[0]
                for line in text.splitlines()
                if "New client connected" in line and " as " in line
            }
            return self._device_set <= seen

        poll_until(all_connected, timeout, "every device of the fleet to connect", every=0.2)

    def stop_fleet(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Stop the fleet with `sig` and wait; a SIGTERM must end in exit code 0."""
        if sig == signal.SIGTERM and self.fleet is not None and self.fleet.alive:
            # A fleet started a moment ago may still be importing, before its SIGTERM handler:
            # the default action would kill it (-15), which is the harness's haste, not a bug.
            self.wait_fleet_connected()
        proc, self.fleet = self.fleet, None
        if proc is None:
            return None
        if proc.alive:
            if sig == signal.SIGTERM:
                proc.send_signal(signal.SIGCONT)
            proc.stop(sig, timeout)
            if proc.forced:
                raise AssertionError(f"the fleet ignored signal {sig} for {timeout} s\n{tail(self.fleet_log)}")
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, f"the fleet exited with {proc.returncode}\n{tail(self.fleet_log)}"
        return proc.returncode

    def kill_fleet(self) -> None:
        self.stop_fleet(signal.SIGKILL)

    def freeze_fleet(self) -> None:
        assert self.fleet is not None and self.fleet.alive
        self.fleet.send_signal(signal.SIGSTOP)

    def _resume_fleet(self) -> None:
        if self.fleet is not None:
            self.fleet.send_signal(signal.SIGCONT)

    def thaw_fleet(self) -> None:
        self._resume_fleet()

    def warm_up(self, timeout: float = 120) -> None:
        """Start the fleet and wait until every device has had a reading acknowledged."""
        self.start_fleet()

        def every_device_acked() -> bool:
            self._fleet_alive()
            states = self._states()
            return len(states) == self.devices_n and all(acked > 0 for _, acked in states.values())

        poll_until(every_device_acked, timeout, "every device's first reading acked")

    def _fleet_alive(self) -> bool:
        if self.fleet is not None and not self.fleet.alive:
            raise AssertionError(f"the fleet exited with {self.fleet.returncode}\n{tail(self.fleet_log)}")
        return True

    # ------------------------------------------------------------ the outbox, read-only

    @contextlib.contextmanager
    def _outbox(self) -> Iterator[sqlite3.Connection]:
        path = self.home.fleet / OUTBOX_FILE
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            yield con
        finally:
            con.close()

    def _states(self) -> dict[str, tuple[int, int]]:
        """device -> (last_seq, acked_seq), as the fleet's outbox has them now."""
        if not (self.home.fleet / OUTBOX_FILE).exists():
            return {}
        try:
            with self._outbox() as con:
                rows = con.execute("SELECT device, last_seq, acked_seq FROM devices").fetchall()
        except sqlite3.OperationalError as exc:  # a fleet's very first start: schema not written yet
            if "no such table" in str(exc):
                return {}
            raise
        return {d: (last, acked) for d, last, acked in rows if d in self._device_set}

    def last_seqs(self) -> dict[str, int]:
        states = self._states()
        return {d: states.get(d, (0, 0))[0] for d in self.devices}

    def generated_count(self) -> int:
        return sum(self.last_seqs().values())

    def pending(self) -> int:
        """Readings in the outbox awaiting an end-to-end ack."""
        with self._outbox() as con:
            (n,) = con.execute("SELECT count(*) FROM outbox").fetchone()
        return int(n)

    def generated(self) -> set[tuple[str, int]]:
        return {(d, s) for d, last in self.last_seqs().items() for s in range(1, last + 1)}

    # ------------------------------------------------------------ ingest and broker

    def start_ingest(self, block_readings: int | None = None, block_seconds: float | None = None) -> None:
        if block_readings is not None:
            self.stack.block_readings = block_readings
        if block_seconds is not None:
            self.stack.block_seconds = block_seconds
        self.stack.start_ingest()

    def kill_ingest(self) -> None:
        self.stack.stop_ingest(signal.SIGKILL)

    def signal_ingest(self, sig: int) -> None:
        """Send `sig` to ingest at once, without waiting (kill_ingest/stop_ingest reap it)."""
        assert self.stack.ingest is not None and self.stack.ingest.alive, "ingest is not running"
        self.stack.ingest.send_signal(sig)

    def stop_ingest(self) -> None:
        self.stack.stop_ingest(signal.SIGTERM)

    def ledger_height(self) -> int:
        """The ledger's head height, read from the file (ingest must be down)."""
        con = duckdb.connect(str(self.home.database), read_only=True)
        try:
            row = con.execute("SELECT coalesce(max(height), -1) FROM blocks").fetchone()
        finally:
            con.close()
        assert row is not None
        return int(row[0])

    def wal_size(self) -> int:
        wal = Path(str(self.home.database) + ".wal")
        try:
            return wal.stat().st_size
        except FileNotFoundError:
            return -1

    def broker_rss_kib(self) -> int:
        pid = self.stack.broker.pid
        assert pid is not None, "the broker is not running"
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def ledger_readings(self) -> int:
        """Readings in the ledger now, through the running ingest's API."""
        return int(self.stack.api.status()["readings"])

    def wait_quiet(self, quiet_s: float = 2.0, timeout: float = 60) -> int:
        """Wait until the ledger's reading count has not moved for `quiet_s` (ingest drained its queue)."""
        count, since = self.ledger_readings(), time.monotonic()

        def quiet() -> bool:
            nonlocal count, since
            n = self.ledger_readings()
            if n != count:
                count, since = n, time.monotonic()
                return False
            return time.monotonic() - since >= quiet_s

        poll_until(quiet, timeout, f"the ledger to stay unchanged for {quiet_s} s", every=0.2)
        return count

    # ------------------------------------------------------------ the fault window

    def fault_over(self) -> None:
        """The fault has ended: note what was generated by now, for the time to recover."""
        self.fault_end = time.monotonic()
        self.target = self.last_seqs()
        self.notes["generated_at_fault_end"] = sum(self.target.values())
        self.notes["pending_at_fault_end"] = self.pending()

    def wait_recovered(self, timeout: float = 180) -> float:
        """Wait until every reading generated by the end of the fault is acknowledged end to end."""
        assert self.fault_end is not None, "call fault_over() first"

        def caught_up() -> bool:
            self._fleet_alive()
            states = self._states()
            return all(states.get(d, (0, 0))[1] >= seq for d, seq in self.target.items())

        poll_until(
            caught_up, timeout, "the ledger to acknowledge everything generated before the fault ended", every=0.05
        )
        self.recover_s = time.monotonic() - self.fault_end
        return self.recover_s

    def settle(self, timeout: float = 180, rounds: int = 3) -> None:
        """Stop the fleet, then let it re-send until its outbox is empty (see the module docstring)."""
        self.stop_fleet()
        for _ in range(rounds):
            self.start_fleet(interval=DRAIN_INTERVAL_S)
            self.wait_fleet_connected()
            poll_until(
                lambda: self._fleet_alive() and self.pending() == 0,
                timeout,
                "the fleet's outbox to drain (every reading acked)",
                every=0.2,
            )
            self.stop_fleet()
            if self.pending() == 0:
                return
        raise AssertionError(f"the outbox still holds {self.pending()} readings after {rounds} drain rounds")

    # ------------------------------------------------------------ the count

    def outcome(self, fault: str) -> Outcome:
        """Compare what the fleet generated with the ledger; ingest is stopped for it and stays stopped."""
        assert self.fleet is None, "settle() first: the fleet must be stopped"
        self.stop_ingest()
        generated = self.generated()
        con = duckdb.connect(str(self.home.database), read_only=True)
        try:
            rows = con.execute("SELECT device, seq, count(*) FROM readings GROUP BY device, seq").fetchall()
            blocks = con.execute("SELECT count(*) FROM blocks").fetchone()[0]  # type: ignore[index]
        finally:
            con.close()
        ledger = {(d, s): n for d, s, n in rows}
        status = self.stack.cli_json("status", "--json")
        verify = self.stack.cli("verify", "--deep")
        logs = "\n".join(
            f"--- {name} (tail)\n{tail(path)}"
            for name, path in (
                ("ingest", self.stack.ingest_log),
                ("fleet", self.fleet_log),
                ("broker", mosquitto.log_path(self.home)),
            )
        )
        return Outcome(
            fault=fault,
            devices=self.devices_n,
            generated=len(generated),
            ledgered=len(ledger),
            ledger_rows=sum(ledger.values()),
            duplicates_collapsed=int(status["duplicates"]),
            quarantined=int(status["quarantined"]),
            blocks=int(blocks),
            verify_ok=verify.returncode == 0,
            recover_s=self.recover_s,
            missing=sorted(generated - ledger.keys()),
            unexpected=sorted(ledger.keys() - generated),
            doubled=sorted((d, s, n) for (d, s), n in ledger.items() if n > 1),
            verify_output=(verify.stdout + verify.stderr).strip(),
            notes=dict(self.notes),
            logs=logs,
        )

    def finish(self, fault: str, *, recover_timeout: float = 180) -> Outcome:
        """The usual ending: wait for recovery, settle, count, print the figures, assert exactness."""
        self.wait_recovered(recover_timeout)
        self.settle()
        outcome = self.outcome(fault)
        outcome.report()
        outcome.assert_exact()
        return outcome

    def pause(self, low: float, high: float) -> float:
        """Let the burst run a random while (the fault's timing), and say how long."""
        delay = self.rng.uniform(low, high)
        time.sleep(delay)
        return delay
