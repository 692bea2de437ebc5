"""Ingest workers: the costly, stateless half of ingest, in parallel processes.

Each worker is an MQTT 5 client in one shared subscription (`$share/cityledger-ingest/...`),
so the broker spreads the readings over the workers, and the same code runs
against a clustered broker (EMQX, HiveMQ, VerneMQ) unchanged. A worker first checks
the sending device's budget (ledger/service/budget.py; each worker holds 1/N of it), drops and
counts what is over it (PUBACKed at once), screens the rest (shape, registry, topic,
signature: `Screener`) and hands the
outcomes to the sealer, the one process that writes the ledger, over a pipe. It
PUBACKs a message only when the sealer says the transaction holding its outcome
has committed. Its session is persistent and its login its own (the broker
takes the client id from the username), so a worker that dies is restarted
under the same login and the broker redelivers what it had not acknowledged.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from broker.mqtt.sessions import RECEIVE_MAXIMUM, SESSION_EXPIRY_S
from broker.mqtt.subscriber import MQTTError, Subscriber
from broker.mqtt.tls import TLSSettings
from ledger.chain.protocol import ChainTopics
from ledger.chain.records import DeviceRecord, Readings
from ledger.clock import now_ms
from ledger.ingest.intake import Incoming, Screened, ScreenedReadings, Screener, Screening
from ledger.service.budget import Budget, BudgetPolicy, Count, Span
from ledger.service.writer import WORKER_PREFIX

log = logging.getLogger("cityledger.ingest")

MAX_WORKERS = 64


def worker_count(value: str | int, cores: int | None = None) -> int:
    """`--workers`: a number, or `auto` for one per core (none on a single core).

    Screening (the signature above all) is what costs; one process screens on one core,
    so a machine's defaults leave its other cores idle unless workers screen beside the
    sealer. On a single core a worker adds a hop and no parallelism.
    """
    if str(value).strip().lower() == "auto":
        cores = cores if cores is not None else (os.cpu_count() or 1)
        return min(cores, 8) if cores >= 2 else 0
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers must be a number or auto, not {value!r}") from None
    if not 0 <= count <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 0 and {MAX_WORKERS}")
    return count


def worker_login(index: int) -> str:
    return f"{WORKER_PREFIX}{index}"


def shared_topics(chain: ChainTopics) -> list[str]:
    """One shared subscription group per chain: the city's, or each district's of its own."""
    return [f"$share/{chain.share_group}/{t}" for t in chain.ingest]


@dataclass(frozen=True)
class WorkerSettings:
    index: int
    host: str
    port: int
    secret_file: Path  # the worker's broker login, 0600; never passed on a command line
    tls: TLSSettings | None = None
    chain: ChainTopics = ChainTopics()
    batch: int = 1000  # outcomes per hand-over to the sealer
    wait_s: float = 0.02  # or fewer, after this long


# ---------------------------------------------------------------- the hand-over format (pure)


Packed = tuple[tuple[tuple[Any, ...], ...], list[Screening]]


def pack(outcomes: list[Screening]) -> Packed:
    """(the screened readings as columns, every other outcome): columns pickle faster than objects,
    and the sealer takes them as they are (`ScreenedReadings`).

    A reading read off the wire in canonical form has its payload for its leaf, so the two
    columns hold the same bytes objects, and pickle sends them once.
    """
    rows: list[tuple[Any, ...]] = []
    others: list[Screening] = []
    for o in outcomes:
        if isinstance(o, Screened):
            r, msg = o.reading, o.msg
            rows.append(
                (
                    r.device,
                    r.kind,
                    r.seq,
                    r.ts,
                    r.value,
                    r.sig,
                    r.sig_bytes(),
                    r.leaf_data(),
                    msg.received_at,
                    msg.topic,
                    msg.payload,
                    o.key,
                )
            )
        else:
            others.append(o)
    return tuple(zip(*rows)), others


def unpack(packed: Packed) -> tuple[ScreenedReadings | None, list[Screening]]:
    columns, others = packed
    if not columns:
        return None, others
    device, kind, seq, ts, value, sig, sig_bytes, leaf, received_at, topic, payload, key = map(list, columns)
    readings = Readings(device, kind, seq, ts, value, sig, sig_bytes, leaf, received_at)
    return ScreenedReadings(readings, topic, payload, key), others


def tune_gc() -> None:
    """Collect cycles less often, and never scan what exists at start-up again.

    Ingest allocates a few short-lived objects per message, none of them in cycles, so
    reference counting frees them; at the default threshold the cycle collector still
    runs every 700 allocations and walks the long-lived heap (the registry, the modules)
    each time it reaches the older generations: about 10 µs per reading, measured.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


# ---------------------------------------------------------------- the worker process


def worker_main(settings: WorkerSettings, conn: Connection) -> None:
    """Process entry point (spawned by `WorkerPool`)."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s worker {settings.index}: %(message)s")
    try:
        tune_gc()
        Worker(settings, conn).run()
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the sealer is gone: it restarts us if it wants us


class Worker:
    """One thread: read from the broker, screen, hand over, apply the sealer's acks, repeat.

    The sealer answers each hand-over by its number once its outcomes are committed; the
    worker alone knows which MQTT packets that acknowledges.
    """

    def __init__(self, settings: WorkerSettings, conn: Connection) -> None:
        self.settings, self.conn = settings, conn
        self.registry: dict[str, DeviceRecord] = {}
        self.version = -1
        self.screener = Screener()
        self.budget = Budget()  # the sealer sends this worker's share of the policy right after the registry
        self.drops_sent = 0.0
        self.stop = False
        self.generation = 0
        self.handed = 0  # hand-overs sent so far: the next one's number
        self.unacked: dict[int, tuple[int, list[int]]] = {}  # hand-over -> (connection generation, packet ids)
        self.login = json.loads(settings.secret_file.read_text())
        self.sub: Subscriber | None = None

    def run(self) -> None:
        self._handle(self.conn.recv())  # the registry first: never screen against an empty one
        # Screened as they arrive (a hand-over's outcomes all under one registry version), so
        # that each read of the socket finds what arrived during the last signature checks.
        outcomes: list[Screening] = []
        ids: list[int] = []  # the QoS 1 packet ids of `outcomes`
        first = 0.0
        while not self.stop:
            while self.conn.poll():
                message = self.conn.recv()
                if message[0] == "registry" and outcomes:
                    self._hand_over(outcomes, ids)
                    outcomes, ids, first = [], [], 0.0
                self._handle(message)
            if self.sub is None and not self._connect():
                continue
            assert self.sub is not None
            try:
                over: list[int] = []
                for m in self.sub.receive(0.01):
                    at = now_ms()
                    if self.budget.admit(m.topic, time.monotonic(), at) is not None:  # counted, never screened
                        if m.packet_id:
                            over.append(m.packet_id)
                        continue
                    outcomes.append(self.screener.screen(Incoming(m.topic, m.payload, at), self.registry, at))
                    if m.packet_id:
                        ids.append(m.packet_id)
                # PUBACKed now: held, they would fill the broker's window and stall every device.
                self.sub.ack(over)
            except (MQTTError, OSError) as exc:
                log.warning("lost the broker: %s", exc)
                self.sub, outcomes, ids = None, [], []  # the broker redelivers what we had not acknowledged
                continue
            if outcomes and not first:
                first = time.monotonic()
            if outcomes and (len(outcomes) >= self.settings.batch or time.monotonic() - first >= self.settings.wait_s):
                self._hand_over(outcomes, ids)
                outcomes, ids, first = [], [], 0.0
            if self.budget.drops and time.monotonic() - self.drops_sent >= 0.2:
                self.conn.send(("drops", *self.budget.drops.take()))
                self.drops_sent = time.monotonic()
        if self.sub is not None:
            self.sub.close()

    def _hand_over(self, outcomes: list[Screening], ids: list[int]) -> None:
        self.handed += 1
        self.unacked[self.handed] = (self.generation, ids)
        self.conn.send(("batch", self.handed, self.version, pack(outcomes)))

    def _connect(self) -> bool:
        s = self.settings
        try:
            self.sub = Subscriber(
                s.host,
                s.port,
                client_id=self.login["username"],
                username=self.login["username"],
                password=self.login["password"],
                tls=s.tls,
                clean_start=False,
                session_expiry=SESSION_EXPIRY_S,
                receive_maximum=RECEIVE_MAXIMUM,
            )
            self.sub.subscribe(shared_topics(s.chain))
        except (MQTTError, OSError) as exc:
            log.warning("cannot reach the broker (%s); retrying", exc)
            self.sub = None
            time.sleep(0.5)
            return False
        self.generation += 1
        return True

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ack":
            generation, ids = self.unacked.pop(message[1])
            # A message of an earlier connection is redelivered by the broker and then
            # settles as a counted duplicate; acking its old packet id would ack another.
            if self.sub is not None and ids and generation == self.generation:
                try:
                    self.sub.ack(ids)
                except OSError as exc:
                    log.warning("lost the broker while acknowledging: %s", exc)
                    self.sub = None
        elif kind == "registry":
            self.version, self.registry = message[1], message[2]
            self.budget.suspended = frozenset(d for d, r in self.registry.items() if r.status == "suspended")
        elif kind == "policy":
            self.budget.set_policy(message[1])
        elif kind == "stop":
            self.stop = True


# ---------------------------------------------------------------- the sealer's side


@dataclass(frozen=True, slots=True)
class HandOver:
    """One batch of a worker's outcomes, as the sealer received it."""

    worker: int
    incarnation: int  # which process of that worker sent it (a restarted worker counts anew)
    number: int  # the worker's name for it, sent back once it is committed
    version: int  # the registry version it was screened with
    readings: ScreenedReadings | None
    outcomes: list[Screening]  # all but readings: quarantine, statuses, witness reports

    @property
    def messages(self) -> int:
        return len(self.outcomes) + (len(self.readings.readings) if self.readings else 0)


def forget_sessions(host: str, port: int, tls: TLSSettings | None, secret_files: list[Path]) -> None:
    """End the broker sessions of worker logins that will not run: a shared subscription
    would otherwise keep queueing their share of the readings for them. What those sessions
    held unacknowledged is not lost: devices re-send every reading until an `ack` covers it."""
    for secret in secret_files:
        login = json.loads(secret.read_text())
        Subscriber(
            host,
            port,
            client_id=login["username"],
            username=login["username"],
            password=login["password"],
            tls=tls,
            clean_start=True,
            session_expiry=0,
        ).close()
        log.info("ended the broker session of idle worker login %s", login["username"])


class WorkerPool:
    """The sealer's view of its workers: start them, feed them the registry, take their
    outcomes, tell them what to acknowledge, and restart any that dies."""

    def __init__(self, settings: list[WorkerSettings]) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.conns: dict[int, Connection] = {}
        self.locks: dict[int, threading.Lock] = {}
        self.incarnations: dict[int, int] = {}  # processes started per worker index
        self.registry: tuple[int, dict[str, DeviceRecord]] = (0, {})
        self.policy = BudgetPolicy()  # each worker's share of the per-device budget
        self.on_drops: Callable[[dict[Count, int], dict[str, Span]], None] | None = None
        self.restarts = 0
        self.screened: dict[int, int] = {s.index: 0 for s in settings}  # messages per worker
        self.waiting = 0  # messages collected and not yet committed (`ack`): ingest's queue depth

    def start(self, version: int, registry: dict[str, DeviceRecord]) -> None:
        self.registry = (version, registry)
        for s in self.settings:
            self._spawn(s)

    def _spawn(self, s: WorkerSettings) -> None:
        ours, theirs = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(s, theirs), name=f"cityledger-ingest-w{s.index}", daemon=True)
        proc.start()
        theirs.close()
        self.procs[s.index], self.conns[s.index] = proc, ours
        self.incarnations[s.index] = self.incarnations.get(s.index, 0) + 1
        self.locks.setdefault(s.index, threading.Lock())
        self._send(s.index, ("registry", *self.registry))  # first: the worker waits for it
        self._send(s.index, ("policy", self.policy))

    def _send(self, index: int, message: tuple[Any, ...]) -> None:
        with self.locks[index]:
            try:
                self.conns[index].send(message)
            except (BrokenPipeError, OSError):
                pass  # noticed and restarted by `collect`

    def publish_policy(self, policy: BudgetPolicy) -> None:
        self.policy = policy
        for index in list(self.conns):
            self._send(index, ("policy", policy))

    def publish_registry(self, version: int, registry: dict[str, DeviceRecord]) -> None:
        self.registry = (version, registry)
        for index in list(self.conns):
            self._send(index, ("registry", version, registry))

    def collect(self, limit: int, seconds: float, stop: threading.Event) -> list[HandOver]:
        """Hand-overs of up to about `limit` outcomes in all, waiting at most `seconds` after the first arrives."""
        out: list[HandOver] = []
        count, deadline = 0, None
        while count < limit and not stop.is_set():
            timeout = 0.2 if deadline is None else deadline - time.monotonic()
            if timeout <= 0:
                break
            by_conn = {c: i for i, c in self.conns.items()}
            for ready in wait(list(by_conn), timeout):
                conn = cast(Connection, ready)  # only the workers' pipes are waited on
                index = by_conn[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._restart(index)
                    continue
                if message[0] == "drops":  # what the worker's budget dropped: counts only
                    if self.on_drops is not None:
                        self.on_drops(message[1], message[2])
                    continue
                _, number, version, packed = message
                handover = HandOver(index, self.incarnations[index], number, version, *unpack(packed))
                out.append(handover)
                self.screened[index] += handover.messages
                self.waiting += handover.messages
                count += handover.messages
            if out and deadline is None:
                deadline = time.monotonic() + seconds
            if deadline is None:
                self._check_alive()
        return out

    def ack(self, handover: HandOver) -> None:
        """Its outcomes are committed: the worker may PUBACK them. Not to a worker started
        since: its numbers name other messages."""
        self.waiting -= handover.messages
        if self.incarnations.get(handover.worker) == handover.incarnation:
            self._send(handover.worker, ("ack", handover.number))

    def _check_alive(self) -> None:
        for index, proc in list(self.procs.items()):
            if not proc.is_alive():
                self._restart(index)

    def _restart(self, index: int) -> None:
        log.error("ingest worker %d exited (code %s): restarting it", index, self.procs[index].exitcode)
        self.procs[index].join(timeout=1)
        self.conns[index].close()
        self.restarts += 1
        self._spawn(next(s for s in self.settings if s.index == index))

    def stop(self) -> None:
        log.info(
            "ingest workers stopping: %s; %d restarts",
            ", ".join(f"worker {i} screened {n} messages" for i, n in sorted(self.screened.items())),
            self.restarts,
        )
        for index in list(self.conns):
            self._send(index, ("stop",))
        for proc in self.procs.values():
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns.values():
            conn.close()
