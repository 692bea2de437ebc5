"""The few MQTT packets cityledger writes and reads itself, as pure functions.

paho-mqtt costs tens of microseconds of Python per message. Two places cannot
afford that and speak MQTT over raw sockets instead: the ingest workers'
subscriber (broker/mqtt/subscriber.py, MQTT 5: QoS 1 in, PUBACKs out in bulk) and the
benchmark's load generator (bench/loadgen.py, MQTT 3.1.1: pre-encoded PUBLISH
packets written in large slices). Everything else uses paho. MQTT 3.1.1 and 5.0
(OASIS standards) differ here only by the properties that 5.0 adds after the
variable header; `version` says which is spoken.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

V311, V5 = 4, 5  # protocol levels
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
DISCONNECT_PACKET = b"\xe0\x00"
PINGREQ_PACKET = b"\xc0\x00"
PROP_SESSION_EXPIRY, PROP_RECEIVE_MAXIMUM = 0x11, 0x21
MAX_REMAINING_LENGTH = 268_435_455  # four length bytes
MAX_PACKET_ID = 65535


class Publish(NamedTuple):
    """An incoming PUBLISH (a named tuple: ingest workers make one per message)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int | None


# ---------------------------------------------------------------- encoding


def encode_remaining_length(n: int) -> bytes:
    """The variable-length integer of a fixed header (7 bits a byte, high bit = more)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(text: str | bytes) -> bytes:
    """A UTF-8 string with its two-byte length prefix."""
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    username: str,
    password: str,
    *,
    keepalive: int = 0,
    clean_session: bool = True,
    version: int = V311,
    session_expiry: int = 0,
    receive_maximum: int = 65535,
) -> bytes:
    """CONNECT with a username and password; keepalive 0 means the broker never expects a ping.

    MQTT 5 adds the session's expiry (seconds; 0: ends with the connection) and how many
    QoS 1 messages the broker may have in flight to us at once.
    """
    flags = 0x80 | 0x40 | (0x02 if clean_session else 0)
    header = mqtt_string("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        props = (
            bytes([PROP_SESSION_EXPIRY])
            + struct.pack("!I", session_expiry)
            + bytes([PROP_RECEIVE_MAXIMUM])
            + struct.pack("!H", receive_maximum)
        )
        header += encode_remaining_length(len(props)) + props
    return _packet(CONNECT << 4, header + mqtt_string(client_id) + mqtt_string(username) + mqtt_string(password))


def subscribe_packet(packet_id: int, topics: str | list[str], qos: int = 0, version: int = V311) -> bytes:
    """SUBSCRIBE to topic filters (the fixed header's flags must be 0b0010)."""
    _check_packet_id(packet_id)
    filters = b"".join(mqtt_string(t) + bytes([qos]) for t in ([topics] if isinstance(topics, str) else topics))
    props = b"\x00" if version == V5 else b""
    return _packet((SUBSCRIBE << 4) | 0x02, struct.pack("!H", packet_id) + props + filters)


def publish_packet(
    topic: str | bytes, payload: bytes, *, qos: int = 1, packet_id: int | None = None, retain: bool = False
) -> bytes:
    """PUBLISH; QoS 1 and 2 carry a packet id, QoS 0 must not."""
    if qos not in (0, 1, 2):
        raise ValueError(f"invalid QoS {qos}")
    if (qos > 0) != (packet_id is not None):
        raise ValueError("a packet id is required for QoS 1 and 2, and forbidden for QoS 0")
    ident = b""
    if packet_id is not None:
        _check_packet_id(packet_id)
        ident = struct.pack("!H", packet_id)
    return _packet((PUBLISH << 4) | (qos << 1) | int(retain), mqtt_string(topic) + ident + payload)


def puback_packet(packet_id: int) -> bytes:
    """A PUBACK meaning success (MQTT 5 lets the reason code and properties be left out)."""
    _check_packet_id(packet_id)
    return bytes([PUBACK << 4, 2]) + struct.pack("!H", packet_id)


def puback_packets(packet_ids: list[int]) -> bytes:
    """Many PUBACKs, to be written with one `send`."""
    return b"".join(struct.pack("!BBH", PUBACK << 4, 2, pid) for pid in packet_ids)


def packet_id_for(seq: int) -> int:
    """A reading's packet id: 1..65535 cycling with its seq, unique among fewer than 65535 in flight."""
    return (seq - 1) % MAX_PACKET_ID + 1


def _check_packet_id(packet_id: int) -> None:
    if not 1 <= packet_id <= MAX_PACKET_ID:
        raise ValueError(f"packet id {packet_id} out of range 1..{MAX_PACKET_ID}")


# ---------------------------------------------------------------- decoding


def decode_remaining_length(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(length, offset after it) read at `pos`, or None when the buffer ends inside it."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 4, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(buf) - pos >= 4:
        raise ValueError("malformed remaining length (more than four bytes)")
    return None


def split_packets(buf: bytes | bytearray) -> tuple[int, list[tuple[int, bytes]], int]:
    """(PUBACKs, other complete packets as (first byte, body), bytes consumed).

    PUBACKs are only counted: they are nearly every packet the broker sends a
    publisher, and the benchmark needs nothing from them but their number.
    """
    pubacks, others, pos, end = 0, [], 0, len(buf)
    while pos < end:
        first = buf[pos]
        if first == 0x40 and pos + 4 <= end and buf[pos + 1] == 2:  # the common case, decoded inline
            pubacks += 1
            pos += 4
            continue
        if pos + 2 < end and buf[pos + 1] < 0x80:  # one length byte, or two (every reading), inline too
            length, start = buf[pos + 1], pos + 2
        elif pos + 3 < end and buf[pos + 2] < 0x80:
            length, start = (buf[pos + 1] & 0x7F) | buf[pos + 2] << 7, pos + 3
        else:
            decoded = decode_remaining_length(buf, pos + 1)
            if decoded is None:
                break
            length, start = decoded
        if start + length > end:
            break
        if first >> 4 == PUBACK:
            pubacks += 1
        else:
            others.append((first, bytes(buf[start : start + length])))
        pos = start + length
    return pubacks, others, pos


def parse_publish(first: int, body: bytes, version: int = V311) -> Publish:
    """The parts of a PUBLISH packet's variable header and payload (MQTT 5 properties skipped)."""
    if first >> 4 != PUBLISH:
        raise ValueError(f"not a PUBLISH packet: {first:#04x}")
    qos = (first >> 1) & 0x03
    if len(body) < 2:
        raise ValueError("PUBLISH too short")
    (topic_len,) = struct.unpack_from("!H", body, 0)
    pos = 2 + topic_len
    packet_id = None
    if qos:
        if len(body) < pos + 2:
            raise ValueError("PUBLISH too short for its packet id")
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    if version == V5:
        pos = pos + 1 if len(body) > pos and body[pos] == 0 else _after_properties(body, pos, "PUBLISH")
    if len(body) < pos:
        raise ValueError("PUBLISH topic runs past the packet")
    raw_topic = bytes(body[2 : 2 + topic_len])
    try:
        topic = raw_topic.decode()
    except UnicodeDecodeError:  # kept readable for the quarantine, never fatal
        topic = raw_topic.decode("utf-8", "backslashreplace")
    return Publish(topic, bytes(body[pos:]), qos, bool(first & 0x01), packet_id)


def parse_connack(body: bytes) -> int:
    """The CONNACK return code: 0 accepted; else refused (MQTT 5 then adds properties)."""
    if len(body) < 2:
        raise ValueError("CONNACK must have at least two bytes")
    return body[1]


def parse_suback(body: bytes, version: int = V311) -> tuple[int, list[int]]:
    """(packet id, granted QoS per filter; 0x80 and above mean refused)."""
    if len(body) < 3:
        raise ValueError("SUBACK too short")
    (packet_id,) = struct.unpack_from("!H", body, 0)
    pos = _after_properties(body, 2, "SUBACK") if version == V5 else 2
    return packet_id, list(body[pos:])


def _after_properties(body: bytes, pos: int, what: str) -> int:
    """Where an MQTT 5 property list starting at `pos` ends: cityledger reads none of them."""
    decoded = decode_remaining_length(body, pos)
    if decoded is None:
        raise ValueError(f"{what} properties run past the packet")
    length, start = decoded
    return start + length
