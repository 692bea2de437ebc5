"""`cityledger up`: a whole simulated city on this machine, stopped by one Ctrl-C.

Each part runs as its own process, exactly as an operator would run it by hand
(`cityledger broker`, `ingest`, `fleet`, `scheduler`, `dashboard`), each in its
own session so that Ctrl-C reaches only this supervisor, which then stops the
parts in reverse order: nothing is left behind.

With `--tls` the broker also opens its TLS listener (certificates made in the
home unless the operator gives their own), and every MQTT client part is
pointed at that listener and told the CA to verify it with
(CITYLEDGER_MQTT_PORT, CITYLEDGER_MQTT_CA), so nothing travels in plain text.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.certs import CertPaths, resolve
from ledger import demo
from ledger.home import Home
from ledger.rpc import RemoteLedger, open_ledger


@dataclass
class Part:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout: float, what: str, part: Part | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if part and part.proc.poll() is not None:
            raise RuntimeError(f"{part.name} exited with {part.proc.returncode}; see {part.log}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Supervisor:
    def __init__(self, home: Home, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.parts: list[Part] = []

    def start(self, name: str, *args: str) -> Part:
        log = self.home.logs / f"{name}.log"
        handle = open(log, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "ledger.cli", *args], env=self.env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
        part = Part(name, proc, log)
        self.parts.append(part)
        print(f"  started {name:<10} pid {proc.pid:<7} log {log}", flush=True)
        return part

    def failed(self) -> Part | None:
        return next((p for p in self.parts if p.proc.poll() is not None), None)

    def stop_all(self) -> None:
        for part in reversed(self.parts):
            if part.proc.poll() is None:
                part.proc.send_signal(signal.SIGTERM)
                try:
                    part.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    part.proc.kill()
                    part.proc.wait()
            print(f"  stopped {part.name}", flush=True)


def run_up(home: Home, args: argparse.Namespace) -> int:
    from ledger.writer import initialize

    host, port = args.mqtt_host, args.mqtt_port
    tls_port: int | None = args.tls_port if args.tls else None
    if isinstance(open_ledger(home), RemoteLedger):
        print(f"an ingest is already running on {home.root}; stop it first", file=sys.stderr)
        return 2
    ports = [("MQTT", port, "mqtt-port"), ("dashboard", args.dashboard_port, "dashboard-port")]
    if tls_port is not None:
        ports.append(("MQTT over TLS", tls_port, "tls-port"))
    for what, p, flag in ports:
        if port_open("127.0.0.1", p):
            print(f"port {p} ({what}) is in use; choose another with --{flag}", file=sys.stderr)
            return 2
    info = initialize(home)
    print(f"cityledger home {home.root}, ledger key {info['ledger_key']}")
    env = {**os.environ, "CITYLEDGER_HOME": str(home.root), "CITYLEDGER_MQTT_HOST": host,
           "CITYLEDGER_MQTT_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    broker_args = ["broker", "--mqtt-port", str(port)]
    if tls_port is not None:
        certs = _tls_certs(home, args)
        print(f"MQTT over TLS on port {tls_port}; clients verify the broker with {certs.ca}")
        broker_args += _tls_broker_args(tls_port, certs)
        env.update({"CITYLEDGER_MQTT_PORT": str(tls_port), "CITYLEDGER_MQTT_CA": str(certs.ca)})
    sup = Supervisor(home, env)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        broker = sup.start("broker", *broker_args)
        for listening in (port, tls_port):
            if listening is not None:
                wait_until(lambda: port_open(host, listening), 15, f"the broker on port {listening}", broker)
        ingest = sup.start("ingest", "ingest")
        wait_until(lambda: isinstance(open_ledger(home), RemoteLedger), 30, "the ingest's API", ingest)
        fleet = sup.start("fleet", "fleet", "--devices", str(args.devices), "--interval", str(args.interval))
        ledger = open_ledger(home)
        wait_until(lambda: ledger.status()["devices"] >= args.devices, 120, "the fleet's devices to enrol", fleet)
        logins = demo.populate(ledger, home)
        sup.start("scheduler", "scheduler")
        dash = sup.start("dashboard", "dashboard", "--port", str(args.dashboard_port))
        wait_until(lambda: port_open("127.0.0.1", args.dashboard_port), 60, "the dashboard", dash)
        print(f"\nDashboard: http://127.0.0.1:{args.dashboard_port}\n"
              f"  sign in as a citizen: {', '.join(logins['citizens'])} (password {logins['citizen_password']})\n"
              f"  or as an operator:    {', '.join(logins['operators'])} (password {logins['operator_password']})\n"
              f"  (all demo logins: {home.root / 'demo-logins.txt'})\n"
              f"Watch: cityledger --home {home.root} status   |   Ctrl-C stops everything.\n", flush=True)
        _report_until(stop, sup, home)
    except RuntimeError as exc:
        print(f"cityledger up: {exc}", file=sys.stderr)
        stop.set()
        return_code = 1
    else:
        return_code = 0 if sup.failed() is None else 1
    finally:
        print("stopping...", flush=True)
        sup.stop_all()
    return return_code


def _tls_certs(home: Home, args: argparse.Namespace) -> CertPaths:
    """The operator's files, or the home's CA and server certificate, which also names the host clients dial."""
    hosts = [h for h in args.tls_hosts.split(",") if h.strip()] + [args.mqtt_host]
    return resolve(home, cert=args.tls_cert or None, key=args.tls_key or None, ca=args.tls_ca or None, hosts=hosts)


def _tls_broker_args(tls_port: int, certs: CertPaths) -> list[str]:
    """The broker part is given the files resolved here, so it generates nothing of its own."""
    return ["--tls", "--tls-port", str(tls_port), "--tls-cert", str(certs.cert), "--tls-key", str(certs.key),
            "--tls-ca", str(certs.ca)]


def _report_until(stop: threading.Event, sup: Supervisor, home: Home) -> None:
    """Print one status line every 10 s; stop early if a part dies."""
    while not stop.wait(10):
        dead = sup.failed()
        if dead:
            print(f"{dead.name} exited with {dead.proc.returncode}; see {dead.log}", file=sys.stderr)
            return
        try:
            s = open_ledger(home).status()
        except Exception as exc:  # ingest restarting: say so, keep going
            print(f"status unavailable: {exc}", flush=True)
            continue
        print(f"[{time.strftime('%H:%M:%S')}] blocks {s['blocks']}  readings {s['readings']}  "
              f"quarantined {s['quarantined']}  duplicates {s['duplicates']}  devices {s['devices']}", flush=True)
