"""Broker credentials and ACLs, checked against the real mosquitto (no mocks).

The broker is what stops a device from speaking for another device, so these
tests prove it with the project's own mosquitto.conf and generated files: who
may connect, publish, read, and what a reload changes for connected clients.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker import mosquitto
from broker.access import (
    DeviceAccess,
    ServiceAccess,
    device_rules,
    hash_password,
    logins_elsewhere,
    new_password,
    render_acl,
    render_passwd,
    write_access_files,
)
from ledger.chain.protocol import CHECKPOINT_TOPIC, INGEST_TOPICS, device_topic
from ledger.home import Home
from ledger.processes import DEVNULL, STDOUT, start
from tests.support.broker import (
    Received,
    RunningBroker,
    client_log,
    close_client,
    connect_client,
    free_port,
    listening_ports,
    publish,
    subscribe,
    wait_for,
)

# A line written by `mosquitto_passwd -c -b pw alice secret` (mosquitto 2.0.11).
# Its hash is base64(PBKDF2-HMAC-SHA512(b"secret", salt=base64decode("eSsYQjQi6LiIrX+l"),
# iterations=101, dklen=64)): the salt enters as its 12 raw bytes, not as base64 text.
MOSQUITTO_PASSWD_LINE = "alice:$7$101$eSsYQjQi6LiIrX+l$EeO4T6Vdl25DJEM5IkF4xdKppHHm+cHho3rxZSDfoKn0jz+78Q/8SkC9lu/yee6q/n4+/31g6s2oJuFfeHqCIQ=="

PASSWORD = new_password()
HASH = hash_password(PASSWORD)
A = DeviceAccess("wm-d01-000001", "d01", "water", HASH)
B = DeviceAccess("gm-d02-000002", "d02", "gas", HASH)
INGEST = ServiceAccess("ingest", HASH, "ingest")
OBSERVER = ServiceAccess("dashboard", HASH, "observer")


def topic(device: DeviceAccess, leaf: str) -> str:
    return device_topic(device.district, device.kind, device.device, leaf)


# ---------------------------------------------------------------- passwords


def test_hash_matches_a_known_mosquitto_passwd_line() -> None:
    _, stored = MOSQUITTO_PASSWD_LINE.split(":", 1)
    salt_b64 = stored.split("$")[3]
    assert hash_password("secret", salt=base64.b64decode(salt_b64)) == stored
    derived = hashlib.pbkdf2_hmac("sha512", b"secret", base64.b64decode(salt_b64), 101, dklen=64)
    assert stored.endswith("$" + base64.b64encode(derived).decode())


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_hash_matches_a_fresh_mosquitto_passwd_file(tmp_path: Path) -> None:
    password = new_password()
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(tmp_path / "pw"), "someone", password], check=True)
    stored = (tmp_path / "pw").read_text().strip().split(":", 1)[1]
    iterations, salt_b64 = stored.split("$")[2:4]
    assert hash_password(password, salt=base64.b64decode(salt_b64), iterations=int(iterations)) == stored


def test_hash_format_is_mosquitto_sha512_pbkdf2() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert first != second, "each hash must get its own random salt"
    match = re.fullmatch(r"\$7\$101\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)", first)
    assert match, first
    assert len(base64.b64decode(match[1])) == 12 and len(base64.b64decode(match[2])) == 64
    with pytest.raises(ValueError):
        hash_password("pw", salt=b"short")
    assert len(new_password()) >= 32


# ---------------------------------------------------------------- rendering


def test_device_acl_is_exactly_its_four_lines() -> None:
    acl = render_acl([A], [])
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "user wm-d01-000001",
        "topic write city/d01/water/wm-d01-000001/reading",
        "topic write city/d01/water/wm-d01-000001/status",
        "topic read city/d01/water/wm-d01-000001/ack",
        f"topic read {CHECKPOINT_TOPIC}",
    ]
    assert device_rules(A) == tuple(rules[1:])


def test_service_acl_follows_the_role() -> None:
    blocks = render_acl([], [INGEST, OBSERVER]).split("\n\n")[1:]
    assert blocks[0].split("\n")[:4] == [
        "user ingest",
        "topic read city/#",
        "topic write city/+/+/+/ack",
        "topic write city/ledger/#",
    ]
    assert blocks[1].strip().split("\n") == [
        "user dashboard",
        "topic read city/ledger/#",
        "topic read city/+/+/+/status",
    ]
    # ingest subscribes to INGEST_TOPICS; its read rule must cover them.
    assert all(mqtt.topic_matches_sub("city/#", t) for t in INGEST_TOPICS)


def test_passwd_has_one_line_per_identity() -> None:
    text = render_passwd([A, B], [INGEST])
    assert text == f"{A.device}:{HASH}\n{B.device}:{HASH}\n{INGEST.username}:{HASH}\n"


@pytest.mark.parametrize(
    ("devices", "services"),
    [
        ([DeviceAccess("evil\nuser ingest", "d01", "water", HASH)], []),
        ([DeviceAccess("#hidden", "d01", "water", HASH)], []),
        ([DeviceAccess("two words", "d01", "water", HASH)], []),
        ([DeviceAccess("", "d01", "water", HASH)], []),
        ([DeviceAccess("wm-1", "D01", "water", HASH)], []),
        ([DeviceAccess("wm-1", "d01/x", "water", HASH)], []),
        ([DeviceAccess("wm-1", "d01", "steam", HASH)], []),
        ([DeviceAccess("wm-1", "d01", "water", HASH + "\nx:y")], []),
        ([DeviceAccess("wm-1", "d01", "water", "plaintext")], []),
        ([], [ServiceAccess("in gest", HASH, "ingest")]),
        ([], [ServiceAccess("ingest", HASH, "admin")]),  # type: ignore[arg-type]
        ([DeviceAccess("ingest", "d01", "water", HASH)], [INGEST]),  # a device must not inherit a service's rights
    ],
)
def test_invalid_names_raise_before_any_line_is_written(
    tmp_path: Path, devices: list[DeviceAccess], services: list[ServiceAccess]
) -> None:
    home = Home(tmp_path)
    write_access_files(home, [A], [INGEST])
    before = home.passwd.read_text(), home.acl.read_text()
    with pytest.raises(ValueError):
        write_access_files(home, devices, services)
    assert (home.passwd.read_text(), home.acl.read_text()) == before


def test_access_files_are_private(tmp_path: Path) -> None:
    home = Home(tmp_path)
    write_access_files(home, [A], [INGEST])
    for path in (home.passwd, home.acl):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_config_is_rendered_for_the_home_and_the_user(tmp_path: Path) -> None:
    home = Home(tmp_path)
    text = mosquitto.render_config(mosquitto.TEMPLATE.read_text(), home, 12345)
    options = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert "listener 12345 127.0.0.1" in options
    assert f"password_file {home.passwd}" in options and f"acl_file {home.acl}" in options
    assert f"persistence_location {home.broker_data}" in options and f"pid_file {home.broker_pid}" in options
    assert f"user {mosquitto.current_user()}" in options
    for required in (
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence true",
        "max_queued_bytes 0",
        "max_inflight_messages 0",
        "log_dest stdout",
    ):
        assert required in options
    assert not [line for line in options if "var/" in line], "a relative path survived rendering"
    with pytest.raises(ValueError):
        mosquitto.render_config("listener 1 a\nlistener 2 b\n", home, 12345)


def test_the_template_can_be_overridden_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = tmp_path / "custom.conf"
    custom.write_text("# minimal\nallow_anonymous false\nlistener 1883 127.0.0.1\n")
    monkeypatch.setenv("CITYLEDGER_MOSQUITTO_CONF", str(custom))
    home = Home(tmp_path / "home")
    config = mosquitto.write_config(home, 23456).read_text()
    assert config.startswith("# minimal\nallow_anonymous false\nlistener 23456 127.0.0.1\n")
    assert f"password_file {home.passwd}" in config  # appended, since the template lacks it
    assert stat.S_IMODE(home.broker_config.stat().st_mode) == 0o600
    assert home.passwd.read_text() == "" and home.acl.read_text() == ""  # so mosquitto can start


# ---------------------------------------------------------------- the real broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RunningBroker]:
    with RunningBroker(Home(tmp_path), [A, B], [INGEST, OBSERVER]) as running:
        yield running


@pytest.fixture
def clients() -> Iterator[list[mqtt.Client]]:
    """Clients a test opens; all closed at the end whatever happens."""
    opened: list[mqtt.Client] = []
    yield opened
    for client in opened:
        close_client(client)


def test_broker_runs_as_the_invoking_user_and_writes_its_pid(broker: RunningBroker) -> None:
    assert mosquitto.running_pid(broker.home) == broker.pid
    status = Path(f"/proc/{broker.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == os.geteuid()


def test_credentials_are_enforced(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    clients.append(connect_client(broker.port, A.device, PASSWORD, "a"))
    with pytest.raises(ConnectionRefusedError):
        connect_client(broker.port, A.device, "wrong-" + PASSWORD, "a-wrong")
    with pytest.raises(ConnectionRefusedError):
        connect_client(broker.port, None, None, "anonymous")
    with pytest.raises(ConnectionRefusedError):
        connect_client(broker.port, "nobody", PASSWORD, "nobody", protocol=mqtt.MQTTv311)


def test_a_device_cannot_publish_for_another(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    ingest = connect_client(broker.port, INGEST.username, PASSWORD, "ingest")
    device = connect_client(broker.port, A.device, PASSWORD, "a")
    clients += [ingest, device]
    subscribe(ingest, "city/#")
    forbidden = publish(device, topic(B, "reading"), b"forged")
    allowed = publish(device, topic(A, "reading"), b"own")  # ordering marker: sent after the forgery
    wait_for(lambda: client_log(ingest).received(topic(A, "reading")), what="A's own reading at ingest")
    assert client_log(ingest).topics() == [topic(A, "reading")]
    assert forbidden.getName() == "Not authorized" and not allowed.is_failure
    assert device.is_connected(), "a refused publish is answered, not punished by a disconnect"


def test_a_device_reads_only_its_ack_and_the_checkpoint(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    ingest = connect_client(broker.port, INGEST.username, PASSWORD, "ingest")
    a = connect_client(broker.port, A.device, PASSWORD, "a")
    b = connect_client(broker.port, B.device, PASSWORD, "b")
    clients += [ingest, a, b]
    # Retained before A subscribes: delivered on subscription only if A may read them.
    publish(b, topic(B, "status"), b"online", retain=True)
    publish(ingest, topic(B, "ack"), b'{"seq":1}', retain=True)
    publish(ingest, topic(A, "ack"), b'{"seq":1}', retain=True)
    publish(ingest, CHECKPOINT_TOPIC, b"header-1", retain=True)
    granted = subscribe(a, "city/#")
    assert not granted[0].is_failure, "mosquitto filters per message, not per subscription"
    # Live traffic A must not see, then the marker it must see last.
    publish(b, topic(B, "reading"), b"reading")
    publish(ingest, topic(B, "ack"), b'{"seq":2}')
    publish(ingest, CHECKPOINT_TOPIC, b"marker")
    marker = Received(CHECKPOINT_TOPIC, b"marker", retain=False)
    wait_for(lambda: client_log(a).received(CHECKPOINT_TOPIC)[-1:] == [marker], what="the marker at A")
    assert sorted(set(client_log(a).topics())) == sorted({topic(A, "ack"), CHECKPOINT_TOPIC})
    assert len(client_log(a).received()) == 3  # A's retained ack, retained checkpoint, the marker


def test_the_observer_reads_status_and_ledger_and_cannot_publish(
    broker: RunningBroker, clients: list[mqtt.Client]
) -> None:
    ingest = connect_client(broker.port, INGEST.username, PASSWORD, "ingest")
    observer = connect_client(broker.port, OBSERVER.username, PASSWORD, "dashboard")
    device = connect_client(broker.port, A.device, PASSWORD, "a")
    clients += [ingest, observer, device]
    subscribe(ingest, "city/#")
    subscribe(observer, "city/#")
    refused = [
        publish(observer, CHECKPOINT_TOPIC, b"forged header"),
        publish(observer, topic(A, "ack"), b'{"seq":99}'),
        publish(observer, topic(A, "reading"), b"forged reading"),
    ]
    assert [rc.getName() for rc in refused] == ["Not authorized"] * 3
    publish(device, topic(A, "reading"), b"reading")
    publish(device, topic(A, "status"), b"online")
    publish(ingest, topic(A, "ack"), b'{"seq":1}')
    publish(ingest, CHECKPOINT_TOPIC, b"header")
    wait_for(lambda: client_log(observer).received(CHECKPOINT_TOPIC), what="checkpoint at the observer")
    assert client_log(observer).topics() == [topic(A, "status"), CHECKPOINT_TOPIC]
    assert not [m for m in client_log(ingest).received() if b"forged" in m.payload]


def test_an_oversized_reading_still_reaches_ingest(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    ingest = connect_client(broker.port, INGEST.username, PASSWORD, "ingest")
    device = connect_client(broker.port, A.device, PASSWORD, "a")
    clients += [ingest, device]
    subscribe(ingest, INGEST_TOPICS[0])
    big = b"x" * 5000  # over the protocol's 1024 bytes: ingest must see it to quarantine it
    assert not publish(device, topic(A, "reading"), big).is_failure
    wait_for(lambda: client_log(ingest).received(topic(A, "reading")), what="oversized reading at ingest")
    assert client_log(ingest).received()[0].payload == big


def test_reload_revokes_a_connected_device_and_admits_a_new_one(
    broker: RunningBroker, clients: list[mqtt.Client]
) -> None:
    a = connect_client(broker.port, A.device, PASSWORD, "a", reconnect=False)
    b = connect_client(broker.port, B.device, PASSWORD, "b")
    clients += [a, b]
    newcomer = DeviceAccess("em-d03-000003", "d03", "electricity", HASH)
    with pytest.raises(ConnectionRefusedError):
        connect_client(broker.port, newcomer.device, PASSWORD, "new")

    broker.set_access([B, newcomer], [INGEST, OBSERVER])
    broker.reload()

    wait_for(lambda: client_log(a).disconnects, 3.0, "the removed device to be disconnected")
    with pytest.raises(ConnectionRefusedError):
        connect_client(broker.port, A.device, PASSWORD, "a-again")
    clients.append(connect_client(broker.port, newcomer.device, PASSWORD, "new"))
    assert b.is_connected(), "devices still in the files keep their connection"
    assert broker.running


def test_reload_without_a_running_broker_is_false(tmp_path: Path) -> None:
    home = Home(tmp_path)
    assert mosquitto.reload(home) is False
    running = RunningBroker(home, [A], [INGEST]).start()
    try:
        assert mosquitto.reload(home) is True
        running.kill()  # leaves a stale pid file behind
        assert home.broker_pid.exists() and mosquitto.reload(home) is False
    finally:
        running.close()


def test_retained_checkpoint_survives_a_restart(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    ingest = connect_client(broker.port, INGEST.username, PASSWORD, "ingest")
    publish(ingest, CHECKPOINT_TOPIC, b"header-7", retain=True)
    close_client(ingest)
    port = broker.port
    broker.stop()
    broker.start()
    assert broker.port == port
    observer = connect_client(broker.port, OBSERVER.username, PASSWORD, "dashboard")
    clients.append(observer)
    subscribe(observer, CHECKPOINT_TOPIC)
    wait_for(lambda: client_log(observer).received(CHECKPOINT_TOPIC), what="retained checkpoint after restart")
    assert client_log(observer).received()[0].payload == b"header-7"


def test_a_taken_port_is_reported_not_mistaken_for_ours(tmp_path: Path) -> None:
    with RunningBroker(Home(tmp_path / "one"), [A], []) as first:
        with pytest.raises(RuntimeError, match="Address already in use"):
            mosquitto.start(Home(tmp_path / "two"), first.port)


def test_exec_foreground_keeps_the_pid_that_the_pid_file_names(tmp_path: Path) -> None:
    home, port = Home(tmp_path), free_port()
    write_access_files(home, [A], [])
    code = (
        "import sys; from pathlib import Path; from broker.mosquitto import exec_foreground; "
        "from ledger.home import Home; exec_foreground(Home(Path(sys.argv[1])), int(sys.argv[2]))"
    )
    proc = start([sys.executable, "-c", code, str(home.root), str(port)], stdout=DEVNULL, stderr=STDOUT)
    try:
        wait_for(lambda: mosquitto.running_pid(home) == proc.pid, what="mosquitto's pid file naming the exec'd process")
        wait_for(lambda: _accepts(port), what="the foreground broker to listen")
    finally:
        proc.stop(timeout=10)
    assert not home.broker_pid.exists(), "mosquitto removes its pid file on a clean exit"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_the_broker_listens_only_where_configured(broker: RunningBroker) -> None:
    assert broker.pid is not None
    assert listening_ports(broker.pid) == {broker.port}


def test_a_device_cannot_take_over_another_clients_session(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    ingest = connect_client(broker.port, INGEST.username, PASSWORD, "ingest")
    clients.append(ingest)
    clients.append(connect_client(broker.port, A.device, PASSWORD, "ingest"))  # asks for ingest's client id
    marker = connect_client(broker.port, B.device, PASSWORD, B.device)
    clients.append(marker)
    publish(marker, device_topic(B.district, B.kind, B.device, "reading"), b"still there?")
    assert ingest.is_connected() and not client_log(ingest).disconnects


# ---------------------------------------------------------------- one broker, several homes


def _district_home(city: Path, district: str) -> Home:
    root = city / "districts" / district
    root.mkdir(parents=True)
    (root / "district").write_text(district + "\n")
    return Home(root)


def test_each_home_writes_its_share_and_the_broker_files_join_them(tmp_path: Path) -> None:
    city = Home(tmp_path)
    d02 = _district_home(tmp_path, "d02")
    b = DeviceAccess("wm-d02-000001", "d02", "water", HASH)
    write_access_files(city, [], [INGEST])
    write_access_files(d02, [b], [ServiceAccess("d02.ingest", HASH, "ingest")])
    passwd = city.passwd.read_text()
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["ingest", "wm-d02-000001", "d02.ingest"]
    assert d02.passwd == city.passwd  # one broker: the district's home points at the city's files
    acl = city.acl.read_text()
    assert "user ingest\n" in acl and "user wm-d02-000001\n" in acl
    # The district's device reads its own chain's checkpoint, not the city's.
    assert "topic read city/ledger/districts/d02/checkpoint" in acl and f"topic read {CHECKPOINT_TOPIC}" not in acl
    # The district's services are held to their district; the city's are not.
    assert (
        "user d02.ingest\ntopic read city/d02/#\ntopic write city/d02/+/+/ack\n"
        "topic write city/ledger/districts/d02/#\n" in acl
    )
    assert "user ingest\ntopic read city/#\n" in acl
    # Rewriting one share keeps the other.
    write_access_files(city, [], [])
    assert city.passwd.read_text() == f"wm-d02-000001:{HASH}\nd02.ingest:{HASH}\n"
    for path in city.access_fragments.glob("*.*"):
        if path.suffix in (".passwd", ".acl"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_login_another_home_holds_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    city = Home(tmp_path)
    d01, d02 = _district_home(tmp_path, "d01"), _district_home(tmp_path, "d02")
    write_access_files(d01, [A], [])
    before = city.passwd.read_text(), city.acl.read_text()
    assert logins_elsewhere(d02) == {A.device} and logins_elsewhere(d01) == set()
    with pytest.raises(ValueError, match="duplicate broker username"):
        write_access_files(d02, [DeviceAccess(A.device, "d02", "water", HASH)], [])
    assert (city.passwd.read_text(), city.acl.read_text()) == before
    assert not (city.access_fragments / "d02.passwd").exists()
