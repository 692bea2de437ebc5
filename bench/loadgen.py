"""The benchmark's load generator: many devices on raw sockets, driven by one selector loop.

Each device has its own connection (the broker's ACL lets a login publish only
its own readings) and its readings already signed and encoded as one byte
string of consecutive QoS 1 PUBLISH packets, so publishing k readings is one
slice and one send(). A device keeps at most `window` readings that no `ack`
covers yet, as a real device keeps what is not durable; when an ack arrives, the
readings it covers get their publish-to-ack latency and the device refills its
window. The load is therefore closed-loop: sustained at what the ledger absorbs,
never one unbounded burst into the broker's queue.
"""

from __future__ import annotations

import selectors
import socket
import time
from array import array
from collections import deque
from dataclasses import dataclass, field

from broker.mqtt import wire
from broker.mqtt.client_ids import mqtt_client_id
from ledger.chain.protocol import parse_ack
from ledger.errors import LedgerError

CONNECT_TIMEOUT_S = 10.0
REFUSED_RETRY_S = 0.2  # the broker re-reads its password file asynchronously after enrolment
RECV_BYTES = 1 << 16


class LoadError(LedgerError, RuntimeError):
    """The broker refused or dropped a device: the run cannot mean anything any more."""


@dataclass(frozen=True, slots=True)
class Supply:
    """One device's pre-encoded readings: packet i (seq i+1) is blob[offsets[i]:offsets[i+1]]."""

    device: str
    password: str
    ack_topic: str
    blob: bytes
    offsets: array

    @property
    def count(self) -> int:
        return len(self.offsets) - 1


@dataclass(slots=True)
class _Device:
    supply: Supply
    sock: socket.socket
    view: memoryview
    sent: int = 0  # readings handed to the socket: seqs 1..sent
    acked: int = 0  # the device's latest ack: seqs 1..acked are durable
    out: memoryview | None = None  # bytes a full socket buffer did not take yet
    inbuf: bytearray = field(default_factory=bytearray)
    batches: deque[list[float]] = field(default_factory=deque)  # [first index, end index, publish time]


@dataclass
class Latencies:
    """Publish-to-ack latencies as (seconds, readings) pairs: readings of one send share a time."""

    pairs: list[tuple[float, int]] = field(default_factory=list)

    def add(self, seconds: float, readings: int) -> None:
        self.pairs.append((seconds, readings))

    @property
    def readings(self) -> int:
        return sum(n for _, n in self.pairs)

    def percentile(self, q: float) -> float | None:
        return weighted_percentile(self.pairs, q)


def weighted_percentile(pairs: list[tuple[float, int]], q: float) -> float | None:
    """The smallest value with at least q (0..1) of the total weight at or below it; None if empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be between 0 and 1")
    total = sum(n for _, n in pairs)
    if total == 0:
        return None
    need, seen = q * total, 0
    for value, n in sorted(pairs):
        seen += n
        if seen >= need and seen > 0:
            return value
    return max(v for v, _ in pairs)


class LoadGenerator:
    """Connects every device, then `pump()` publishes, refills windows and reads acks."""

    def __init__(self, host: str, port: int, supplies: list[Supply], window: int) -> None:
        if not 1 <= window < wire.MAX_PACKET_ID:
            raise ValueError(f"window must be between 1 and {wire.MAX_PACKET_ID - 1}")
        self.host, self.port, self.window = host, port, window
        self.supplies = supplies
        self.selector = selectors.DefaultSelector()
        self.devices: list[_Device] = []
        self.publishing = False
        self.sent_total = 0
        self.acked_total = 0
        self.pubacks = 0
        self.exhausted = 0  # devices that have sent every pre-signed reading
        self.latencies = Latencies()
        self.measure_from = float("inf")
        self.measure_until = float("inf")

    # ------------------------------------------------------------ connecting

    def connect(self) -> None:
        """Log every device in and subscribe it to its own ack (blocking, one device at a time)."""
        for supply in self.supplies:
            sock, rest = self._login(supply)
            sock.setblocking(False)
            dev = _Device(supply, sock, memoryview(supply.blob), inbuf=bytearray(rest))
            self.devices.append(dev)
            self.selector.register(sock, selectors.EVENT_READ, dev)

    def _login(self, supply: Supply) -> tuple[socket.socket, bytes]:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(
                    wire.connect_packet(mqtt_client_id(supply.device), supply.device, supply.password)
                    + wire.subscribe_packet(1, supply.ack_topic, qos=0)
                )
                code, rest = _await_login(sock, supply.device)
            except OSError as exc:
                raise LoadError(f"device {supply.device} could not log in to the broker: {exc}") from exc
            if code == 0:
                return sock, rest
            sock.close()
            if code not in (4, 5) or time.monotonic() > deadline:
                raise LoadError(f"broker refused device {supply.device} (CONNACK return code {code})")
            time.sleep(REFUSED_RETRY_S)

    # ------------------------------------------------------------ running

    def start_publishing(self) -> None:
        self.publishing = True
        now = time.monotonic()
        for dev in self.devices:
            self._fill(dev, now)

    def stop_publishing(self) -> None:
        self.publishing = False

    @property
    def unacked(self) -> int:
        return self.sent_total - self.acked_total

    def pump(self, timeout: float) -> None:
        """One round: wait up to `timeout` for sockets, then read acks, refill windows, flush sends."""
        events = self.selector.select(timeout)
        now = time.monotonic()
        for key, mask in events:
            dev: _Device = key.data
            if mask & selectors.EVENT_READ:
                self._read(dev, now)
            if mask & selectors.EVENT_WRITE:
                self._flush(dev)
                self._fill(dev, now)

    def close(self) -> None:
        """Say goodbye politely (a DISCONNECT, so the broker publishes no will) and close."""
        for dev in self.devices:
            try:
                dev.sock.setblocking(True)
                dev.sock.settimeout(1.0)
                dev.sock.sendall(wire.DISCONNECT_PACKET)
            except OSError:
                pass  # already gone: nothing to say goodbye to
            self.selector.unregister(dev.sock)
            dev.sock.close()
        self.devices.clear()
        self.selector.close()

    # ------------------------------------------------------------ per device

    def _read(self, dev: _Device, now: float) -> None:
        try:
            data = dev.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except ConnectionError as exc:
            raise LoadError(f"broker dropped device {dev.supply.device}: {exc}") from exc
        if not data:
            raise LoadError(f"broker closed the connection of device {dev.supply.device}")
        dev.inbuf += data
        pubacks, packets, used = wire.split_packets(dev.inbuf)
        del dev.inbuf[:used]
        self.pubacks += pubacks
        for first, body in packets:
            if first >> 4 == wire.PUBLISH:
                self._on_publish(dev, wire.parse_publish(first, body), now)

    def _on_publish(self, dev: _Device, msg: wire.Publish, now: float) -> None:
        if msg.packet_id is not None:
            self._write(dev, memoryview(wire.puback_packet(msg.packet_id)))
        ack = parse_ack(msg.payload)
        if ack is None:
            raise LoadError(f"device {dev.supply.device} got a malformed ack: {msg.payload[:80]!r}")
        self._on_ack(dev, ack[0], now)

    def _on_ack(self, dev: _Device, seq: int, now: float) -> None:
        if seq <= dev.acked:
            return  # an older ack, or the retained copy of one we had
        if seq > dev.sent:
            raise LoadError(f"device {dev.supply.device}: ack for seq {seq}, but only {dev.sent} were sent")
        batches = dev.batches
        while batches and batches[0][0] < seq:
            batch = batches[0]
            first, end, sent_at = batch
            if self.measure_from <= sent_at < self.measure_until:
                self.latencies.add(now - sent_at, int(min(end, seq) - first))
            if end <= seq:
                batches.popleft()
            else:
                batch[0] = seq
        self.acked_total += seq - dev.acked
        dev.acked = seq
        self._fill(dev, now)

    def _fill(self, dev: _Device, now: float) -> None:
        """Send as many next readings as the window allows, in one slice of the pre-encoded blob."""
        if not self.publishing or dev.out is not None:
            return
        count = dev.supply.count
        n = min(self.window - (dev.sent - dev.acked), count - dev.sent)
        if n <= 0:
            return
        offsets = dev.supply.offsets
        dev.batches.append([dev.sent, dev.sent + n, now])
        chunk = dev.view[offsets[dev.sent] : offsets[dev.sent + n]]
        dev.sent += n
        self.sent_total += n
        if dev.sent == count:
            self.exhausted += 1
        self._write(dev, chunk)

    def _write(self, dev: _Device, data: memoryview) -> None:
        if dev.out is not None:
            dev.out = memoryview(bytes(dev.out) + bytes(data))
            return
        try:
            n = dev.sock.send(data)
        except BlockingIOError:
            n = 0
        except ConnectionError as exc:
            raise LoadError(f"broker dropped device {dev.supply.device}: {exc}") from exc
        if n < len(data):
            dev.out = data[n:]
            self.selector.modify(dev.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, dev)

    def _flush(self, dev: _Device) -> None:
        if dev.out is None:
            return
        try:
            n = dev.sock.send(dev.out)
        except BlockingIOError:
            return
        except ConnectionError as exc:
            raise LoadError(f"broker dropped device {dev.supply.device}: {exc}") from exc
        dev.out = dev.out[n:] if n < len(dev.out) else None
        if dev.out is None:
            self.selector.modify(dev.sock, selectors.EVENT_READ, dev)


def _await_login(sock: socket.socket, device: str) -> tuple[int, bytes]:
    """(CONNACK return code, bytes after the SUBACK) from a freshly connected socket."""
    buf = bytearray()
    connack: int | None = None
    while True:
        data = sock.recv(RECV_BYTES)
        if not data:
            return (connack if connack not in (None, 0) else 5), b""  # refused logins are closed
        buf += data
        _, packets, used = wire.split_packets(buf)
        del buf[:used]
        for i, (first, body) in enumerate(packets):
            kind = first >> 4
            if kind == wire.CONNACK:
                connack = wire.parse_connack(body)
                if connack != 0:
                    return connack, b""
            elif kind == wire.SUBACK:
                _, granted = wire.parse_suback(body)
                if 0x80 in granted:
                    raise LoadError(f"broker refused device {device} its ack subscription")
                later = b"".join(bytes([f]) + wire.encode_remaining_length(len(b)) + b for f, b in packets[i + 1 :])
                return 0, later + bytes(buf)
