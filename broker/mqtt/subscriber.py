"""A lean MQTT 5 subscriber for the ingest workers' hot path: QoS 1 in, PUBACKs out, in bulk.

paho-mqtt spends about 30 µs of CPU on each QoS 1 message it receives: a packet
object, a properties object, a callback and a PUBACK written on its own. That
is more than half the cost of the signature check the message exists for. An
ingest worker needs much less of MQTT: one subscription, PUBLISH packets in,
PUBACKs out. This client reads whatever the socket holds, cuts every complete
packet out of it in one pass, and writes many PUBACKs with one `send`. It is
single-threaded on purpose (an SSL socket must not be read and written from two
threads), and everything that is not the hot path (devices, witnesses, the
sealer's publishing) stays on paho.

The packets are broker/mqtt/wire.py's pure functions, shared with the
benchmark's load generator; tests/test_subscriber.py runs this against the
project's real Mosquitto.
"""

from __future__ import annotations

import socket
import ssl
import time

from broker.mqtt import wire
from broker.mqtt.client_ids import mqtt_client_id
from broker.mqtt.tls import TLSSettings, client_context
from ledger.errors import LedgerError


class MQTTError(LedgerError, ConnectionError):
    """The broker refused us or broke the protocol; the caller reconnects."""


# ---------------------------------------------------------------- the connection


class Subscriber:
    """One MQTT 5 connection to the broker. Not thread-safe: one thread reads, acks and pings."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str,
        password: str,
        tls: TLSSettings | None = None,
        keepalive: int = 30,
        clean_start: bool = False,
        session_expiry: int = 0,
        receive_maximum: int = 20000,
        timeout: float = 10.0,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = client_context(tls.ca_file).wrap_socket(sock, server_hostname=host)
        self.sock: socket.socket | ssl.SSLSocket = sock
        self.keepalive = keepalive
        self.buf = bytearray()
        self.pending: list[wire.Publish] = []  # what arrived while waiting for CONNACK or SUBACK
        self.found: bytes | None = None  # the body of the packet `_expect` waits for, once it came
        self.last_sent = time.monotonic()
        # The broker requires the prefix (broker/mqtt/client_ids.py) and names the session by username.
        self._send(
            wire.connect_packet(
                mqtt_client_id(client_id),
                username,
                password,
                keepalive=keepalive,
                clean_session=clean_start,
                version=wire.V5,
                session_expiry=session_expiry,
                receive_maximum=receive_maximum,
            )
        )
        connack = self._expect(wire.CONNACK, timeout)
        code = wire.parse_connack(connack)
        if code != 0:
            self.sock.close()
            raise MQTTError(f"broker refused the connection (reason {code})")
        self.session_present = bool(connack[0] & 0x01)

    def subscribe(self, topics: list[str], timeout: float = 10.0) -> None:
        self._send(wire.subscribe_packet(1, topics, qos=1, version=wire.V5))
        _, granted = wire.parse_suback(self._expect(wire.SUBACK, timeout), wire.V5)
        if len(granted) != len(topics) or any(code >= 0x80 for code in granted):
            raise MQTTError(f"subscription refused: {granted}")

    def receive(self, timeout: float) -> list[wire.Publish]:
        """Whatever PUBLISH packets arrive within `timeout` (one read of the socket)."""
        out, self.pending = self.pending, []
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except (TimeoutError, ssl.SSLWantReadError):
            chunk = None
        if chunk == b"":
            raise MQTTError("the broker closed the connection")
        if chunk:
            self.buf += chunk
            out += self._drain()
        if time.monotonic() - self.last_sent > self.keepalive / 2:
            self._send(wire.PINGREQ_PACKET)
        return out

    def ack(self, packet_ids: list[int]) -> None:
        if packet_ids:
            self._send(wire.puback_packets(packet_ids))

    def close(self, timeout: float = 2.0) -> None:
        """DISCONNECT, then wait for the broker to close its side: a socket closed with unread
        data resets the connection, and the broker may then drop acks it had not read yet."""
        try:
            self._send(wire.DISCONNECT_PACKET)
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(timeout)
            while self.sock.recv(1 << 16):
                pass
        except (OSError, ValueError):
            pass  # already gone, or a TLS socket that cannot half-close: close it anyway
        finally:
            self.sock.close()

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(30)
        self.sock.sendall(data)
        self.last_sent = time.monotonic()

    def _drain(self, want: int | None = None) -> list[wire.Publish]:
        """PUBLISH packets in the buffer; the body of a `want` packet, if one came, in `self.found`."""
        try:
            _, packets, used = wire.split_packets(self.buf)
        except ValueError as exc:
            raise MQTTError(str(exc)) from exc
        del self.buf[:used]
        out: list[wire.Publish] = []
        for first, body in packets:
            kind = first >> 4
            if kind == wire.PUBLISH:
                try:
                    out.append(wire.parse_publish(first, body, wire.V5))
                except ValueError as exc:
                    raise MQTTError(f"malformed PUBLISH from the broker: {exc}") from exc
            elif kind == want:
                self.found = body
            elif kind == wire.DISCONNECT:
                raise MQTTError(f"the broker disconnected us (reason {body[0] if body else 0})")
            elif kind != wire.PINGRESP:
                raise MQTTError(f"unexpected packet type {kind}")
        return out

    def _expect(self, kind: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        self.found = None
        while True:
            self.pending += self._drain(kind)
            if self.found is not None:
                return self.found
            left = deadline - time.monotonic()
            if left <= 0:
                raise MQTTError(f"no packet of type {kind} from the broker within {timeout:.0f} s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise MQTTError("the broker closed the connection")
            self.buf += chunk
