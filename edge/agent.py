"""One device: sign each reading, keep it in the outbox, publish it, forget it only when the ledger says so.

A broker's PUBACK is not an acknowledgement: a broker can lose what it has not
written to disk. A reading leaves the outbox only when the ledger's retained
`ack` topic covers its seq (PROTOCOL.md section 1); until then it is re-sent
`resend_after` seconds after it was sent, then after twice that, and so on up to
`resend_max`, so a ledger that is down for hours is not answered with a flood.

While disconnected the device keeps measuring and the outbox grows; after each
(re)connect it first learns the latest ack (retained), then sends everything
still unacknowledged in seq order, a bounded number per tick.

The ack is the ledger's contiguous prefix, so one reading the ledger never takes
(quarantined, say) holds every later ack back. New readings must still flow
then, so first sends are never gated on acks; only re-sending is: just the
`resend_window` oldest unacknowledged readings are ever re-sent, which bounds
the re-send traffic of a device whose ack is stuck.

The agent owns no thread and no socket loop: a `edge.netloop.NetLoop` drives
its paho client and calls `tick`. Every method must be called on that loop's
thread (use `NetLoop.call_soon` from elsewhere).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt
from nacl.signing import SigningKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from broker.mqtt.client_ids import mqtt_client_id
from broker.mqtt.tls import TLSSettings
from broker.mqtt.tls import configure as configure_tls
from edge.identity import DeviceIdentity, Enroll, device_dir, load_key, provision
from edge.outbox import Outbox
from ledger.chain.protocol import STATUS_OFFLINE, STATUS_ONLINE, Reading, parse_ack, parse_written_off, sign_reading

__all__ = ["AgentSettings", "DeviceAgent", "DeviceIdentity", "Enroll", "device_dir", "load_key", "provision"]

log = logging.getLogger("cityledger.device")


@dataclass(frozen=True)
class AgentSettings:
    """How a device paces its traffic."""

    resend_after: float = 30.0  # seconds a sent reading may stay unacknowledged before it is sent again
    resend_max: float = 600.0  # the re-send delay doubles per attempt up to this
    resend_window: int = 500  # only the oldest this many unacknowledged readings are re-sent
    sends_per_tick: int = 50  # backlog and re-sent readings published per tick, at most
    keepalive: int = 30  # MQTT keepalive, seconds
    connect_timeout: float = 2.0  # TCP connect timeout, seconds (a connect blocks the loop thread)


class DeviceAgent:
    """The firmware of one device, around a paho client that a NetLoop drives."""

    def __init__(
        self,
        identity: DeviceIdentity,
        outbox: Outbox,
        *,
        host: str,
        port: int,
        settings: AgentSettings = AgentSettings(),
        on_acked: Callable[[int], None] | None = None,
        tls: TLSSettings | None = None,
    ) -> None:
        """`on_acked(n)` is told how many readings each new ack removed from the outbox.

        With `tls` the device speaks MQTT over TLS and accepts only a broker whose
        certificate that CA signed for the host name it dials: its password must
        never reach an impostor.
        """
        if not identity.enrolled:
            raise ValueError(f"{identity.device} has no broker credentials: enrol it first")
        self.identity = identity
        self.outbox = outbox
        self.settings = settings
        self._on_acked = on_acked
        self._reading_topic = identity.topic("reading")
        self._status_topic = identity.topic("status")
        self._ack_topic = identity.topic("ack")

        state = outbox.state(identity.device)
        self._acked = state.acked_seq  # every seq <= this is ledgered
        self._last_seq = state.last_seq  # highest seq stored
        self._cursor = self._acked  # highest seq sent (at least once) on the current connection
        # Re-send timers of sent, unacknowledged readings: (monotonic due time, seq, attempts so far).
        # Every sent seq <= _tracked has one; sent seqs above it are outside the resend window.
        self._timers: list[tuple[float, int, int]] = []
        self._tracked = self._acked
        self._fresh: Reading | None = None  # the last recorded reading, to send it without a query
        self._subscribe_mid: int | None = None
        self._ready = False  # connected and subscribed to the ack topic
        self._refusals = 0  # CONNACK refusals in a row

        self.sent = 0  # publishes of readings, first sends and re-sends
        self.resent = 0  # of which re-sends after resend_after
        self.client = self._make_client(host, port, tls)

    def _make_client(self, host: str, port: int, tls: TLSSettings | None) -> mqtt.Client:
        identity = self.identity
        # The broker admits only prefixed client ids (broker/mqtt/client_ids.py) and names the session by username.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=mqtt_client_id(identity.device), protocol=mqtt.MQTTv5
        )
        client.username_pw_set(identity.username, identity.password)
        client.will_set(self._status_topic, STATUS_OFFLINE, qos=1, retain=True)
        client.connect_timeout = self.settings.connect_timeout  # bounds the TLS handshake too
        configure_tls(client, tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # Only sets the address: the NetLoop opens (and re-opens) the connection.
        client.connect_async(host, port, keepalive=self.settings.keepalive, clean_start=True)
        return client

    # ------------------------------------------------------------ state

    @property
    def device(self) -> str:
        return self.identity.device

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    @property
    def ready(self) -> bool:
        """Connected and subscribed to its ack topic: readings are being sent."""
        return self._ready

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def pending(self) -> int:
        """Readings in the outbox awaiting an ack (seqs are contiguous, so no query is needed)."""
        return max(0, self._last_seq - self._acked)

    # ------------------------------------------------------------ measuring

    def record(self, ts_ms: int, value: int) -> Reading:
        """Sign a measurement, store it durably, then publish it if the link allows.

        Raises OutboxFull (nothing stored, no seq used) when the outbox cannot grow.
        """
        identity = self.identity

        def make(seq: int) -> Reading:
            return sign_reading(
                identity.key, device=identity.device, kind=identity.kind, seq=seq, ts=ts_ms, value=value
            )

        reading = self.outbox.append(identity.device, make)
        self._last_seq = reading.seq
        self._fresh = reading
        if self._ready:
            self._send_new(time.monotonic(), budget=1)
        return reading

    def tick(self, now: float) -> None:
        """Called by the loop every few hundred ms: re-send what is overdue, then drain the backlog."""
        if not self._ready:
            return
        budget = self.settings.sends_per_tick
        budget -= self._resend_overdue(now, budget)
        self._send_new(now, budget)

    def farewell(self) -> mqtt.MQTTMessageInfo | None:
        """A clean shutdown: say `offline` ourselves (the broker sends the Will only on an unclean one)."""
        self._ready = False
        if not self.client.is_connected():
            return None
        return self.client.publish(self._status_topic, STATUS_OFFLINE, qos=1, retain=True)

    def rotate_key(self, key: SigningKey | None = None) -> tuple[str, int]:
        """Sign from the next seq on with a new key; returns (its public key hex, that seq).

        Both go to the ledger (`cityledger devices rotate-key --public-key --from-seq`).
        Readings already signed stay in the outbox as they are: the ledger verifies
        seqs below `from_seq` under the earlier key (ledger/chain/keyspans.py), so none is lost.
        A reading signed with the new key before the ledger has sealed the rotation is
        refused once and taken when it is re-sent. The caller keeps the new key (the
        fleet saves it in the device's directory).
        """
        key = key or SigningKey.generate()
        from_seq = self.outbox.state(self.device).next_seq
        self.identity = replace(self.identity, key=key)
        log.info("%s: signs with a new key from seq %d", self.device, from_seq)
        return key.verify_key.encode().hex(), from_seq

    # ------------------------------------------------------------ sending

    def _send_new(self, now: float, budget: int) -> None:
        """Send readings never sent on this connection, in seq order."""
        if budget <= 0 or self._cursor >= self._last_seq:
            return
        fresh = self._fresh
        if fresh is not None and fresh.seq == self._cursor + 1 == self._last_seq:
            entries = [(fresh.seq, fresh.payload())]
        else:
            entries = [(p.seq, p.payload) for p in self.outbox.pending(self.device, budget, after=self._cursor)]
        for seq, payload in entries:
            self._publish(seq, payload)
            self._cursor = seq
            if seq <= self._acked + self.settings.resend_window:
                heapq.heappush(self._timers, (now + self.settings.resend_after, seq, 0))
                self._tracked = seq

    def _resend_overdue(self, now: float, budget: int) -> int:
        """Re-send readings whose timer expired and that are still not acked, earliest due first."""
        sent = 0
        timers = self._timers
        while timers and sent < budget and timers[0][0] <= now:
            _, seq, attempts = heapq.heappop(timers)
            if seq <= self._acked:
                continue
            payload = self.outbox.get(self.device, seq)
            if payload is None:  # acknowledged meanwhile
                continue
            self._publish(seq, payload)
            heapq.heappush(timers, (now + self._resend_delay(attempts + 1), seq, attempts + 1))
            self.resent += 1
            sent += 1
        return sent

    def _resend_delay(self, attempts: int) -> float:
        return min(self.settings.resend_max, self.settings.resend_after * (1 << min(attempts, 32)))

    def _track_window(self, now: float) -> None:
        """Give re-send timers to sent readings that an advancing ack brought into the resend window."""
        self._tracked = max(self._tracked, self._acked)
        upto = min(self._cursor, self._acked + self.settings.resend_window)
        for seq in range(self._tracked + 1, upto + 1):
            heapq.heappush(self._timers, (now + self.settings.resend_after, seq, 0))
        self._tracked = max(self._tracked, upto)

    def _publish(self, seq: int, payload: bytes) -> None:
        # A failed publish (the link just dropped) is retried like a lost one: by its re-send timer.
        self.client.publish(self._reading_topic, payload, qos=1)
        self.sent += 1

    # ------------------------------------------------------------ acknowledgements

    def acknowledge(self, seq: int, written_off: tuple[int, int] | None = None) -> int:
        """The ledger holds every reading with seq <= `seq`, or an operator wrote it off: drop them.

        Returns how many went. Readings an operator wrote off (`written_off`, first and
        last seq) are dropped unledgered, which the device logs: someone decided it.
        """
        if seq <= self._acked:
            return 0
        dropped = self.outbox.seqs(self.device, written_off[0], min(written_off[1], seq)) if written_off else []
        removed = self.outbox.acknowledge(self.device, seq)
        if written_off:
            log.warning(
                "%s: the ledger wrote off seqs %d-%d; dropped %d of them from the outbox unledgered%s",
                self.device,
                *written_off,
                len(dropped),
                f" ({', '.join(map(str, dropped[:10]))}{' …' if len(dropped) > 10 else ''})" if dropped else "",
            )
        self._acked = seq
        self._cursor = max(self._cursor, seq)
        self._track_window(time.monotonic())
        if self._on_acked is not None and removed:
            self._on_acked(removed)
        return removed

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            # Said once per refusal streak: a fleet with stale credentials must not flood the log.
            level = logging.WARNING if self._refusals == 0 else logging.DEBUG
            log.log(level, "%s: broker refused the connection: %s (retrying with backoff)", self.device, reason)
            self._refusals += 1
            return
        self._refusals = 0
        client.publish(self._status_topic, STATUS_ONLINE, qos=1, retain=True)
        self._subscribe_mid = client.subscribe(self._ack_topic, qos=1)[1]
        # Everything unacknowledged goes again on this connection, from the oldest.
        self._cursor = self._tracked = self._acked
        self._timers.clear()
        self._ready = False

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        if any(r.is_failure for r in reasons):
            log.warning("%s: may not read its ack topic (%s); readings will be re-sent", self.device, reasons)
        # Sending starts on the next tick, by when the retained ack that follows the SUBACK has
        # usually been read: the backlog then starts after what the ledger already holds.
        self._ready = True

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self._ready = False

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != self._ack_topic:
            return
        parsed = parse_ack(bytes(message.payload))
        if parsed is None or parsed[0] < 0:
            log.warning("%s: ignoring malformed ack %r", self.device, message.payload[:100])
            return
        self.acknowledge(parsed[0], parse_written_off(bytes(message.payload)))
