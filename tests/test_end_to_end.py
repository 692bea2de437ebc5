"""The whole pipeline with real parts: Mosquitto, `cityledger ingest`, DuckDB, the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import paho.mqtt.client as mqtt
import pytest

from ledger.chain.protocol import CHECKPOINT_TOPIC, parse_ack
from tests.support.broker import client_log, close_client, connect_client, publish, subscribe, wait_for
from tests.support.stack import SimDevice, Stack

NOW = lambda: int(time.time() * 1000)  # noqa: E731


@pytest.fixture(params=[0, 2], ids=["one process", "two workers"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Every test here runs against both ingest shapes: screening in the sealer, and two
    worker processes on one MQTT 5 shared subscription."""
    with Stack(tmp_path / "home", workers=request.param) as s:
        yield s


def test_readings_are_ledgered_exactly_once_and_acked(stack: Stack) -> None:
    devices = [stack.enroll(f"wm-d01-{i:06d}") for i in range(4)]
    per_device = 60
    clients = []
    for dev in devices:
        client = stack.connect(dev)
        subscribe(client, dev.ack_topic)
        clients.append(client)
        for n in range(per_device):
            reading = dev.reading(value=1000 + n, ts=NOW())
            client.publish(dev.topic, reading.payload(), qos=1)
    total = len(devices) * per_device
    wait_for(lambda: stack.status()["readings"] == total, 30, f"{total} readings ledgered")

    for dev, client in zip(devices, clients):

        def acked(client: mqtt.Client = client, dev: SimDevice = dev) -> bool:
            acks = [parse_ack(m.payload) for m in client_log(client).received(dev.ack_topic)]
            return any(a and a[0] == per_device for a in acks)

        wait_for(acked, 10, f"ack seq {per_device} for {dev.device}")
        close_client(client)

    status = stack.cli_json("status", "--json")
    assert status["readings"] == total
    assert status["quarantined"] == 0 and status["duplicates"] == 0
    verify = stack.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout


def test_identical_redelivery_is_a_counted_duplicate(stack: Stack) -> None:
    dev = stack.enroll("gm-d02-000001", kind="gas", district="d02")
    client = stack.connect(dev)
    reading = dev.reading(value=5, ts=NOW())
    publish(client, dev.topic, reading.payload())
    wait_for(lambda: stack.status()["readings"] == 1, 15, "first copy ledgered")
    publish(client, dev.topic, reading.payload())
    wait_for(lambda: stack.status()["duplicates"] == 1, 15, "second copy counted as duplicate")
    close_client(client)
    status = stack.status()
    assert status["readings"] == 1 and status["quarantined"] == 0


def test_each_quarantine_reason_comes_from_a_real_message(stack: Stack) -> None:
    dev = stack.enroll("em-d01-000001", kind="electricity")
    other = stack.enroll("em-d01-000002", kind="electricity")
    gone = stack.enroll("em-d01-000003", kind="electricity")
    client = stack.connect(dev)
    gone_client = stack.connect(gone)
    first = dev.reading(value=10, ts=NOW())
    publish(client, dev.topic, first.payload())
    wait_for(lambda: stack.status()["readings"] == 1, 15, "a good reading ledgered")

    stranger = dev.reading(value=1, ts=NOW(), seq=99).model_copy(update={"device": "em-d01-999999"})
    forged = dev.reading(value=11, ts=NOW(), seq=2).model_copy(update={"value": 12})
    replay = dev.reading(value=999, ts=NOW(), seq=1)  # validly signed, seq 1 holds other contents
    future = dev.reading(value=12, ts=NOW() + 10 * 60 * 1000, seq=3)
    as_other = other.reading(value=3, ts=NOW())  # other's valid reading, sent on dev's topic
    late_gone = gone.reading(value=1, ts=NOW())
    expected = {
        "too_large": b'{"pad":"' + b"x" * 2000 + b'"}',
        "malformed": b'{"v":1,"device":"em-d01-000001"',
        "unknown_device": stranger.payload(),
        "bad_signature": forged.payload(),
        "replay": replay.payload(),
        "future_timestamp": future.payload(),
        "topic_mismatch": as_other.payload(),
    }
    for payload in expected.values():
        publish(client, dev.topic, payload)
    # revoked_device: the reading waits in the broker's queue for ingest's durable
    # session while ingest is down; the device is revoked before ingest returns.
    wait_for(lambda: stack.status()["quarantined"] == len(expected), 15, "the first reasons quarantined")
    stack.stop_ingest()
    publish(gone_client, gone.topic, late_gone.payload())
    close_client(gone_client)
    stack.cli("devices", "revoke", gone.device, check=True)
    stack.start_ingest()
    expected["revoked_device"] = late_gone.payload()

    wait_for(lambda: stack.status()["quarantined"] == len(expected), 15, "every bad message quarantined")
    rows = stack.cli_json("quarantine", "list", "--json")
    by_reason = {r["reason"]: r for r in rows}
    assert set(by_reason) == set(expected)
    for reason, payload in expected.items():
        assert by_reason[reason]["payload"] == payload.decode(), reason
        assert by_reason[reason]["topic"] and by_reason[reason]["received_at"] > 0
    only_replays = stack.cli_json("quarantine", "list", "--reason", "replay", "--json")
    assert [r["reason"] for r in only_replays] == ["replay"]
    assert stack.status()["readings"] == 1
    close_client(client)


def test_checkpoint_is_the_signed_head(stack: Stack) -> None:
    dev = stack.enroll("ps-d03-000001", kind="parking", district="d03")
    client = stack.connect(dev)
    publish(client, dev.topic, dev.reading(value=1, ts=NOW()).payload())
    wait_for(lambda: stack.status()["readings"] == 1, 15, "reading ledgered")
    close_client(client)
    secret = json.loads(stack.home.service_secret("dashboard").read_text())
    watcher = connect_client(stack.broker.port, secret["username"], secret["password"], client_id="test-observer")
    subscribe(watcher, CHECKPOINT_TOPIC)
    head = stack.status()["last_block_hash"]
    wait_for(
        lambda: any(json.loads(m.payload)["hash"] == head for m in client_log(watcher).received(CHECKPOINT_TOPIC)),
        10,
        "retained checkpoint",
    )
    close_client(watcher)


def test_verify_names_a_tampered_reading(stack: Stack) -> None:
    dev = stack.enroll("wm-d02-000007", district="d02")
    client = stack.connect(dev)
    for n in range(5):
        publish(client, dev.topic, dev.reading(value=100 + n, ts=NOW()).payload())
    wait_for(lambda: stack.status()["readings"] == 5, 15, "readings ledgered")
    close_client(client)
    stack.stop_ingest()
    assert stack.cli("verify").returncode == 0
    con = duckdb.connect(str(stack.home.database))
    con.execute("UPDATE readings SET value = value + 1 WHERE device = ? AND seq = 3", [dev.device])
    height = con.execute("SELECT height FROM readings WHERE device = ? AND seq = 3", [dev.device]).fetchone()[0]
    con.close()
    out = stack.cli("verify")
    assert out.returncode == 1
    assert f"block {height}" in out.stdout and f"{dev.device}#3" in out.stdout, out.stdout


def test_hostile_payloads_through_the_real_broker_are_quarantined_not_fatal(stack: Stack) -> None:
    dev = stack.enroll("gm-d01-000666", kind="gas")
    client = stack.connect(dev)
    good = dev.reading(value=7, ts=NOW()).payload()
    hostile = [
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"[" * 600 + b"]" * 400,  # deeply nested, unbalanced
        good.replace(b'"value":7', b'"value":NaN'),  # NaN
        good.replace(b'"value":7', b'"value":7.5'),  # float
        good.replace(b'"value":7', b'"value":' + b"9" * 900),  # huge integer (still under 1 KiB? no: too_large)
        good.replace(b'"value":7', b'"value":' + b"9" * 300),  # huge integer under 1 KiB
        good[:-1] + b',"value":8}',  # duplicate key
        b"{}",
        b"",
    ]
    for payload in hostile:
        publish(client, dev.topic, payload)
    publish(client, dev.topic, good)  # and the device's honest reading still gets through
    wait_for(lambda: stack.status()["readings"] == 1, 15, "the honest reading ledgered")
    wait_for(lambda: stack.status()["quarantined"] == len(hostile), 15, "every hostile payload quarantined")
    reasons = sorted(r["reason"] for r in stack.cli_json("quarantine", "list", "--device", dev.device, "--json"))
    assert reasons == sorted(["malformed"] * (len(hostile) - 1) + ["too_large"])
    assert stack.ingest is not None and stack.ingest.poll() is None  # ingest still alive
    close_client(client)
