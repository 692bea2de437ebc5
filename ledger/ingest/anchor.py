"""The city anchor: follows every district's header stream and seals district heads into the city chain.

It runs on the city home (`cityledger anchor`), where a city of district chains
runs no ingest of its own. Headers arrive on a persistent MQTT 5 session, so
what is published while the anchor is down is queued by the broker; a message is
acknowledged only after the city block that anchors what it said has committed,
so a crash loses nothing the broker still holds. The judging is ledger/chain/anchors.py.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker.mqtt.sessions import service_client
from broker.mqtt.sessions import start as start_session
from broker.mqtt.tls import TLSSettings
from ledger.chain.anchors import Follower
from ledger.chain.protocol import DISTRICT_CHECKPOINT_TOPIC, DISTRICT_HEADERS_TOPIC, ChainTopics, canonical_json
from ledger.chain.witness import alarm_record
from ledger.clock import now_ms
from ledger.home import Home
from ledger.ingest.headers import publish_head, publish_sealed
from ledger.ingest.service import drain
from ledger.service import rpc
from ledger.service.api import local_api
from ledger.service.operations import districts as district_ops
from ledger.service.writer import LedgerWriter

log = logging.getLogger("cityledger.anchor")


@dataclass(frozen=True, slots=True)
class _Header:
    district: str
    source: str  # "headers" | "checkpoint"
    payload: bytes
    redelivered: bool
    token: tuple[int, int, int]  # (connection generation, packet id, QoS)


class AnchorService:
    """One MQTT connection in, one city block per tick out."""

    def __init__(
        self,
        home: Home,
        writer: LedgerWriter,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        every: float = 5.0,
        tls: TLSSettings | None = None,
    ) -> None:
        if home.district is not None:
            raise ValueError("the anchor runs on the city's home, not a district's")
        if not 0.05 <= every <= 3600:
            raise ValueError("--every must be between 0.05 and 3600 seconds")
        self.home, self.writer, self.every = home, writer, every
        self.host, self.port = host, port
        self.follower = Follower.resume(writer.districts(), district_ops.anchored_heads(writer))
        self.anchored = 0
        self.inbox: queue.Queue[_Header] = queue.Queue()
        self._generation = 0
        self.client = service_client(username, username, password, tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        writer.on_sealed.append(lambda sealed: publish_sealed(self.client, ChainTopics(), sealed))

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
            log.error("broker refused the anchor's connection: %s", reason)
            return
        self._generation += 1
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(DISTRICT_HEADERS_TOPIC, options), (DISTRICT_CHECKPOINT_TOPIC, options)])
        publish_head(client, ChainTopics(), self.writer)
        log.info("connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg._topic.split(b"/")  # city/ledger/districts/{district}/{headers|checkpoint}
        self.inbox.put(
            _Header(
                parts[3].decode("utf-8", "replace"),
                parts[4].decode("ascii", "replace"),
                msg.payload,  # type: ignore[arg-type]  # paho's payload is bytes
                bool(msg.dup),
                (self._generation, msg.mid, msg.qos),
            )
        )  # type: ignore[arg-type]

    # ------------------------------------------------------------ the loop (main thread)

    def run(self, stop: threading.Event) -> None:
        """Serve the city's local API and anchor every `every` seconds until `stop` is set."""
        server, _ = rpc.serve(local_api(self.home, self.writer), self.home.rpc_socket)
        start_session(self.client, self.host, self.port)
        try:
            while not stop.is_set():
                stop.wait(self.every)
                self.tick()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            rpc.stop(server, self.home.rpc_socket)

    def tick(self) -> None:
        """Judge what arrived, seal what moved, then acknowledge it all."""
        for district, key in self.writer.districts().items():  # districts added since we started
            self.follower.add_district(district, key)
        messages, alarms, now = drain(self.inbox), [], now_ms()
        for m in messages:
            alarm = self.follower.offer(
                m.district, m.payload, "headers" if m.source == "headers" else "checkpoint", m.redelivered
            )
            if alarm is not None:
                witness = f"anchor-{m.district}"
                log.error("district %s is no longer anchored: %s", m.district, alarm.line())
                alarms.append(
                    (witness, "alarm", canonical_json(alarm_record(alarm, witness=witness, at=now)).decode(), now)
                )
        heads = self.follower.take()
        if heads or alarms:
            district_ops.anchor(self.writer, heads, alarms)
            self.anchored += len(heads)
        generation = self._generation
        for m in messages:
            gen, mid, qos = m.token
            if gen == generation and qos > 0:
                self.client.ack(mid, qos)
