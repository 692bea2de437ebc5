"""The witness process: follow the ledger's signed headers over MQTT, keep them, alarm.

A thin shell around `ledger.witness.check`. The session is persistent (MQTT 5
session expiry of 7 days), so headers sealed while the witness is away wait for
it at the broker; each message is acknowledged only after its outcome is on
disk, so a crash means a redelivery (judged "already have"), never a loss.
Messages are judged one at a time, in arrival order, on the calling thread.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker.mqtt.sessions import service_client
from broker.mqtt.sessions import start as start_session
from broker.mqtt.tls import TLSSettings
from ledger.chain.protocol import ChainTopics, canonical_json, valid_device_id, witness_topic
from ledger.chain.witness import (
    Accepted,
    Alarm,
    AlreadyHave,
    Source,
    Unlinked,
    alarm_record,
    check,
)
from ledger.clock import now_ms
from ledger.store.witness_files import StoreError, WitnessStore

log = logging.getLogger("cityledger.witness")

EXIT_STOPPED, EXIT_CONFIG, EXIT_ALARM = 0, 2, 3
ALARM_PUBACK_TIMEOUT_S = 10.0
# CONNACK refusals that retrying cannot cure: identity, password, authorisation, ban, auth method.
FATAL_CONNACK = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    dup: bool
    received_at: int
    token: tuple[int, int, int]  # connection generation, mid, qos: what to acknowledge


@dataclass(frozen=True, slots=True)
class _Refused:
    """The broker will not have us: retrying would only hammer it."""

    detail: str


def run_witness(
    store: Path,
    *,
    host: str,
    port: int,
    name: str,
    password: str,
    ledger_key: str | None,
    stop: threading.Event,
    tls: TLSSettings | None = None,
    chain: ChainTopics = ChainTopics(),
) -> int:
    """Follow the ledger until `stop` (0), an alarm (3) or a configuration problem (2).

    With `tls` the witness connects over TLS and verifies the broker against that CA;
    with `chain`, it follows that district's chain instead of the city's.
    """
    if not valid_device_id(name):
        return _config_error(f"invalid witness name {name!r}")
    opened = WitnessStore.open(store, ledger_key)
    if isinstance(opened, StoreError):
        return _config_error(opened.message)
    _report_start(opened)
    return Follower(opened, host=host, port=port, name=name, password=password, tls=tls, chain=chain).run(stop)


def _config_error(message: str) -> int:
    print(f"cityledger witness: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _report_start(store: WitnessStore) -> None:
    state, alarms = store.state, store.alarms()
    where = f"height {state.height} ({state.hash})" if state.height is not None else "no header yet"
    log.info("witness store %s: %s, trusting ledger key %s", store.root, where, state.key)
    if alarms:
        log.warning("this witness has %d alarm(s) on record, the last: %s", len(alarms), alarms[-1].get("detail"))


class Follower:
    """One MQTT connection to the broker, and the loop that judges what it delivers."""

    def __init__(
        self,
        store: WitnessStore,
        *,
        host: str,
        port: int,
        name: str,
        password: str,
        tls: TLSSettings | None = None,
        chain: ChainTopics = ChainTopics(),
    ) -> None:
        self.store, self.host, self.port, self.name = store, host, port, name
        self.chain = chain
        self.sources: dict[str, Source] = {chain.headers: "headers", chain.checkpoint: "checkpoint"}
        self.inbox: queue.SimpleQueue[_Message | _Refused] = queue.SimpleQueue()
        self._generation = 0
        self._pubacks: dict[int, ReasonCode] | None = None  # collected only while waiting for one
        self._puback_cond = threading.Condition()
        self.client = service_client(name, name, password, tls)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    # ------------------------------------------------------------ MQTT callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            if reason.value in FATAL_CONNACK:
                self.inbox.put(
                    _Refused(
                        f"the broker at {self.host}:{self.port} refused login {self.name!r}: "
                        f"{reason} (check the name and the password file)"
                    )
                )
            else:
                log.warning("broker refused the connection for now: %s; retrying", reason)
            return
        self._generation += 1
        # Retain handling 1: the retained checkpoint only for a new subscription. A
        # resumed session gets its queued headers, in order, and nothing out of turn.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(self.chain.headers, options), (self.chain.checkpoint, options)])
        log.info(
            "connected to %s:%d as %s (session present: %s)", self.host, self.port, self.name, flags.session_present
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        log.warning("cannot reach the broker at %s:%d; retrying", self.host, self.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.value != 0:
            log.warning("disconnected from the broker: %s", reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode], properties: Properties | None
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.inbox.put(
                _Refused(
                    f"the broker refused the subscription to {self.chain.headers} and "
                    f"{self.chain.checkpoint}: {', '.join(refused)} "
                    f"(is {self.name!r} a witness login?)"
                )
            )

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "backslashreplace")
        self.inbox.put(
            _Message(topic, bytes(msg.payload), bool(msg.dup), now_ms(), (self._generation, msg.mid, msg.qos))
        )

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if reason.is_failure:
            log.warning("the broker refused a witness report (mid %d): %s", mid, reason)
        with self._puback_cond:
            if self._pubacks is not None:
                self._pubacks[mid] = reason
                self._puback_cond.notify_all()

    # ------------------------------------------------------------ the loop (calling thread)

    def run(self, stop: threading.Event) -> int:
        start_session(self.client, self.host, self.port)
        try:
            while not stop.is_set():
                try:
                    item = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, _Refused):
                    return _config_error(item.detail)
                code = self.handle(item)
                if code is not None:
                    return code
            return EXIT_STOPPED
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def handle(self, msg: _Message) -> int | None:
        """Judge one message, keep the outcome, then acknowledge it; an exit code on alarm."""
        source = self.sources.get(msg.topic)
        if source is None:
            log.warning("ignoring a message on %s", msg.topic)
            self._ack(msg)
            return None
        outcome = check(self.store.state, msg.payload, source=source, redelivered=msg.dup)
        if isinstance(outcome, Alarm):
            return self._alarm(outcome, msg, source)
        if isinstance(outcome, Accepted):
            self._accept(outcome, msg, source)
        elif isinstance(outcome, Unlinked):
            log.warning(
                "not kept: header %s at height %d from %s: %s", outcome.hash, outcome.height, source, outcome.detail
            )
        elif isinstance(outcome, AlreadyHave):
            log.debug("already have height %d from %s", outcome.height, source)
        self._ack(msg)
        return None

    def _accept(self, accepted: Accepted, msg: _Message, source: Source) -> None:
        self.store.record(accepted, msg.received_at)
        head = canonical_json({"height": accepted.height, "hash": accepted.hash, "at": now_ms()})
        self.client.publish(witness_topic(self.name, "head"), head, qos=1, retain=True)
        gap = f" after a gap (heights {accepted.gap[0]}..{accepted.gap[1]} never seen)" if accepted.gap else ""
        rotated = f"; ledger key now {accepted.signed.next_key}" if accepted.signed.next_key else ""
        log.info("accepted height %d %s from %s%s%s", accepted.height, accepted.hash, source, gap, rotated)

    def _alarm(self, alarm: Alarm, msg: _Message, source: Source) -> int:
        """Log, keep and publish the alarm (waiting for the broker to confirm), then stop."""
        log.error("%s", alarm.line())
        at = now_ms()
        self.store.record_alarm(alarm, witness=self.name, at=at, source=source, payload=msg.payload)
        body = canonical_json(alarm_record(alarm, witness=self.name, at=at))
        with self._puback_cond:
            self._pubacks = {}
        info = self.client.publish(witness_topic(self.name, "alarm"), body, qos=1, retain=True)
        reason = self._wait_puback(info.mid, ALARM_PUBACK_TIMEOUT_S)
        if reason is None or reason.is_failure:
            log.error(
                "the broker did not confirm the alarm (%s); it is kept in %s", reason or "no PUBACK", self.store.root
            )
        self._ack(msg)  # the alarm is on disk: the message has been dealt with
        return EXIT_ALARM

    def _wait_puback(self, mid: int, timeout: float) -> ReasonCode | None:
        with self._puback_cond:
            self._puback_cond.wait_for(lambda: self._pubacks is not None and mid in self._pubacks, timeout)
            acks, self._pubacks = self._pubacks or {}, None
            return acks.get(mid)

    def _ack(self, msg: _Message) -> None:
        """PUBACK a message of the current connection; older ones the broker sends again."""
        generation, mid, qos = msg.token
        if qos > 0 and generation == self._generation:
            self.client.ack(mid, qos)
