"""A real mosquitto for tests, with the project's own config, and synchronous MQTT helpers.

Messaging tests run against the broker production uses, configured by the same
template and access files, because the guarantees under test (who may publish
where, what survives a restart) are the broker's, and a fake would only test the
fake. Every wait is on a condition with a deadline: no sleep-and-hope.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from broker import mosquitto
from broker.access import DeviceAccess, ServiceAccess, write_access_files
from broker.certs import CertPaths, ca_cert_path
from broker.mqtt.client_ids import mqtt_client_id
from broker.mqtt.tls import TLSSettings
from broker.mqtt.tls import configure as configure_tls
from ledger.home import Home
from ledger.processes import Child, WaitTimeout, wait_until

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 5.0
RELOAD_LOG_LINE = "Reloading config."


# ---------------------------------------------------------------- waiting


def wait_for(
    predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT_S, what: str = "condition", every: float = 0.01
) -> T:
    """Poll `predicate` until it returns something truthy, and return that (ledger.processes.wait_until).

    Raises AssertionError naming `what` on timeout, so a failing test says what
    it was waiting for instead of hanging or flaking, and reads as a failed check.
    """
    try:
        return wait_until(predicate, timeout, every, what=what)
    except WaitTimeout as exc:
        raise AssertionError(str(exc)) from None


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the broker


class RunningBroker:
    """The project's mosquitto on a free port of a temporary home, as a context manager.

    Writes the access files when given the lists (without them, whatever the
    home already has is kept, e.g. what `initialize` wrote, and missing files
    start out empty), starts the broker on entry and always stops it on exit. stop/kill/start keep the port and the persistence directory, so a test
    can restart "the same" broker; reload() returns once the broker has re-read
    its files.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        home: Home,
        devices: Iterable[DeviceAccess] | None = None,
        services: Iterable[ServiceAccess] | None = None,
        *,
        port: int | None = None,
        tls: bool = False,
        certs: CertPaths | None = None,
    ) -> None:
        """`tls` (or `certs`) adds the TLS listener on `tls_port`, serving `certs` or the home's generated files."""
        self.home = home
        self.port = port if port is not None else free_port()
        self._pinned_port = port is not None
        self.certs = certs
        self.tls_port: int | None = free_port() if tls or certs is not None else None
        self._proc: Child | None = None
        if devices is not None or services is not None:
            self.set_access(devices or (), services or ())

    def set_access(self, devices: Iterable[DeviceAccess], services: Iterable[ServiceAccess]) -> None:
        """Rewrite passwd and acl; a running broker sees them after reload()."""
        write_access_files(self.home, devices, services)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> RunningBroker:
        """Start (or restart) the broker; a first start retries once on a port taken meanwhile."""
        if self.running:
            raise RuntimeError("broker already running")
        try:
            self._proc = mosquitto.start(self.home, self.port, self.tls_port, certs=self.certs)
        except RuntimeError as exc:
            if self._pinned_port or "Address already in use" not in str(exc):
                raise
            self.port = free_port()
            self.tls_port = free_port() if self.tls_port is not None else None
            self._proc = mosquitto.start(self.home, self.port, self.tls_port, certs=self.certs)
        self._pinned_port = True  # restarts must come back on the same port
        return self

    @property
    def ca_file(self) -> Path:
        """The CA a client must trust to reach the TLS listener."""
        assert self.tls_port is not None, "this broker has no TLS listener"
        return self.certs.ca if self.certs is not None else ca_cert_path(self.home)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on the way out."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.stop(timeout=timeout)
        if proc.forced:
            raise AssertionError(f"mosquitto ignored SIGTERM for {timeout} s and was killed")

    def kill(self) -> None:
        """SIGKILL: a crash, losing whatever was not autosaved yet."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.stop(signal.SIGKILL)  # and reap it, or its pid stays "alive" as a zombie

    def reload(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """SIGHUP, then wait until the broker logs the reload.

        Mosquitto is single-threaded and logs the line in the same loop pass that
        re-reads the files, so anything a client sends afterwards meets the new rules.
        """
        before = self.log().count(RELOAD_LOG_LINE)
        if not mosquitto.reload(self.home):
            raise AssertionError("no running broker to reload")
        wait_for(lambda: self.log().count(RELOAD_LOG_LINE) > before, timeout, "mosquitto to log its reload")

    def log(self) -> str:
        """Everything the broker logged in this home so far."""
        path = mosquitto.log_path(self.home)
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> RunningBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------- clients


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class ClientLog:
    """What a client's callbacks saw, recorded from paho's network thread.

    Stored as the client's userdata so tests can wait on it; read it through
    client_log(client).
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    connects: list[ReasonCode] = field(default_factory=list)
    disconnects: list[ReasonCode] = field(default_factory=list)
    messages: list[Received] = field(default_factory=list)
    pubacks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)

    def received(self, topic: str | None = None) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def topics(self) -> list[str]:
        return [m.topic for m in self.received()]


def _on_connect(client: mqtt.Client, log: ClientLog, flags: Any, rc: ReasonCode, props: Any) -> None:
    with log.lock:
        log.connects.append(rc)


def _on_disconnect(client: mqtt.Client, log: ClientLog, flags: Any, rc: ReasonCode, props: Any) -> None:
    with log.lock:
        log.disconnects.append(rc)


def _on_message(client: mqtt.Client, log: ClientLog, message: mqtt.MQTTMessage) -> None:
    with log.lock:
        log.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain)))


def _on_publish(client: mqtt.Client, log: ClientLog, mid: int, rc: ReasonCode, props: Any) -> None:
    with log.lock:
        log.pubacks[mid] = rc


def _on_subscribe(client: mqtt.Client, log: ClientLog, mid: int, rcs: list[ReasonCode], props: Any) -> None:
    with log.lock:
        log.subacks[mid] = list(rcs)


def connect_client(
    port: int,
    username: str | None,
    password: str | None,
    client_id: str,
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
    *,
    host: str = "127.0.0.1",
    timeout: float = DEFAULT_TIMEOUT_S,
    reconnect: bool = True,
    tls: TLSSettings | None = None,
    raw_client_id: bool = False,
) -> mqtt.Client:
    """A paho client, connected (network loop running), or ConnectionRefusedError.

    Like every cityledger client it sends `client_id` behind the prefix the broker
    requires (broker/mqtt/client_ids.py); `raw_client_id` sends it exactly as given, as
    a stranger would.

    The handshake runs on the calling thread and the network thread starts only
    after a successful CONNACK: a refused client then has no retrying thread to
    stop (stopping one waits out paho's reconnect delay, about a second).
    Refusal is whatever the broker answered: a CONNACK failure or a closed socket.
    With `tls` the client connects over TLS (broker.mqtt.tls.configure) and a broker it
    cannot verify raises ssl.SSLCertVerificationError from the TLS handshake.
    """
    log = ClientLog()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id if raw_client_id else mqtt_client_id(client_id),
        protocol=protocol,
        userdata=log,
        reconnect_on_failure=reconnect,
    )
    client.on_connect, client.on_disconnect = _on_connect, _on_disconnect
    client.on_message, client.on_publish, client.on_subscribe = _on_message, _on_publish, _on_subscribe
    if username is not None:
        client.username_pw_set(username, password)
    configure_tls(client, tls)
    client.connect(host, port, keepalive=30)
    outcome = _handshake(client, log, timeout, client_id)
    if outcome is None or outcome.is_failure:
        client.disconnect()
        raise ConnectionRefusedError(f"broker refused {username!r} as {client_id!r}: {outcome}")
    client.loop_start()
    return client


def _handshake(client: mqtt.Client, log: ClientLog, timeout: float, client_id: str) -> ReasonCode | None:
    """Drive the network by hand until CONNACK (its reason code) or a closed socket (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = client.loop(timeout=0.05)
        with log.lock:
            if log.connects:
                return log.connects[0]
            if log.disconnects or result not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                return None
    client.disconnect()
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for CONNACK for {client_id!r}")


def close_client(client: mqtt.Client) -> None:
    """Disconnect cleanly (no Last Will) and stop the network thread."""
    client.disconnect()
    client.loop_stop()


def client_log(client: mqtt.Client) -> ClientLog:
    log = client.user_data_get()
    assert isinstance(log, ClientLog), "not a client from connect_client"
    return log


def subscribe(client: mqtt.Client, topic: str, qos: int = 1, timeout: float = DEFAULT_TIMEOUT_S) -> list[ReasonCode]:
    """Subscribe and return the SUBACK's reason codes."""
    result, mid = client.subscribe(topic, qos)
    assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None, f"subscribe failed locally: {result}"
    log = client_log(client)
    return wait_for(lambda: log.subacks.get(mid), timeout, f"SUBACK for {topic}")


def publish(
    client: mqtt.Client,
    topic: str,
    payload: bytes,
    qos: int = 1,
    retain: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ReasonCode:
    """Publish and return the broker's PUBACK reason code (MQTT 5 says "Not authorized").

    Once the PUBACK is back, mosquitto has already queued the message for every
    subscriber, which is what lets tests order messages across clients.
    """
    info = client.publish(topic, payload, qos=qos, retain=retain)
    assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
    log = client_log(client)
    return wait_for(lambda: log.pubacks.get(info.mid), timeout, f"PUBACK for {topic}")


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, read from /proc (IPv4 and IPv6).

    A descriptor may close while we look (the broker opens and closes sockets as
    clients come and go): those are skipped, not an error.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports
