"""Ingest's lean publisher of device acks, against the project's real Mosquitto: retained QoS 1
acks arrive, a restarted broker is reconnected to at once, and a broker that is down costs a
quick, logged zero, never a hang (a lost ack is re-earned by the device's re-send)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import access
from broker.access import DeviceAccess, ServiceAccess
from ledger.chain.protocol import ack_payload, device_topic, parse_ack
from ledger.home import Home, write_private
from ledger.ingest.acks import AckPublisher
from tests.support.broker import RunningBroker, client_log, close_client, connect_client, subscribe, wait_for

DEVICE, PASSWORD = "wm-d01-000001", "device password"
ACK_TOPIC = device_topic("d01", "water", DEVICE, "ack")


@pytest.fixture
def broker(tmp_path: Path):
    home = Home(tmp_path / "home")
    home.ensure()
    write_private(
        home.service_secret("ingest-acks"), json.dumps({"username": "ingest-acks", "password": "acks pw"}).encode()
    )
    services = [ServiceAccess("ingest-acks", access.hash_password("acks pw"), "acks")]
    devices = [DeviceAccess(DEVICE, "d01", "water", access.hash_password(PASSWORD))]
    with RunningBroker(home, devices, services) as b:
        yield b


def _publisher(broker: RunningBroker, retry_s: float = 0.5) -> AckPublisher:
    return AckPublisher(
        broker.host, broker.port, secret_file=broker.home.service_secret("ingest-acks"), retry_s=retry_s, timeout=2.0
    )


def _latest_ack(broker: RunningBroker) -> tuple[int, str] | None:
    """What a device reconnecting now is told: the retained ack on its topic."""
    device = connect_client(broker.port, DEVICE, PASSWORD, client_id=DEVICE)
    try:
        subscribe(device, ACK_TOPIC)
        got = wait_for(lambda: client_log(device).received(ACK_TOPIC), 5, "the retained ack")
        return parse_ack(got[-1].payload)
    finally:
        close_client(device)


def test_acks_are_retained_and_the_broker_acknowledges_them(broker: RunningBroker) -> None:
    pub = _publisher(broker)
    try:
        assert pub.publish([(ACK_TOPIC, ack_payload(n, "ab" * 32)) for n in (1, 2, 3)]) == 3
        assert _latest_ack(broker) == (3, "ab" * 32)
        wait_for(
            lambda: pub.publish([(ACK_TOPIC, ack_payload(4, "cd" * 32))]) and pub.acknowledged >= 3,
            5,
            "PUBACKs counted",
        )
    finally:
        pub.close()


def test_a_restarted_broker_is_reconnected_to_before_the_next_acks(broker: RunningBroker) -> None:
    pub = _publisher(broker)
    try:
        assert pub.publish([(ACK_TOPIC, ack_payload(1, "ab" * 32))]) == 1
        broker.kill()
        broker.start()
        assert pub.publish([(ACK_TOPIC, ack_payload(2, "ab" * 32))]) == 1
        assert _latest_ack(broker) == (2, "ab" * 32)
    finally:
        pub.close()


def test_a_broker_that_is_down_costs_a_quick_zero_and_is_retried(
    broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    pub = _publisher(broker, retry_s=0.5)
    try:
        broker.stop()
        assert pub.publish([(ACK_TOPIC, ack_payload(1, "ab" * 32))]) == 0  # refused at once, logged
        assert "device acks not published" in caplog.text
        broker.start()
        wait_for(lambda: pub.publish([(ACK_TOPIC, ack_payload(5, "ef" * 32))]) == 1, 10, "the publisher back")
        assert _latest_ack(broker) == (5, "ef" * 32)
    finally:
        pub.close()
