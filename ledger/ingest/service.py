"""The ingest service: MQTT in, one DuckDB transaction per batch, then acks out.

A message is PUBACKed only after the transaction holding its outcome commits,
and the session is persistent (MQTT 5 session expiry), so the broker redelivers
whatever a crashed ingest had not made durable; the redelivery then counts as a
duplicate. Device `ack`s and the checkpoint go out only after the block is
sealed, because they promise durability.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker.mqtt.sessions import RECEIVE_MAXIMUM, service_client
from broker.mqtt.sessions import start as start_session
from broker.mqtt.tls import TLSSettings
from ledger.chain.notes import Note
from ledger.chain.protocol import (
    ChainTopics,
    ack_payload,
    device_topic,
)
from ledger.chain.records import Batch, DeviceRecord
from ledger.clock import now_ms
from ledger.home import Home
from ledger.ingest import workers
from ledger.ingest.acks import AckPublisher
from ledger.ingest.headers import publish_head, publish_sealed
from ledger.ingest.intake import Incoming, Intake, QuarantineCap, ScreenedReadings, Screening, SeqState
from ledger.ingest.workers import WorkerPool
from ledger.service import rpc
from ledger.service.api import local_api
from ledger.service.budget import Budget, BudgetPolicy, Drops, Streaks
from ledger.service.health import IngestHealth
from ledger.service.writer import LedgerWriter, Sealed

log = logging.getLogger("cityledger.ingest")
POLICE_EVERY_S = 0.25  # how often budget drops are written and suspensions begun or ended
T = TypeVar("T")


@dataclass
class IngestStats:
    messages: int = 0
    readings: int = 0
    quarantined: int = 0
    duplicates: int = 0
    blocks: int = 0
    over_budget: int = 0  # messages dropped by budgets (ledger/service/budget.py), never screened
    started: float = field(default_factory=time.monotonic)


def drain(inbox: queue.Queue[T]) -> list[T]:
    """Everything waiting in `inbox` now, without waiting for more."""
    out: list[T] = []
    while True:
        try:
            out.append(inbox.get_nowait())
        except queue.Empty:
            return out


class IngestService:
    """Subscribes as the ingest identity and turns messages into blocks."""

    def __init__(
        self,
        home: Home,
        writer: LedgerWriter,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        block_readings: int = 5000,
        block_seconds: float = 1.0,
        client_id: str = "cityledger-ingest",
        tls: TLSSettings | None = None,
        quarantine_cap: int = 1000,
        workers: int = 0,
    ) -> None:
        if not 1 <= block_readings < RECEIVE_MAXIMUM:
            raise ValueError(f"--block-readings must be between 1 and {RECEIVE_MAXIMUM - 1}")
        if not 0 <= workers <= 64:
            raise ValueError("--workers must be between 0 and 64")
        if home.district is None and writer.districts():
            raise ValueError(
                f"{home.root} keeps its readings in district chains: run `cityledger anchor` on it, "
                "and `cityledger ingest --home HOME/districts/DISTRICT` for each district"
            )
        writer.ledgers_readings = True
        self.home, self.writer = home, writer
        self.topics = ChainTopics(home.district)  # a district's ingest takes its district's topics only
        self.host, self.port, self.tls = host, port, tls
        self.workers = workers
        self.block_readings, self.block_seconds = block_readings, block_seconds
        self.stats = IngestStats()
        self.health = IngestHealth(workers, now_ms())
        # queue.Queue, not SimpleQueue: on CPython 3.11 a signal landing in SimpleQueue.get's
        # timed wait can turn it into a wait forever, and an idle ingest then ignores SIGTERM.
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.in_hand: list[Incoming] = []  # the batch taken off the inbox and not yet committed
        self._commit_started: float | None = None  # while a batch commits (its block's seal time)
        self.health.pending = self._pending
        hour_start = now_ms() // 3_600_000 * 3_600_000
        cap = QuarantineCap(quarantine_cap, writer.store.quarantine_stored_since(hour_start), hour_start // 3_600_000)
        self.intake = Intake(
            {d: SeqState(h, a) for d, (h, a) in writer.store.seq_state().items()}, writer.store.stored_readings, cap
        )
        self.acked: dict[str, int] = {}
        self.ack_topics: dict[str, str] = {}  # a device's district and kind never change
        # Per-device budgets (ledger/service/budget.py), checked before a message is queued or parsed.
        self.policy = writer.budget_policy()
        self.budget = Budget(self.policy)
        self.drops: Drops = self.budget.drops  # the workers' drops are merged in here too
        self.streaks = Streaks()
        self.suspended_until = {d: s["until"] for d, s in writer.suspensions().items()}
        self.pool: WorkerPool | None = None
        self._note_registry(writer.registry_version, writer.registry)
        self.connected = threading.Event()
        self._generation = 0
        self.client = service_client(client_id, username, password, tls)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.acks = AckPublisher(host, port, secret_file=home.service_secret("ingest-acks"), tls=tls)
        writer.on_sealed.append(self._publish_sealed)
        writer.on_written_off.append(self._written_off)
        if writer.checkpointer is not None:  # the log's checkpoints, once cosigned (PROTOCOL.md section 7)
            writer.checkpointer.on_published.append(self._publish_checkpoint)

    def _pending(self) -> int:
        """Messages received and not yet sealed: in the inbox, in the batch in hand, or handed over by
        workers (those a worker still screens, or the broker still queues, are not counted)."""
        pool = self.pool
        return self.inbox.qsize() + len(self.in_hand) + (pool.waiting if pool is not None else 0)

    def _publish_checkpoint(self, note: Note) -> None:
        self.client.publish(self.topics.tlog_checkpoint, note.encode(), qos=1, retain=True)

    # ------------------------------------------------------------ MQTT callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: mqtt.ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the ingest connection: %s", reason)
            return
        self._generation += 1
        if not self.workers:  # else the workers subscribe, and this client only publishes
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.topics.ingest])
        publish_head(client, self.topics, self.writer)
        log.info("connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present)
        self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: mqtt.ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        log.warning("disconnected from broker: %s", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "backslashreplace")
        at = now_ms()
        if self.budget.admit(topic, time.monotonic(), at) is not None:  # counted in self.drops
            if msg.qos > 0:  # PUBACK it now: held, it would fill the broker's window for every device
                client.ack(msg.mid, msg.qos)
            return
        self.inbox.put(Incoming(topic, msg.payload, at, (self._generation, msg.mid, msg.qos)))  # type: ignore[arg-type]  # paho's payload is bytes

    # ------------------------------------------------------------ budgets (a thread of their own)

    def _note_registry(self, version: int, registry: dict[str, DeviceRecord]) -> None:
        self.budget.suspended = frozenset(d for d, r in registry.items() if r.status == "suspended")

    def _note_policy(self, policy: BudgetPolicy) -> None:
        self.policy = policy
        self.budget.set_policy(policy)
        if self.pool is not None:
            self.pool.publish_policy(policy.share(self.workers))

    def _police_loop(self, stop: threading.Event) -> None:
        while not stop.wait(POLICE_EVERY_S):
            try:
                self._police(now_ms())
            except Exception:  # a bug; enforcement must go on for the other devices
                log.exception("budget enforcement failed")

    def _police(self, now: int) -> None:
        """Write what budgets dropped (as rejects), suspend devices over budget for too long,
        reinstate those whose time is up."""
        counts, spans = self.drops.take()
        if counts:
            self.writer.commit(Batch(rejects=counts))
            self.stats.over_budget += sum(counts.values())
        policy = self.policy
        self.streaks.observe(spans, policy)
        for device, streak in self.streaks.due(now, policy):
            self.streaks.forget(device)
            done = self.writer.suspend_device(device, policy, streak.start, streak.messages)
            if done is not None:
                self.suspended_until[device] = done["until"]
                log.warning(
                    "suspended %s until %d: over budget since %d (%d messages dropped), rule %s",
                    device,
                    done["until"],
                    streak.start,
                    streak.messages,
                    done["rule"],
                )
        for device, until in list(self.suspended_until.items()):
            if until <= now:
                del self.suspended_until[device]
                if self.writer.reinstate_device(device) is not None:
                    log.warning("reinstated %s: its suspension ended", device)

    # ------------------------------------------------------------ the batch loop (main thread)

    def run(self, stop: threading.Event) -> None:
        """Serve the local API and ingest until `stop` is set."""
        # Sessions of workers that will not run would keep taking their share of the readings.
        idle = [i for i in self.writer.ensure_ingest_logins(self.workers) if i > self.workers]
        workers.forget_sessions(
            self.host, self.port, self.tls, [self.home.service_secret(workers.worker_login(i)) for i in idle]
        )
        workers.tune_gc()
        self.writer.on_registry.append(self._note_registry)
        self.writer.on_policy.append(self._note_policy)
        police = threading.Thread(target=self._police_loop, args=(stop,), name="cityledger-budget", daemon=True)
        police.start()
        server, _ = rpc.serve(local_api(self.home, self.writer, self.health), self.home.rpc_socket)
        # With workers this client only publishes, so it keeps no session to resume.
        start_session(self.client, self.host, self.port, persistent=not self.workers, receive_maximum=RECEIVE_MAXIMUM)
        try:
            if self.workers:
                self._run_workers(stop)
            else:
                while not stop.is_set():
                    batch = self._collect(stop)
                    if batch:
                        self._flush(batch)
                self._flush(drain(self.inbox))
        finally:
            police.join(timeout=10)
            self._police(now_ms())  # the last drops counted
            self.writer.on_registry.remove(self._note_registry)
            self.writer.on_policy.remove(self._note_policy)
            self.client.disconnect()
            self.client.loop_stop()
            self.acks.close()
            rpc.stop(server, self.home.rpc_socket)

    def _run_workers(self, stop: threading.Event) -> None:
        """Workers screen in parallel; this process settles, seals, and says what to acknowledge."""
        pool = workers.WorkerPool(
            [
                workers.WorkerSettings(
                    i, self.host, self.port, self.home.service_secret(workers.worker_login(i)), self.tls, self.topics
                )
                for i in range(1, self.workers + 1)
            ]
        )
        pool.policy = self.policy.share(self.workers)  # each worker checks its share of every budget
        pool.on_drops = self.drops.merge
        self.pool = pool
        self.writer.on_registry.append(pool.publish_registry)
        pool.start(self.writer.registry_version, self.writer.registry)
        try:
            while not stop.is_set():
                handovers = pool.collect(self.block_readings, self.block_seconds, stop)
                if handovers:
                    self._settle(handovers, pool)
        finally:
            self.writer.on_registry.remove(pool.publish_registry)
            self.pool = None
            pool.stop()  # what they hold unacknowledged, the broker redelivers on the next start

    def _settle(self, handovers: list[workers.HandOver], pool: workers.WorkerPool) -> None:
        # Under the writer's lock from reading the registry to the commit: a revocation, rotation
        # or write-off sealed in between would otherwise not apply to a batch settled before it.
        with self.writer.lock:
            registry, version, now = self.writer.registry, self.writer.registry_version, now_ms()
            outcomes: list[Screening] = []
            columns: list[ScreenedReadings] = []
            for h in handovers:
                if h.version == version:
                    outcomes += h.outcomes
                    if h.readings is not None:
                        columns.append(h.readings)
                else:  # the registry changed since: enrolled, revoked, rotated
                    readings = h.readings.outcomes() if h.readings is not None else []
                    outcomes += [self.intake.recheck(o, registry, now) for o in [*h.outcomes, *readings]]
            self._commit(self.intake.settle(outcomes, columns), sum(h.messages for h in handovers))
        for h in handovers:
            pool.ack(h)

    def _collect(self, stop: threading.Event) -> list[Incoming]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = self.in_hand = [first]  # counted as pending as it grows, at no cost per message
        deadline = time.monotonic() + self.block_seconds
        while len(batch) < self.block_readings and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.inbox.get(timeout=min(remaining, 0.05)))
            except queue.Empty:
                continue
        return batch

    def _flush(self, messages: list[Incoming]) -> None:
        if not messages:
            return
        # Screened (the signatures, the costly part) outside the writer's lock, settled and
        # committed under it, against the registry in force then (see `_settle`).
        version = self.writer.registry_version
        screened = [self.intake.screener.screen(m, self.writer.registry, now_ms()) for m in messages]
        with self.writer.lock:
            if version != self.writer.registry_version:
                screened = [self.intake.recheck(o, self.writer.registry, now_ms()) for o in screened]
            self._commit(self.intake.settle(screened), len(messages))
        self.in_hand = []
        generation = self._generation
        for msg in messages:
            gen, mid, qos = msg.token
            if gen == generation and qos > 0:
                self.client.ack(mid, qos)
        # Messages of an older connection are not acked: the broker redelivers them
        # and they come back as counted duplicates.

    def _commit(self, batch: Batch, messages: int) -> None:
        # Under the writer's lock (its callers hold it), so a block an API call seals meanwhile
        # cannot be taken for this batch's.
        self._commit_started = time.perf_counter()
        try:
            self.writer.commit(batch)
        finally:
            self._commit_started = None
        s = self.stats
        s.messages += messages
        s.readings += len(batch.readings)
        s.quarantined += len(batch.quarantine)
        s.duplicates += sum(batch.duplicate_counts.values())
        if batch.duplicate_counts:
            # A device re-sending what is already ledgered missed its ack (ingest died between
            # commit and publish, or the broker lost the retained ack): tell it again, always.
            self._publish_acks({d for d, _ in batch.duplicate_counts}, self.writer.head_hash, again=True)

    # ------------------------------------------------------------ after a block is sealed

    def _publish_sealed(self, sealed: Sealed) -> None:
        started = self._commit_started  # None: a block sealed by an API call, not one of ingest's batches
        seconds = time.perf_counter() - started if started is not None else None
        self.stats.blocks += 1
        readings = sealed.readings
        self.health.sealed(sealed.header["sealed_at"], list(zip(readings.device, readings.ts)), seconds)
        publish_sealed(self.client, self.topics, sealed)
        if self._publish_acks(set(readings.device), sealed.hash) and readings.received_at:
            # Receipt to ack for the block's readings; one held back behind a missing seq is counted
            # here too, though its ack comes later.
            self.health.acked(now_ms(), readings.received_at)

    def _written_off(self, device: str, lo: int, hi: int, sealed: Sealed) -> None:
        """An operator settled seqs lo..hi of `device` for good: its ack moves past them, saying so."""
        self.intake.seqs.setdefault(device, SeqState()).settle_range(lo, hi)
        log.warning("seqs %d-%d of %s written off (block %d): its ack passes them", lo, hi, device, sealed.height)
        self._publish_acks({device}, sealed.hash, written_off=(lo, hi))

    def _publish_acks(
        self, devices: set[str], block_hash: str, again: bool = False, written_off: tuple[int, int] | None = None
    ) -> int:
        """Retained `{"seq": N, "block": H}` for each device whose ledgered prefix grew; how many went out."""
        registry = self.writer.registry
        acks = []
        for device in devices:
            state, rec = self.intake.seqs.get(device), registry.get(device)
            if state is None or rec is None or state.hwm == 0 or (state.hwm <= self.acked.get(device, 0) and not again):
                continue
            self.acked[device] = state.hwm
            topic = self.ack_topics.get(device)
            if topic is None:
                topic = self.ack_topics[device] = device_topic(rec.district, rec.kind, device, "ack")
            acks.append((topic, ack_payload(state.hwm, block_hash, written_off)))
        return self.acks.publish(acks)
