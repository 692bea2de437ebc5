"""Device acks over one lean connection: QoS 1, retained, many per `send`.

At city scale every reading earns its own ack (a meter reports once in 15
minutes, so each block names each device at most once), and paho spends about
20 µs publishing one: after the signature check, the largest cost left in the
sealer. This publisher writes pre-encoded PUBLISH packets and only counts the
broker's PUBACKs.

It never lets the sealer wait on the network for long, and it need not: an ack
that is lost (broker down, connection cut) is harmless by design. The device
re-sends every reading no ack covers, the re-send settles as a counted
duplicate, and a duplicate always re-announces the device's ack. So a failed
publish closes the connection, logs once, and the next one tries again after
`retry_s`.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

from broker.mqtt import wire
from broker.mqtt.client_ids import mqtt_client_id
from broker.mqtt.tls import TLSSettings, client_context

log = logging.getLogger("cityledger.ingest")


class AckPublisher:
    """Thread-safe: sealing (the writer's lock) and duplicates (the batch loop) both publish."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret_file: Path,
        tls: TLSSettings | None = None,
        retry_s: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.secret_file = secret_file  # its login (0600), read when connecting
        self.retry_s, self.timeout = retry_s, timeout
        self.lock = threading.Lock()
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.inbuf = bytearray()
        self.next_id = 1
        self.failed_at = -retry_s
        self.sent = self.acknowledged = 0

    def publish(self, acks: list[tuple[str, bytes]]) -> int:
        """Publish `(topic, payload)` retained at QoS 1; returns how many went out (0 while the broker is away)."""
        if not acks:
            return 0
        with self.lock:
            if self.sock is not None:
                try:
                    self._drain(self.sock)
                except OSError:  # the broker went away since (restarted?): a fresh connection, now
                    self.sock.close()
                    self.sock = None
            try:
                sock = self._connected()
                if sock is None:
                    return 0
                sock.sendall(
                    b"".join(
                        wire.publish_packet(topic, payload, qos=1, packet_id=self._packet_id(), retain=True)
                        for topic, payload in acks
                    )
                )
            except (OSError, ValueError) as exc:
                self._fail(exc)
                return 0
            self.sent += len(acks)
            return len(acks)

    def close(self) -> None:
        with self.lock:
            if self.sock is not None:
                try:
                    self.sock.sendall(wire.DISCONNECT_PACKET)
                except OSError:
                    pass
                self.sock.close()
                self.sock = None

    def _connected(self) -> socket.socket | ssl.SSLSocket | None:
        if self.sock is not None:
            return self.sock
        if time.monotonic() - self.failed_at < self.retry_s:
            return None
        sock: socket.socket | ssl.SSLSocket = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.tls is not None:
            sock = client_context(self.tls.ca_file).wrap_socket(sock, server_hostname=self.host)
        sock.settimeout(self.timeout)
        login = json.loads(self.secret_file.read_text())
        # Keepalive 0: the broker never drops us for being quiet, so no pings are needed.
        sock.sendall(
            wire.connect_packet(mqtt_client_id(login["username"]), login["username"], login["password"], keepalive=0)
        )
        buf = bytearray()
        deadline = time.monotonic() + self.timeout
        while True:
            _, packets, used = wire.split_packets(buf)
            if packets:
                first, body = packets[0]
                if first >> 4 != wire.CONNACK or wire.parse_connack(body) != 0:
                    sock.close()
                    raise ConnectionRefusedError(f"the broker refused the ack publisher: {body.hex()}")
                self.inbuf = bytearray(buf[used:])
                self.sock = sock
                return sock
            if time.monotonic() > deadline:
                raise TimeoutError("no CONNACK for the ack publisher")
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the broker closed the ack publisher's connection")
            buf += chunk

    def _drain(self, sock: socket.socket | ssl.SSLSocket) -> None:
        """Read what the broker sent (PUBACKs) without waiting, so its replies never back up."""
        sock.setblocking(False)
        try:
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("the broker closed the ack publisher's connection")
                self.inbuf += chunk
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        finally:
            sock.settimeout(self.timeout)
        pubacks, _, used = wire.split_packets(self.inbuf)
        del self.inbuf[:used]
        self.acknowledged += pubacks

    def _packet_id(self) -> int:
        pid = self.next_id
        self.next_id = pid % wire.MAX_PACKET_ID + 1
        return pid

    def _fail(self, exc: BaseException) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.failed_at = None, time.monotonic()
        log.warning("device acks not published (%s); devices re-send and are acked again", exc)
