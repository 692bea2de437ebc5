"""Device agents and the simulated fleet against the project's real Mosquitto.

No mocks near MQTT: the broker is the one production runs, with generated
passwd/ACL files, and the "ingest" here is a client with the ingest role's
rights. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker.access import DeviceAccess, ServiceAccess, hash_password, new_password
from broker.mqtt.client_ids import mqtt_client_id
from edge.agent import AgentSettings, DeviceAgent, DeviceIdentity, provision
from edge.fleet import FleetBusy, FleetStats, plan_fleet, run_fleet
from edge.identity import CREDENTIALS_FILE, KEY_FILE, device_dir
from edge.netloop import Backoff, NetLoop
from edge.outbox import Outbox
from ledger.chain.protocol import STATUS_OFFLINE, STATUS_ONLINE, Reading, ack_payload, parse_reading, verify_reading
from ledger.home import Home
from tests.support.broker import (
    RunningBroker,
    client_log,
    close_client,
    connect_client,
    publish,
    subscribe,
    wait_for,
)

INGEST = "ingest"
BLOCK = "ab" * 32
FAST = Backoff(initial=0.1, maximum=0.5)


def now_ms() -> int:
    return int(time.time() * 1000)


def enrolled(device: str = "wm-d01-000001", kind: str = "water", district: str = "d01") -> DeviceIdentity:
    return DeviceIdentity.generate(device, kind, district).with_credentials(device, new_password())


def access(identity: DeviceIdentity) -> DeviceAccess:
    return DeviceAccess(identity.device, identity.district, identity.kind, hash_password(identity.password))


class Rig:
    """A home, one device identity, and a broker that knows it and the ingest service."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        self.identity = enrolled()
        self.ingest_password = new_password()
        self.broker = RunningBroker(self.home, [access(self.identity)], [self.ingest_service()])

    def ingest_service(self) -> ServiceAccess:
        return ServiceAccess(INGEST, hash_password(self.ingest_password), "ingest")

    def ingest(self, topic: str = "city/#") -> mqtt.Client:
        client = connect_client(self.broker.port, INGEST, self.ingest_password, f"ingest-{time.monotonic_ns()}")
        subscribe(client, topic)
        return client


class AgentRun:
    """One agent on its own NetLoop thread; the test talks to it through call_soon."""

    def __init__(self, rig: Rig, settings: AgentSettings = AgentSettings()) -> None:
        self.outbox = Outbox(rig.home.fleet / "outbox.sqlite")
        self.agent = DeviceAgent(rig.identity, self.outbox, host="127.0.0.1", port=rig.broker.port, settings=settings)
        self.loop = NetLoop(tick_every=0.05, backoff=FAST)
        self.loop.add(self.agent)
        self.stop = threading.Event()
        self.thread = self.loop.start(self.stop)

    def call(self, fn: Any) -> Any:
        return self.loop.call_soon(fn).result(timeout=10)

    def record(self, value: int) -> Reading:
        return self.call(lambda: self.agent.record(now_ms(), value))

    def pending_seqs(self) -> list[int]:
        return [p.seq for p in self.outbox.pending(self.agent.device, 10_000)]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the network loop did not stop"
        self.outbox.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path / "home")
    try:
        yield rig
    finally:
        rig.broker.stop()


@pytest.fixture
def running(rig: Rig) -> Iterator[Rig]:
    rig.broker.start()
    yield rig


def readings(client: mqtt.Client, identity: DeviceIdentity) -> list[Reading]:
    out = []
    for message in client_log(client).received(identity.topic("reading")):
        reading = parse_reading(message.payload)
        assert isinstance(reading, Reading), reading
        out.append(reading)
    return out


def statuses(client: mqtt.Client, identity: DeviceIdentity) -> list[bytes]:
    return [m.payload for m in client_log(client).received(identity.topic("status"))]


# ---------------------------------------------------------------- one agent


def test_readings_reach_ingest_signed_by_the_device(running: Rig) -> None:
    rig = running
    ingest = rig.ingest()
    run = AgentRun(rig)
    try:
        wait_for(lambda: statuses(ingest, rig.identity)[-1:] == [STATUS_ONLINE], 10, "status online")
        sent = [run.record(1000 + i) for i in range(5)]
        wait_for(lambda: len(readings(ingest, rig.identity)) >= 5, 10, "5 readings")
        got = readings(ingest, rig.identity)
        assert [r.seq for r in got[:5]] == [1, 2, 3, 4, 5]
        assert [r.value for r in got[:5]] == [1000, 1001, 1002, 1003, 1004]
        assert all(verify_reading(rig.identity.verify_key, r) for r in got)
        assert [r.payload() for r in got[:5]] == [r.payload() for r in sent]
        assert run.outbox.count() == 5, "a PUBACK is not an ack: everything stays in the outbox"
    finally:
        run.close()
        close_client(ingest)


def test_a_retained_ack_drains_the_outbox_up_to_n_and_not_beyond(running: Rig) -> None:
    rig = running
    ingest = rig.ingest()
    run = AgentRun(rig)
    try:
        for i in range(6):
            run.record(i)
        wait_for(lambda: len(readings(ingest, rig.identity)) >= 6, 10, "6 readings")
        publish(ingest, rig.identity.topic("ack"), ack_payload(4, BLOCK), retain=True)
        wait_for(lambda: run.call(lambda: run.agent.acked_seq) == 4, 10, "the agent to take the ack")
        assert run.pending_seqs() == [5, 6]
        # An older ack (a redelivery) changes nothing; a malformed one is ignored.
        publish(ingest, rig.identity.topic("ack"), ack_payload(2, BLOCK))
        publish(ingest, rig.identity.topic("ack"), b'{"seq":"6"}')
        assert run.record(99).seq == 7  # processed after the two acks above
        assert run.pending_seqs() == [5, 6, 7]
    finally:
        run.close()
    # A device that restarts learns the retained ack as it subscribes.
    publish(ingest, rig.identity.topic("ack"), ack_payload(6, BLOCK), retain=True)
    restarted = AgentRun(rig)
    try:
        wait_for(lambda: restarted.pending_seqs() == [7], 10, "the retained ack to drain the restarted outbox")
        assert restarted.call(lambda: restarted.agent.acked_seq) == 6
    finally:
        restarted.close()
        close_client(ingest)


def test_unacknowledged_readings_are_resent_after_resend_after(running: Rig) -> None:
    rig = running
    ingest = rig.ingest()
    run = AgentRun(rig, AgentSettings(resend_after=0.6))
    try:
        run.record(1)
        run.record(2)
        times: dict[int, list[float]] = {}

        def receipts() -> dict[int, list[float]]:
            for reading in readings(ingest, rig.identity)[sum(len(v) for v in times.values()) :]:
                times.setdefault(reading.seq, []).append(time.monotonic())
            return times

        wait_for(lambda: all(len(receipts().get(s, [])) >= 2 for s in (1, 2)), 10, "seqs 1 and 2 re-sent")
        assert times[1][1] - times[1][0] >= 0.4, "re-sent before resend_after"
        assert [r.seq for r in readings(ingest, rig.identity)[:4]] == [1, 2, 1, 2], "oldest first"
        # Once acknowledged, they are never sent again: by the time seq 3 has been re-sent, 1 and 2 would have been.
        publish(ingest, rig.identity.topic("ack"), ack_payload(2, BLOCK), retain=True)
        wait_for(lambda: run.call(lambda: run.agent.acked_seq) == 2, 10, "the ack")
        before = {s: len(receipts()[s]) for s in (1, 2)}
        run.record(3)
        wait_for(lambda: len(receipts().get(3, [])) >= 2, 10, "seq 3 re-sent")
        assert {s: len(receipts()[s]) for s in (1, 2)} == before
    finally:
        run.close()
        close_client(ingest)


def durable_subscriber(rig: Rig, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    """An ingest-like client with a persistent session: the broker queues for it while it is away."""
    received: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=mqtt_client_id("durable-ingest"), protocol=mqtt.MQTTv5
    )
    client.username_pw_set(INGEST, rig.ingest_password)
    client.reconnect_delay_set(1, 1)

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            c.subscribe(topic, qos=1)

    client.on_connect = on_connect
    client.on_subscribe = lambda c, u, mid, rcs, props: subscribed.set()
    client.on_message = lambda c, u, m: received.append(bytes(m.payload))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", rig.broker.port, keepalive=30, clean_start=False, properties=props)
    client.loop_start()
    assert subscribed.wait(10), "durable subscriber did not subscribe"
    return client, received


def test_an_agent_started_while_the_broker_is_down_keeps_measuring_then_drains_in_order(rig: Rig) -> None:
    rig.broker.start()
    subscriber, received = durable_subscriber(rig, rig.identity.topic("reading"))
    rig.broker.stop()  # saves the subscriber's session: it will get what is published while it is away
    run = AgentRun(rig)
    try:
        recorded = [run.record(500 + i).seq for i in range(20)]
        assert recorded == list(range(1, 21))
        assert run.outbox.count() == 20
        assert not run.call(lambda: run.agent.connected)
        rig.broker.start()
        wait_for(lambda: run.call(lambda: run.agent.ready), 15, "the agent to reconnect")
        run.record(520)
        wait_for(lambda: len(received) >= 21, 15, "the backlog and the new reading")
        seqs = [r.seq for r in map(parse_reading, received) if isinstance(r, Reading)]
        assert seqs[:21] == list(range(1, 22)), "backlog drained oldest first, new reading after it"
        assert run.outbox.count() == 21, "still unacknowledged"
        ingest = rig.ingest()
        publish(ingest, rig.identity.topic("ack"), ack_payload(21, BLOCK), retain=True)
        wait_for(lambda: run.outbox.count() == 0, 10, "the ack to drain the outbox")
        close_client(ingest)
    finally:
        run.close()
        subscriber.disconnect()
        subscriber.loop_stop()


def test_a_dropped_link_leaves_the_will_and_the_agent_reconnects(running: Rig) -> None:
    rig = running
    ingest = rig.ingest()
    run = AgentRun(rig)
    try:
        wait_for(lambda: statuses(ingest, rig.identity) == [STATUS_ONLINE], 10, "online")

        # The network goes away under the device (no DISCONNECT): the broker publishes the Will.
        def cut_the_wire() -> None:
            sock = run.agent.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)

        run.call(cut_the_wire)
        wait_for(
            lambda: statuses(ingest, rig.identity) == [STATUS_ONLINE, STATUS_OFFLINE, STATUS_ONLINE],
            10,
            "the Will, then online again after the reconnect",
        )
        run.record(7)
        wait_for(lambda: [r.seq for r in readings(ingest, rig.identity)] == [1], 10, "a reading after the reconnect")
    finally:
        run.close()
        close_client(ingest)


def test_unacknowledged_readings_survive_a_broker_crash(running: Rig) -> None:
    rig = running
    run = AgentRun(rig, AgentSettings(resend_after=0.5))
    try:
        wait_for(lambda: run.call(lambda: run.agent.ready), 10, "ready")
        for i in range(3):
            run.record(i)
        rig.broker.kill()  # whatever it had in memory is gone
        wait_for(lambda: not run.call(lambda: run.agent.connected), 10, "the agent to notice")
        for i in range(3):
            run.record(10 + i)
        rig.broker.start()
        ingest = rig.ingest(rig.identity.topic("reading"))
        wait_for(
            lambda: {r.seq for r in readings(ingest, rig.identity)} == set(range(1, 7)),
            15,
            "every reading, before and during the outage, re-sent",
        )
        close_client(ingest)
    finally:
        run.close()


def test_resends_back_off_and_only_the_oldest_window_is_resent(running: Rig) -> None:
    """A stuck ack (the ledger's prefix held by one reading) must not stop new readings nor cause a flood."""
    rig = running
    ingest = rig.ingest(rig.identity.topic("reading"))
    run = AgentRun(rig, AgentSettings(resend_after=0.4, resend_max=2.0, resend_window=5, sends_per_tick=3))
    try:
        wait_for(lambda: run.call(lambda: run.agent.ready), 10, "ready")
        for i in range(12):
            run.record(i)
        arrivals: list[tuple[float, int]] = []

        def count(seq: int) -> int:
            got = readings(ingest, rig.identity)
            arrivals.extend((time.monotonic(), r.seq) for r in got[len(arrivals) :])
            return sum(1 for _, s in arrivals if s == seq)

        wait_for(lambda: count(1) >= 3, 10, "seq 1 sent and re-sent twice")
        assert all(count(s) == 1 for s in range(6, 13)), "beyond the window: sent once, not re-sent"
        first, second, third = [t for t, s in arrivals if s == 1][:3]
        assert second - first >= 0.3 and third - second >= 0.7, "the re-send delay doubles"
        # The ack moves the window: 6-10 now get re-sent, 11 and 12 still do not.
        publish(ingest, rig.identity.topic("ack"), ack_payload(5, BLOCK), retain=True)
        wait_for(lambda: all(count(s) >= 2 for s in range(6, 11)), 10, "seqs 6-10 re-sent")
        assert count(11) == count(12) == 1
        publish(ingest, rig.identity.topic("ack"), ack_payload(12, BLOCK), retain=True)
        wait_for(lambda: run.outbox.count() == 0, 10, "the outbox to drain")
    finally:
        run.close()
        close_client(ingest)


def test_a_clean_stop_says_offline(running: Rig) -> None:
    rig = running
    ingest = rig.ingest()
    run = AgentRun(rig)
    wait_for(lambda: statuses(ingest, rig.identity)[-1:] == [STATUS_ONLINE], 10, "online")
    run.close()
    wait_for(lambda: statuses(ingest, rig.identity)[-1:] == [STATUS_OFFLINE], 10, "offline after a clean stop")
    # The retained status is what a newcomer sees.
    late = rig.ingest(rig.identity.topic("status"))
    wait_for(lambda: statuses(late, rig.identity) == [STATUS_OFFLINE], 10, "retained offline")
    close_client(late)
    close_client(ingest)


# ---------------------------------------------------------------- identity


def test_identity_is_saved_private_and_loads_back(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    calls: list[str] = []

    def enroll(identity: DeviceIdentity) -> tuple[str, str]:
        assert (device_dir(home, identity.device) / KEY_FILE).exists(), "key saved before enrolment"
        calls.append(identity.public_key_hex)
        return identity.device, "secret-password"

    identity, new = provision(home, "gm-d02-000003", "gas", "d02", enroll)
    assert new and identity.enrolled and calls == [identity.public_key_hex]
    directory = device_dir(home, "gm-d02-000003")
    for name in (KEY_FILE, CREDENTIALS_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert "secret-password" not in repr(identity)
    loaded = DeviceIdentity.load(directory)
    assert loaded == identity
    assert json.loads((directory / CREDENTIALS_FILE).read_text())["kind"] == "gas"
    again, new = provision(home, "gm-d02-000003", "gas", "d02", enroll)
    assert not new and again == identity and len(calls) == 1
    with pytest.raises(ValueError):
        provision(home, "gm-d02-000003", "water", "d02", enroll)


def test_plan_fleet_mixes_kinds_per_district_and_is_prefix_stable() -> None:
    plan = plan_fleet(120, ("d01", "d02"))
    for district in ("d01", "d02"):
        kinds = [p.kind for p in plan if p.district == district]
        counts = tuple(kinds.count(k) for k in ("electricity", "water", "gas", "parking"))
        assert counts == (21, 18, 12, 9)  # 35/30/20/15 % of 60
    assert len({p.device for p in plan}) == 120
    assert plan[0].device == "em-d01-000001" and plan[1].device == "em-d02-000001"
    prefixes = {"water": "wm", "gas": "gm", "electricity": "em", "parking": "ps"}
    assert all(p.device.startswith(prefixes[p.kind] + "-" + p.district + "-") for p in plan)
    assert plan_fleet(40, ("d01", "d02")) == plan[:40]
    assert {p.kind for p in plan_fleet(12, ("d01", "d02", "d03"))} == {"electricity", "water", "gas", "parking"}


# ---------------------------------------------------------------- the fleet


def test_run_fleet_connects_every_device_from_one_thread_and_publishes(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    ingest_password = new_password()
    service = ServiceAccess(INGEST, hash_password(ingest_password), "ingest")
    enrolled_devices: dict[str, DeviceAccess] = {}
    broker = RunningBroker(home, [], [service])

    def enroll(identity: DeviceIdentity) -> tuple[str, str]:
        """Stands in for the ledger's enrolment API: registers the device with the broker."""
        assert identity.device not in enrolled_devices, "a device is enrolled once"
        password = new_password()
        enrolled_devices[identity.device] = DeviceAccess(
            identity.device, identity.district, identity.kind, hash_password(password)
        )
        broker.set_access(enrolled_devices.values(), [service])
        return identity.device, password

    def run(stop: threading.Event, progress: list[FleetStats]) -> threading.Thread:
        result: list[FleetStats] = progress

        def target() -> None:
            result.append(
                run_fleet(
                    home,
                    devices=12,
                    interval=0.5,
                    host="127.0.0.1",
                    port=broker.port,
                    enroll=enroll,
                    after_enroll=lambda fresh: broker.reload(),
                    stop=stop,
                    on_progress=result.append,
                )
            )

        thread = threading.Thread(target=target, name="fleet")
        thread.start()
        return thread

    with broker:
        ingest = connect_client(broker.port, INGEST, ingest_password, "ingest-fleet")
        subscribe(ingest, "city/#")
        log = client_log(ingest)
        threads_before = threading.active_count()
        stop = threading.Event()
        stats: list[FleetStats] = []
        fleet = run(stop, stats)
        try:
            wait_for(lambda: len(enrolled_devices) == 12, 30, "12 enrolments")
            devices = set(enrolled_devices)

            def online() -> set[str]:
                latest = {m.topic.split("/")[3]: m.payload for m in log.received() if m.topic.endswith("/status")}
                return {d for d, status in latest.items() if status == STATUS_ONLINE}

            wait_for(lambda: online() == devices, 30, "every device online")
            wait_for(lambda: any(s.connected == 12 for s in stats), 30, "progress with every device connected")
            assert threading.active_count() == threads_before + 1, "one thread for the whole fleet"

            def per_device() -> dict[str, list[Reading]]:
                out: dict[str, list[Reading]] = {}
                for m in log.received():
                    if m.topic.endswith("/reading"):
                        reading = parse_reading(m.payload)
                        assert isinstance(reading, Reading)
                        out.setdefault(reading.device, []).append(reading)
                return out

            meters = {d for d in devices if not d.startswith("ps-")}
            wait_for(
                lambda: set(per_device()) == devices and all(len(per_device()[d]) >= 2 for d in meters),
                30,
                "readings from every device, two intervals of every meter",
            )
            for device, got in per_device().items():
                key = DeviceIdentity.load(device_dir(home, device)).verify_key
                assert all(verify_reading(key, r) for r in got)
                values = [r.value for r in got]
                assert values == sorted(values) or device.startswith("ps-"), "registers only grow"
        finally:
            stop.set()
            fleet.join(timeout=30)
        assert not fleet.is_alive()
        final = stats[-1]
        assert final.devices == 12 and final.generated >= 2 * len(meters) + 3
        assert final.pending == final.generated and final.acked == 0 and final.refused == 0
        wait_for(
            lambda: all(
                [m.payload for m in log.received(f"city/{a.district}/{a.kind}/{d}/status")][-1:] == [STATUS_OFFLINE]
                for d, a in enrolled_devices.items()
            ),
            10,
            "every device offline after a clean stop",
        )

        # A second run reuses the devices: no new enrolment, seqs continue, registers never go back.
        last = {d: max(r.seq for r in rs) for d, rs in per_device().items()}
        last_value = {d: max(r.value for r in rs) for d, rs in per_device().items() if not d.startswith("ps-")}
        with log.lock:
            log.messages.clear()
        stop = threading.Event()
        stats = []
        fleet = run(stop, stats)
        try:
            wait_for(
                lambda: all(any(r.seq > last[d] for r in per_device().get(d, [])) for d in meters),
                30,
                "new readings from every meter in the second run",
            )
            with pytest.raises(FleetBusy):
                run_fleet(home, devices=1, interval=1, host="127.0.0.1", port=broker.port, enroll=enroll, stop=stop)
        finally:
            stop.set()
            fleet.join(timeout=30)
        for device in meters:
            got = per_device()[device]
            fresh = [r for r in got if r.seq > last[device]]
            assert fresh[0].seq == last[device] + 1 and fresh[0].value >= last_value[device]
            # Nothing was acknowledged, so the first run's readings were sent again, oldest first.
            assert [r.seq for r in got if r.seq <= last[device]][:1] == [1]
        close_client(ingest)
