"""A real cityledger stack for tests: the project's Mosquitto and `cityledger ingest`.

Ingest runs as a subprocess started exactly as an operator starts it, so the
tests cover the real command, the real socket API and the real DuckDB file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from nacl.signing import SigningKey

from ledger.chain.protocol import Reading, device_topic, sign_reading
from ledger.home import Home
from ledger.processes import STDOUT, Child, start
from ledger.service.homes import initialize
from ledger.service.rpc import RemoteLedger, open_ledger
from tests.support.broker import RunningBroker, close_client, connect_client, wait_for


@dataclass
class SimDevice:
    """A device driven by hand from a test: its key, login and seq are the test's."""

    device: str
    kind: str
    district: str
    key: SigningKey
    password: str
    seq: int = 0

    def reading(self, value: int, ts: int, seq: int | None = None) -> Reading:
        if seq is None:
            self.seq += 1
            seq = self.seq
        return sign_reading(self.key, device=self.device, kind=self.kind, seq=seq, ts=ts, value=value)

    @property
    def topic(self) -> str:
        return device_topic(self.district, self.kind, self.device, "reading")

    @property
    def ack_topic(self) -> str:
        return device_topic(self.district, self.kind, self.device, "ack")


class Stack:
    """Broker + ingest on a temporary home; every process is stopped on exit."""

    def __init__(
        self,
        root: Path,
        *,
        block_readings: int = 500,
        block_seconds: float = 0.3,
        workers: int = 0,
        broker: RunningBroker | None = None,
    ) -> None:
        """With `broker`, this stack shares another's broker (a district's home shares its city's)."""
        self.home = Home(root)
        self.block_readings, self.block_seconds, self.workers = block_readings, block_seconds, workers
        self._owns_broker = broker is None
        self.broker = broker or RunningBroker(self.home)
        self.info = initialize(self.home)
        self.ingest: Child | None = None
        self.ingest_log = self.home.logs / "ingest.log"

    # ------------------------------------------------------------ processes

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CITYLEDGER_HOME": str(self.home.root),
            "CITYLEDGER_MQTT_PORT": str(self.broker.port),
            "CITYLEDGER_MQTT_HOST": "127.0.0.1",
            "CITYLEDGER_CHECKPOINT_INTERVAL": "0.2",  # the log's checkpoint within a moment, not every 5 s
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> Stack:
        if self._owns_broker:
            self.broker.start()
        self.start_ingest()
        return self

    def start_ingest(self, command: tuple[str, ...] | None = None) -> None:
        """`cityledger ingest` with this stack's settings, or `cityledger COMMAND` (e.g. `anchor`)."""
        assert self.ingest is None or not self.ingest.alive, "ingest already running"
        command = command or (
            "ingest",
            "--block-readings",
            str(self.block_readings),
            "--block-seconds",
            str(self.block_seconds),
            "--workers",
            str(self.workers),
        )
        self.ingest = start(
            [sys.executable, "-m", "ledger.cli", *command], env=self.env, stdout=self.ingest_log, stderr=STDOUT
        )
        wait_for(lambda: self._ingest_ready(), 30, "the ingest's API socket")

    def _ingest_ready(self) -> bool:
        if self.ingest is not None and not self.ingest.alive:
            raise AssertionError(f"ingest exited with {self.ingest.returncode}:\n{self.ingest_log.read_text()}")
        return isinstance(open_ledger(self.home), RemoteLedger)

    def stop_ingest(self, sig: int = signal.SIGTERM) -> None:
        proc, self.ingest = self.ingest, None
        if proc is None or not proc.alive:
            return
        proc.stop(sig, timeout=30)
        if proc.forced:
            raise AssertionError("ingest ignored SIGTERM for 30 s")
        if sig == signal.SIGTERM:
            assert proc.returncode == 0, f"ingest exited with {proc.returncode}:\n{self.ingest_log.read_text()}"

    def close(self) -> None:
        try:
            self.stop_ingest()
        finally:
            if self._owns_broker:
                self.broker.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ using it

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `cityledger ARGS` against this stack, as a user would."""
        out = subprocess.run(
            [sys.executable, "-m", "ledger.cli", *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and out.returncode != 0:
            raise AssertionError(f"cityledger {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, check=True).stdout)

    @property
    def api(self) -> Any:
        return open_ledger(self.home)

    def enroll(self, device: str, kind: str = "water", district: str = "d01", account: str | None = None) -> SimDevice:
        key = SigningKey.generate()
        args = [
            "devices",
            "enroll",
            "--id",
            device,
            "--kind",
            kind,
            "--district",
            district,
            "--public-key",
            key.verify_key.encode().hex(),
        ]
        if account:
            args += ["--account", account]
        out = self.cli_json(*args)
        return SimDevice(device, kind, district, key, out["mqtt_password"])

    def connect(self, dev: SimDevice) -> mqtt.Client:
        return connect_client(self.broker.port, dev.device, dev.password, client_id=dev.device)

    def status(self) -> dict[str, Any]:
        return self.api.status()

    def ledger_readings(self, dev: SimDevice, count: int) -> None:
        """Publish `count` readings of `dev` timestamped now, and wait until the ledger holds them."""
        before = self.status()["readings"]
        client = self.connect(dev)
        try:
            for n in range(count):
                client.publish(dev.topic, dev.reading(value=1000 + n, ts=time.time_ns() // 1_000_000).payload(), qos=1)
            wait_for(lambda: self.status()["readings"] == before + count, what=f"{count} readings ledgered")
        finally:
            close_client(client)
