"""The workers' lean MQTT 5 subscriber: its codec by hand-made packets, its behaviour against
the project's real Mosquitto (QoS 1 in, bulk PUBACKs out, persistent sessions, refusals)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from broker import access
from broker.access import DeviceAccess, ServiceAccess
from broker.mqtt import wire
from broker.mqtt.subscriber import MQTTError, Subscriber
from ledger.home import Home
from tests.support.broker import RunningBroker, close_client, connect_client, publish, wait_for

SERVICE_PASSWORD = "subscriber test password"
DEVICE_PASSWORD = "device test password"
TOPIC = "city/d01/water/wm-d01-000001/reading"


def _v5_publish(topic: bytes, payload: bytes, packet_id: int, props: bytes) -> bytes:
    body = (
        wire.mqtt_string(topic)
        + struct.pack("!H", packet_id)
        + wire.encode_remaining_length(len(props))
        + props
        + payload
    )
    return bytes([0x32]) + wire.encode_remaining_length(len(body)) + body


def test_mqtt5_publish_properties_are_skipped_and_a_bad_topic_is_kept_readable() -> None:
    expiry = bytes([0x02]) + struct.pack("!I", 60)  # a message expiry property
    stream = _v5_publish(TOPIC.encode(), b'{"v":1}', 7, expiry) + _v5_publish(b"a\xffb", b"p", 8, b"")
    _, packets, used = wire.split_packets(stream)
    first, second = (wire.parse_publish(f, b, wire.V5) for f, b in packets)
    assert used == len(stream)
    assert (first.topic, first.payload, first.packet_id, first.qos) == (TOPIC, b'{"v":1}', 7, 1)
    assert (second.topic, second.payload) == ("a\\xffb", b"p")


def test_mqtt5_connect_and_subscribe_carry_their_properties() -> None:
    packet = wire.connect_packet(
        "w",
        "w",
        "p",
        keepalive=30,
        clean_session=False,
        version=wire.V5,
        session_expiry=604_800,
        receive_maximum=20_000,
    )
    assert packet[8] == 5 and packet[9] == 0xC0  # protocol level, flags (username, password, no clean start)
    assert packet[12:21] == bytes([8, 0x11]) + struct.pack("!I", 604_800) + bytes([0x21]) + b"N" + b"\x20"
    assert (
        wire.subscribe_packet(1, ["a/b", "c"], qos=1, version=wire.V5)
        == b"\x82\x0d\x00\x01\x00\x00\x03a/b\x01\x00\x01c\x01"
    )
    assert wire.parse_suback(b"\x00\x01\x00\x01\x80", wire.V5) == (1, [1, 0x80])


def test_pubacks_go_out_four_bytes_each_in_one_piece() -> None:
    assert wire.puback_packets([1, 258]) == bytes([0x40, 2, 0, 1, 0x40, 2, 1, 2])


@pytest.fixture
def broker(tmp_path: Path):
    home = Home(tmp_path / "home")
    home.ensure()
    services = [ServiceAccess("ingest-w1", access.hash_password(SERVICE_PASSWORD), "ingest")]
    devices = [DeviceAccess("wm-d01-000001", "d01", "water", access.hash_password(DEVICE_PASSWORD))]
    with RunningBroker(home, devices, services) as b:
        yield b


def _subscriber(broker: RunningBroker, *, clean: bool = False, password: str = SERVICE_PASSWORD) -> Subscriber:
    return Subscriber(
        broker.host,
        broker.port,
        client_id="ingest-w1",
        username="ingest-w1",
        password=password,
        clean_start=clean,
        session_expiry=300,
    )


def _receive(sub: Subscriber, n: int) -> list:
    got: list = []
    wait_for(lambda: got.extend(sub.receive(0.05)) or len(got) >= n, 10, f"{n} messages")
    return got


def test_qos1_messages_arrive_and_unacknowledged_ones_come_back_on_the_same_session(broker: RunningBroker) -> None:
    sub = _subscriber(broker, clean=True)
    sub.subscribe(["$share/g/city/+/+/+/reading"])
    device = connect_client(broker.port, "wm-d01-000001", DEVICE_PASSWORD, client_id="wm-d01-000001")
    for n in range(5):
        publish(device, TOPIC, b"%d" % n)
    got = _receive(sub, 5)
    assert [m.payload for m in got] == [b"0", b"1", b"2", b"3", b"4"] and all(m.qos == 1 for m in got)
    sub.ack([m.packet_id for m in got[:3]])  # the last two stay unacknowledged
    sub.close()
    again = _subscriber(broker)
    assert again.session_present
    back = _receive(again, 2)
    assert sorted(m.payload for m in back) == [b"3", b"4"]
    again.ack([m.packet_id for m in back])
    again.close()
    close_client(device)


def test_a_wrong_password_and_a_malformed_subscription_are_errors_not_hangs(broker: RunningBroker) -> None:
    with pytest.raises(MQTTError, match="refused the connection"):
        _subscriber(broker, password="wrong")
    sub = _subscriber(broker, clean=True)
    try:
        with pytest.raises(MQTTError, match="disconnected us"):
            sub.subscribe(["city/#/reading"])  # '#' must be last: the broker drops the connection
    finally:
        sub.sock.close()
