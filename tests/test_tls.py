"""MQTT over TLS: the generated CA and certificate, the broker's TLS listener, clients that verify it.

Everything runs against the real mosquitto with the project's config, because
what is under test (which certificate the broker serves, which client accepts
it, that a plain broker opens no TLS port) is the broker's and OpenSSL's
behaviour, not ours to fake. The last test runs the whole pipeline over TLS:
`cityledger ingest` and `cityledger fleet` as subprocesses, then `verify`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker import certs, mosquitto
from broker.access import DeviceAccess, ServiceAccess, hash_password, new_password
from broker.mqtt.tls import TLSSettings
from edge.agent import AgentSettings, DeviceAgent
from edge.fleet import plan_fleet
from edge.identity import DeviceIdentity
from edge.netloop import Backoff, NetLoop
from edge.outbox import Outbox
from ledger.chain.protocol import ack_payload, device_topic
from ledger.home import Home
from ledger.processes import DEVNULL, PIPE, start
from tests.support.broker import (
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
from tests.support.stack import Stack
from tests.test_witness_stack import add_witness, witness

PASSWORD = new_password()
HASH = hash_password(PASSWORD)
A = DeviceAccess("wm-d01-000001", "d01", "water", HASH)
B = DeviceAccess("gm-d02-000002", "d02", "gas", HASH)
INGEST = ServiceAccess("ingest", HASH, "ingest")
EXTRA_HOST = "broker.cityledger.test"  # in the server certificate besides localhost and 127.0.0.1
OTHER_HOST = "elsewhere.cityledger.test"  # reaches the same broker, but the certificate does not name it


def topic(device: DeviceAccess, leaf: str) -> str:
    return device_topic(device.district, device.kind, device.device, leaf)


# ---------------------------------------------------------------- certificates


def _san(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))}


def test_certs_are_made_once_signed_by_the_ca_with_private_keys(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    paths = certs.ensure_certs(home)
    assert paths == certs.CertPaths(
        certs.ca_cert_path(home), certs.server_cert_path(home), certs.server_key_path(home), generated=True
    )
    for key in (certs.ca_key_path(home), paths.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE(certs.tls_dir(home).stat().st_mode) == 0o700

    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    server = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    server.verify_directly_issued_by(ca)
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert _san(paths.cert) == {"localhost", "127.0.0.1"}
    # 127.0.0.1 is an IP address entry: a client dialling the address matches only that kind.
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    # Idempotent: nothing is rewritten while the files fit.
    files = [certs.ca_key_path(home), paths.ca, paths.key, paths.cert]
    before = {p: p.read_bytes() for p in files}
    assert certs.ensure_certs(home) == paths
    assert {p: p.read_bytes() for p in files} == before

    # A new host name re-issues the server certificate from the same CA; the CA devices hold stays.
    certs.ensure_certs(home, hosts=(EXTRA_HOST, "10.0.0.7"))
    assert paths.ca.read_bytes() == before[paths.ca] and paths.cert.read_bytes() != before[paths.cert]
    assert _san(paths.cert) == {"localhost", "127.0.0.1", EXTRA_HOST, "10.0.0.7"}
    reissued = paths.cert.read_bytes()
    certs.ensure_certs(home)  # the default names are still covered: reused
    assert paths.cert.read_bytes() == reissued
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600


def test_operator_files_are_used_as_given_and_nothing_is_generated(tmp_path: Path) -> None:
    theirs = certs.ensure_certs(Home(tmp_path / "operator"))
    home = Home(tmp_path / "home")
    given = certs.resolve(home, cert=str(theirs.cert), key=str(theirs.key), ca=str(theirs.ca))
    assert (given.cert, given.key, given.ca, given.generated) == (theirs.cert, theirs.key, theirs.ca, False)
    assert not certs.tls_dir(home).exists()
    with pytest.raises(ValueError, match="--tls-key"):
        certs.resolve(home, cert=str(theirs.cert), ca=str(theirs.ca))
    with pytest.raises(FileNotFoundError):
        certs.resolve(home, cert=str(theirs.cert), key=str(tmp_path / "nope.key"), ca=str(theirs.ca))
    assert not certs.tls_dir(home).exists()


# ---------------------------------------------------------------- rendering


def _options(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_tls_section_is_rendered_only_when_asked_for(tmp_path: Path) -> None:
    home = Home(tmp_path)
    template = mosquitto.TEMPLATE.read_text()
    plain = _options(mosquitto.render_config(template, home, 12345))
    assert [o for o in plain if o.startswith("listener")] == ["listener 12345 127.0.0.1"]
    assert not [o for o in plain if o.split()[0] in ("cafile", "certfile", "keyfile", "tls_version")]

    paths = certs.CertPaths(Path("/x/ca.crt"), Path("/x/server.crt"), Path("/x/server.key"), generated=False)
    both = _options(mosquitto.render_config(template, home, 12345, tls=mosquitto.TLSListener(23456, paths)))
    first, second = both.index("listener 12345 127.0.0.1"), both.index("listener 23456 127.0.0.1")
    assert first < second
    # Each listener's own options follow its line; the TLS files belong to the TLS listener only.
    assert both[first + 1 : second] == ["use_username_as_clientid true", f"user {mosquitto.current_user()}"]
    assert both[second + 1 :] == [
        "cafile /x/ca.crt",
        "certfile /x/server.crt",
        "keyfile /x/server.key",
        "tls_version tlsv1.2",
        "use_username_as_clientid true",
    ]
    assert both[:first] == plain[: plain.index("listener 12345 127.0.0.1")]

    with pytest.raises(ValueError, match="TLS port"):
        mosquitto.render_config(template, home, 12345, tls=mosquitto.TLSListener(12345, paths))
    with pytest.raises(ValueError, match="no TLS listener"):
        mosquitto.render_config("listener 1883 127.0.0.1\n", home, 12345, tls=mosquitto.TLSListener(23456, paths))


# ---------------------------------------------------------------- the real broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RunningBroker]:
    home = Home(tmp_path / "home")
    certs.ensure_certs(home, hosts=(EXTRA_HOST,))  # the broker reuses these rather than making its own
    with RunningBroker(home, [A, B], [INGEST], tls=True) as running:
        yield running


@pytest.fixture
def clients() -> Iterator[list[mqtt.Client]]:
    opened: list[mqtt.Client] = []
    yield opened
    for client in opened:
        close_client(client)


@pytest.fixture
def resolve_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """EXTRA_HOST and OTHER_HOST lead to 127.0.0.1, like an /etc/hosts entry, for this test only."""
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host, port = address
        return real(("127.0.0.1" if host in (EXTRA_HOST, OTHER_HOST) else host, port), *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)


def test_the_broker_listens_on_the_plain_and_the_tls_port_only(broker: RunningBroker) -> None:
    assert broker.pid is not None and broker.tls_port is not None
    assert listening_ports(broker.pid) == {broker.port, broker.tls_port}


def test_a_client_that_trusts_our_ca_talks_mqtt_over_tls(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    assert broker.tls_port is not None
    tls = TLSSettings(broker.ca_file)
    ingest = connect_client(broker.tls_port, INGEST.username, PASSWORD, "ingest", tls=tls)
    clients.append(ingest)
    subscribe(ingest, topic(A, "reading"))
    device = connect_client(broker.tls_port, A.device, PASSWORD, A.device, host="localhost", tls=tls)
    clients.append(device)
    assert publish(device, topic(A, "reading"), b"over tls").value == 0
    wait_for(lambda: client_log(ingest).received(topic(A, "reading")), what="the reading at the subscriber")
    sock = device.socket()
    assert isinstance(sock, ssl.SSLSocket) and sock.version() in ("TLSv1.2", "TLSv1.3")


def test_a_client_that_trusts_another_ca_is_refused(broker: RunningBroker, tmp_path: Path) -> None:
    assert broker.tls_port is not None
    stranger = certs.ensure_certs(Home(tmp_path / "another-city"))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed") as refused:
        connect_client(broker.tls_port, A.device, PASSWORD, A.device, tls=TLSSettings(stranger.ca))
    # The broker sends its chain up to its CA, which this client does not trust (OpenSSL's wording for that).
    assert refused.value.verify_message in (
        "self-signed certificate in certificate chain",
        "unable to get local issuer certificate",
    )
    assert f" as {A.device} " not in broker.log(), "the password must not have reached the broker"


@pytest.mark.usefixtures("resolve_to_loopback")
def test_the_host_name_dialled_must_be_in_the_certificate(broker: RunningBroker, clients: list[mqtt.Client]) -> None:
    assert broker.tls_port is not None
    tls = TLSSettings(broker.ca_file)
    clients.append(connect_client(broker.tls_port, A.device, PASSWORD, A.device, host=EXTRA_HOST, tls=tls))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed") as refused:
        connect_client(broker.tls_port, INGEST.username, PASSWORD, "ingest", host=OTHER_HOST, tls=tls)
    assert "Hostname mismatch" in refused.value.verify_message


def test_plain_mqtt_still_works_on_the_plain_port_and_the_listeners_do_not_mix(
    broker: RunningBroker, clients: list[mqtt.Client]
) -> None:
    assert broker.tls_port is not None
    ingest = connect_client(broker.tls_port, INGEST.username, PASSWORD, "ingest", tls=TLSSettings(broker.ca_file))
    clients.append(ingest)
    subscribe(ingest, topic(A, "reading"))
    plain = connect_client(broker.port, A.device, PASSWORD, A.device)
    clients.append(plain)
    assert not publish(plain, topic(A, "reading"), b"plain").is_failure
    # One broker behind both listeners: what comes in plain reaches a subscriber on TLS.
    wait_for(lambda: client_log(ingest).received(topic(A, "reading")), what="the plain reading at the TLS subscriber")
    with pytest.raises(ConnectionRefusedError):  # plain MQTT to the TLS port: the broker hangs up
        connect_client(broker.tls_port, INGEST.username, PASSWORD, "ingest", reconnect=False)
    with pytest.raises((ssl.SSLError, ConnectionError)):  # TLS to the plain port: no TLS server there
        connect_client(broker.port, INGEST.username, PASSWORD, "ingest", tls=TLSSettings(broker.ca_file))


def test_over_tls_too_a_device_cannot_take_over_the_ingest_session(
    broker: RunningBroker, clients: list[mqtt.Client]
) -> None:
    """use_username_as_clientid is a per-listener option: the TLS listener needs its own."""
    assert broker.tls_port is not None
    tls = TLSSettings(broker.ca_file)
    ingest = connect_client(broker.tls_port, INGEST.username, PASSWORD, "ingest", tls=tls)
    clients.append(ingest)
    clients.append(connect_client(broker.tls_port, A.device, PASSWORD, "ingest", tls=tls))  # asks for "ingest"
    marker = connect_client(broker.tls_port, B.device, PASSWORD, B.device, tls=tls)
    clients.append(marker)
    publish(marker, topic(B, "reading"), b"still there?")
    assert ingest.is_connected() and not client_log(ingest).disconnects


def _run_broker_command(home: Home, *args: str) -> None:
    """`cityledger broker --tls ARGS` until it listens on its plain and TLS ports (and no other), then stop it."""
    port, tls_port = free_port(), free_port()
    env = {**os.environ, "CITYLEDGER_HOME": str(home.root)}
    proc = start(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "broker",
            "--mqtt-port",
            str(port),
            "--tls",
            "--tls-port",
            str(tls_port),
            *args,
        ],
        env=env,
        stdout=DEVNULL,
        stderr=PIPE,
    )
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"cityledger broker exited with {proc.returncode}: {proc.stderr.read()!r}")
            return listening_ports(proc.pid) == {port, tls_port}

        wait_for(listening, 10, "the broker listening on its plain and TLS ports")
    finally:
        proc.stop(timeout=10)


def test_cityledger_broker_tls_makes_its_certificates_or_uses_the_operators(tmp_path: Path) -> None:
    from ledger.service.homes import initialize

    home = Home(tmp_path / "home")
    initialize(home)
    _run_broker_command(home, "--tls-hosts", EXTRA_HOST)
    assert _san(certs.server_cert_path(home)) == {"localhost", "127.0.0.1", EXTRA_HOST}
    assert stat.S_IMODE(certs.ca_key_path(home).stat().st_mode) == 0o600

    theirs = certs.ensure_certs(Home(tmp_path / "operator"))
    other = Home(tmp_path / "other")
    initialize(other)
    _run_broker_command(other, "--tls-cert", str(theirs.cert), "--tls-key", str(theirs.key), "--tls-ca", str(theirs.ca))
    assert not certs.tls_dir(other).exists()
    assert f"certfile {theirs.cert}" in other.broker_config.read_text()


# ---------------------------------------------------------------- the edge over TLS


def _agent(tmp_path: Path, broker: RunningBroker, tls: TLSSettings) -> tuple[DeviceAgent, Outbox]:
    identity = DeviceIdentity.generate(A.device, A.kind, A.district).with_credentials(A.device, PASSWORD)
    outbox = Outbox(tmp_path / f"outbox-{len(list(tmp_path.glob('outbox-*')))}.sqlite")
    assert broker.tls_port is not None
    agent = DeviceAgent(
        identity, outbox, host="127.0.0.1", port=broker.tls_port, settings=AgentSettings(connect_timeout=2.0), tls=tls
    )
    return agent, outbox


def test_an_edge_agent_refuses_an_unverified_broker_and_works_with_ours(
    broker: RunningBroker, clients: list[mqtt.Client], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's TLS handshake runs inside the NetLoop's reconnect; reads and writes go through the SSL socket."""
    assert broker.tls_port is not None
    ingest = connect_client(broker.tls_port, INGEST.username, PASSWORD, "ingest", tls=TLSSettings(broker.ca_file))
    clients.append(ingest)
    subscribe(ingest, topic(A, "reading"))

    # Trusting another CA: it retries with backoff, warns once, and never logs in.
    stranger = certs.ensure_certs(Home(tmp_path / "another-city"))
    agent, outbox = _agent(tmp_path, broker, TLSSettings(stranger.ca))
    attempts: list[int] = []
    reconnect = agent.client.reconnect
    agent.client.reconnect = lambda: (attempts.append(1), reconnect())[1]  # type: ignore[method-assign]
    loop, stop = NetLoop(backoff=Backoff(initial=0.05, maximum=0.1)), threading.Event()
    loop.add(agent)
    with caplog.at_level(logging.WARNING, logger="cityledger.device"):
        thread = loop.start(stop)
        try:
            wait_for(lambda: len(attempts) >= 3, 10, "three connection attempts")
        finally:
            stop.set()
            thread.join(15)
    outbox.close()
    warnings = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(warnings) == 1 and "certificate verify failed" in warnings[0].getMessage()
    assert not agent.ready and f" as {A.device} " not in broker.log()

    # Trusting our CA: connected, a reading goes out and the ledger's ack comes back, all over TLS.
    agent, outbox = _agent(tmp_path, broker, TLSSettings(broker.ca_file))
    loop, stop = NetLoop(), threading.Event()
    loop.add(agent)
    thread = loop.start(stop)
    try:
        wait_for(lambda: agent.ready, 10, "the agent connected and subscribed over TLS")
        reading = loop.call_soon(lambda: agent.record(1_700_000_000_000, 42)).result(5)
        wait_for(lambda: client_log(ingest).received(topic(A, "reading")), 10, "the reading at the ingest")
        publish(ingest, topic(A, "ack"), ack_payload(reading.seq, "00" * 32), retain=True)
        wait_for(lambda: agent.acked_seq == reading.seq, 10, "the agent to take the ack")
        assert isinstance(agent.client.socket(), ssl.SSLSocket)
    finally:
        stop.set()
        thread.join(15)
        outbox.close()
    assert not thread.is_alive()


class _BufferedSocket:
    """A socket whose TLS layer has decrypted one record holding several MQTT packets."""

    def __init__(self, sock: socket.socket, packets_per_record: int) -> None:
        self.sock, self.per_record, self.buffered = sock, packets_per_record, 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> int:
        return self.buffered  # SSLSocket.pending(): decrypted bytes not read yet

    def close(self) -> None:
        self.sock.close()


class _FakeClient:
    """Just enough of paho's external-loop surface: each loop_read consumes one packet."""

    def __init__(self, sock: _BufferedSocket) -> None:
        self.sock, self.packets = sock, 0
        self.on_socket_open: Any = None
        self.on_socket_close: Any = None
        self.on_socket_register_write: Any = None
        self.on_socket_unregister_write: Any = None

    def reconnect(self) -> None:
        self.on_socket_open(self, None, self.sock)

    def loop_read(self) -> None:
        if not self.sock.buffered:
            try:
                self.sock.sock.recv(1)  # the record arrives: the kernel socket is readable once
            except BlockingIOError:
                return
            self.sock.buffered = self.sock.per_record
        self.sock.buffered -= 1
        self.packets += 1

    def loop_write(self) -> None: ...

    def loop_misc(self) -> None: ...

    def is_connected(self) -> bool:
        return True

    def disconnect(self) -> None:
        self.on_socket_close(self, None, self.sock)


class _Member:
    def __init__(self, client: _FakeClient) -> None:
        self.client = client

    def tick(self, now: float) -> None: ...

    def farewell(self) -> None:
        return None


@pytest.mark.parametrize("max_pending_reads", [64, 2])
def test_the_netloop_reads_what_tls_has_buffered(max_pending_reads: int) -> None:
    """The selector sees the kernel socket only: packets already decrypted must still be read."""
    ours, broker_end = socket.socketpair()
    ours.setblocking(False)
    client = _FakeClient(_BufferedSocket(ours, packets_per_record=5))
    loop, stop = NetLoop(max_pending_reads=max_pending_reads, tick_every=10.0, misc_every=10.0), threading.Event()
    loop.add(_Member(client))  # type: ignore[arg-type]
    thread = loop.start(stop)
    try:
        broker_end.send(b"\0")  # one record of five packets
        wait_for(lambda: client.packets == 5, 2, "all five packets of the record read")
    finally:
        stop.set()
        loop.wake()
        thread.join(10)
        ours.close()
        broker_end.close()


# ---------------------------------------------------------------- the whole pipeline over TLS


class TLSStack(Stack):
    """Broker with its TLS listener; every process the stack starts connects over TLS."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.broker = RunningBroker(self.home, tls=True)

    @property
    def env(self) -> dict[str, str]:
        assert self.broker.tls_port is not None
        return {
            **super().env,
            "CITYLEDGER_MQTT_PORT": str(self.broker.tls_port),
            "CITYLEDGER_MQTT_CA": str(self.broker.ca_file),
        }


def _listener_of_each_client(log: str) -> dict[str, set[int]]:
    """Which listener port each client id logged in through, from mosquitto's connection log lines."""
    listener = {m[1]: int(m[2]) for m in re.finditer(r"New connection from ([\d.]+:\d+) on port (\d+)\.", log)}
    ports: dict[str, set[int]] = {}
    for m in re.finditer(r"New client connected from ([\d.]+:\d+) as (\S+) ", log):
        ports.setdefault(m[2], set()).add(listener[m[1]])
    return ports


def test_the_whole_pipeline_runs_over_tls(tmp_path: Path) -> None:
    """Ingest, fleet and a witness as the CLI starts them, each verifying the broker with the home's CA."""
    plan = {p.device for p in plan_fleet(6, ("d01", "d02", "d03"))}
    store = tmp_path / "witness-store"
    with TLSStack(tmp_path / "home") as stack:
        assert stack.broker.tls_port is not None
        assert stat.S_IMODE(certs.server_key_path(stack.home).stat().st_mode) == 0o600
        password_file = add_witness(stack, "auditor", tmp_path)
        with witness(stack, store, "auditor", password_file, stack.info["ledger_key"]) as auditor:
            auditor.wait_connected()
            assert f"connected to 127.0.0.1:{stack.broker.tls_port} as auditor" in auditor.log()
            fleet = start(
                [sys.executable, "-m", "ledger.cli", "fleet", "--devices", "6", "--interval", "0.5"],
                env=stack.env,
                stdout=PIPE,
                stderr=PIPE,
                text=True,
            )
            try:

                def ledgered() -> set[str]:
                    return {r["device"] for r in stack.api.recent_readings(limit=500)}

                wait_for(lambda: ledgered() == plan or fleet.poll() is not None, 60, "readings of all 6 devices")
                assert fleet.poll() is None, fleet.communicate()[1]
                wait_for(lambda: all(d["online"] == "online" for d in stack.api.devices()), 20, "every device online")
            finally:
                fleet.stop(signal.SIGTERM, timeout=60)
                out, err = fleet.out, fleet.err
            assert fleet.returncode == 0, err
            stats = json.loads(out.strip().splitlines()[-1])
            assert stats["devices"] == 6 and stats["generated"] >= 6
            wait_for(lambda: all(d["online"] == "offline" for d in stack.api.devices()), 20, "every device offline")
            height = int(stack.status()["height"])
            wait_for(lambda: auditor.holds_through(height), 30, f"the witness to hold height {height}")
            assert auditor.stop() == 0

        # Every login went through the TLS listener: the ingest and its ack publisher, each device, the witness.
        logins = _listener_of_each_client(stack.broker.log())
        assert set(logins) == plan | {"ingest", "ingest-acks", "auditor"}, logins
        assert all(ports == {stack.broker.tls_port} for ports in logins.values()), logins

        stack.stop_ingest()  # asserts a clean exit
        assert stack.status()["readings"] >= 6
        verified = stack.cli("verify", "--deep", "--witness", str(store))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "ledger intact" in verified.stdout
