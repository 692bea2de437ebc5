"""`cityledger up`: a whole simulated city on this machine, stopped by one Ctrl-C.

Each part runs as its own process, exactly as an operator would run it by hand
(`cityledger broker`, `ingest`, `fleet`, `scheduler`, `serve`, `dashboard`), each in its
own session so that Ctrl-C reaches only this supervisor, which then stops the
parts in reverse order: nothing is left behind.

A part that exits on its own is restarted with backoff (ledger/city/supervisor.py),
logged, and counted in HOME/supervisor.json, which `cityledger status` shows;
the other parts keep running. The parts start in order, each waiting for the
one before to be ready, as an operator would start them; after that each part
is on its own.

With `--tls` the broker also opens its TLS listener (certificates made in the
home unless the operator gives their own), and every MQTT client part is
pointed at that listener and told the CA to verify it with
(CITYLEDGER_MQTT_PORT, CITYLEDGER_MQTT_CA), so nothing travels in plain text.

The demo's households and operators (ledger/city/demo.py) are made once, on a new
home, and only ever for the devices of the fleet `up` itself starts.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time

from broker.certs import CertPaths, resolve
from edge.fleet import plan_fleet
from ledger.city import demo
from ledger.city.supervisor import PartSpec, Stopped, Supervisor
from ledger.home import Home
from ledger.service.rpc import RemoteLedger, open_ledger

STATUS_EVERY_S = 10.0


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _ingest_serving(home: Home) -> bool:
    return isinstance(open_ledger(home), RemoteLedger)


def _remote(home: Home) -> RemoteLedger:
    """The ingest's API, never the file itself: `up` must not hold the lock a restarting ingest needs."""
    ledger = open_ledger(home)
    if not isinstance(ledger, RemoteLedger):
        raise ConnectionError("ingest is not serving")
    return ledger


def run_up(home: Home, args: argparse.Namespace) -> int:
    from ledger.service.homes import initialize

    host, port = args.mqtt_host, args.mqtt_port
    tls_port: int | None = args.tls_port if args.tls else None
    if isinstance(open_ledger(home), RemoteLedger):
        print(f"an ingest is already running on {home.root}; stop it first", file=sys.stderr)
        return 2
    ports = [
        ("MQTT", port, "mqtt-port"),
        ("dashboard", args.dashboard_port, "dashboard-port"),
        ("transparency log", args.log_port, "log-port"),
        ("API", args.api_port, "api-port"),
    ]
    if tls_port is not None:
        ports.append(("MQTT over TLS", tls_port, "tls-port"))
    for what, p, flag in ports:
        if port_open("127.0.0.1", p):
            print(f"port {p} ({what}) is in use; choose another with --{flag}", file=sys.stderr)
            return 2
    info = initialize(home)
    print(f"cityledger home {home.root}, ledger key {info['ledger_key']}")
    env = {
        **os.environ,
        "CITYLEDGER_HOME": str(home.root),
        "CITYLEDGER_MQTT_HOST": host,
        "CITYLEDGER_MQTT_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    broker_args = ["broker", "--mqtt-port", str(port)]
    api_args = ["api", "--port", str(args.api_port)]
    if tls_port is not None:
        certs = _tls_certs(home, args)
        print(f"MQTT over TLS on port {tls_port}; clients verify the broker with {certs.ca}")
        broker_args += _tls_broker_args(tls_port, certs)
        api_args += ["--tls", "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]  # the broker's certificate
        env.update({"CITYLEDGER_MQTT_PORT": str(tls_port), "CITYLEDGER_MQTT_CA": str(certs.ca)})
    listeners = [p for p in (port, tls_port) if p is not None]
    sup = Supervisor(home, env)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return_code = 0
    try:
        broker = sup.start(
            PartSpec(
                "broker",
                tuple(broker_args),
                lambda: all(port_open(host, p) for p in listeners),
                15,
                f"the broker on port{'s' if len(listeners) > 1 else ''} {', '.join(map(str, listeners))}",
            )
        )
        sup.wait_ready(broker, stop)
        ingest = sup.start(PartSpec("ingest", ("ingest",), lambda: _ingest_serving(home), 30, "the ingest's API"))
        sup.wait_ready(ingest, stop)
        ledger = _remote(home)
        baseline = int(ledger.status()["readings"])
        fleet = sup.start(
            PartSpec(
                "fleet",
                (
                    "fleet",
                    "--devices",
                    str(args.devices),
                    "--interval",
                    str(args.interval),
                    "--districts",
                    ",".join(demo.DISTRICTS),
                ),
            )
        )
        planned = fleet_devices(args.devices)
        sup.wait(lambda: _enrolled(home, planned), 120, "the fleet's devices to enrol", stop, fleet)
        made = demo.populate(ledger, home, planned)
        sup.start(PartSpec("scheduler", ("scheduler",)))
        sup.start(  # the log's public files: what witnesses, monitors and citizens' verifiers read
            PartSpec(
                "serve",
                ("serve", "--port", str(args.log_port)),
                lambda: port_open("127.0.0.1", args.log_port),
                30,
                "the transparency log's server",
            )
        )
        sup.start(  # the city's API for other systems (`cityledger agencies add`, `operators token`)
            PartSpec(
                "api",
                tuple(api_args),
                lambda: port_open("127.0.0.1", args.api_port),
                30,
                "the city's API",
            )
        )
        dash = sup.start(
            PartSpec(
                "dashboard",
                ("dashboard", "--port", str(args.dashboard_port)),
                lambda: port_open("127.0.0.1", args.dashboard_port),
                60,
                "the dashboard",
            )
        )
        sup.wait_ready(dash, stop)
        print(
            f"\nDashboard: http://127.0.0.1:{args.dashboard_port}\n{_logins_text(home, made)}"
            f"Transparency log: http://127.0.0.1:{args.log_port}/checkpoint (cityledger monitor --url "
            f'http://127.0.0.1:{args.log_port} --ledger-key "$(cityledger --home {home.root} tlog vkey)")\n'
            f"API: http{'s' if tls_port is not None else ''}://127.0.0.1:{args.api_port}/v1/docs (a token: cityledger "
            f"--home {home.root} operators token op-city)\n"
            f"Watch: cityledger --home {home.root} status   |   Ctrl-C stops everything.\n",
            flush=True,
        )
        _supervise_until(stop, sup, home, baseline)
    except Stopped:
        pass
    except RuntimeError as exc:
        print(f"cityledger up: {exc}", file=sys.stderr)
        return_code = 1
    finally:
        print("stopping...", flush=True)
        sup.stop_all()
    return return_code


def fleet_devices(devices: int) -> frozenset[str]:
    """The ids of the fleet `up` starts: the only devices its demo may give households."""
    return frozenset(p.device for p in plan_fleet(devices, demo.DISTRICTS))


def _enrolled(home: Home, planned: frozenset[str]) -> bool:
    """Every device of the fleet is in the registry (counting devices would count an operator's too)."""
    return planned <= {d["device"] for d in _remote(home).devices()}


def _logins_text(home: Home, made: demo.Demo) -> str:
    """Who can sign in, or why there is no demo login to offer."""
    text = f"  {made.note}\n"
    if made.citizens:
        text += f"  sign in as a citizen: {', '.join(made.citizens)} (password {made.citizen_password})\n"
    if made.operators:
        text += (
            f"  or as an operator:    {', '.join(made.operators)} (password {made.operator_password})\n"
            f"  (all demo logins: {home.root / demo.LOGINS_FILE})\n"
        )
    return text


def _tls_certs(home: Home, args: argparse.Namespace) -> CertPaths:
    """The operator's files, or the home's CA and server certificate, which also names the host clients dial."""
    hosts = [h for h in args.tls_hosts.split(",") if h.strip()] + [args.mqtt_host]
    return resolve(home, cert=args.tls_cert or None, key=args.tls_key or None, ca=args.tls_ca or None, hosts=hosts)


def _tls_broker_args(tls_port: int, certs: CertPaths) -> list[str]:
    """The broker part is given the files resolved here, so it generates nothing of its own."""
    return [
        "--tls",
        "--tls-port",
        str(tls_port),
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        "--tls-ca",
        str(certs.ca),
    ]


def _supervise_until(stop: threading.Event, sup: Supervisor, home: Home, baseline: int) -> None:
    """Keep the parts running until Ctrl-C, and print a status line every STATUS_EVERY_S.

    The first line comes as soon as readings reach the ledger ("N devices
    ledgering"), so a person (or a test) knows the city works end to end.
    """
    started = time.monotonic()
    next_line, last, announced = started, baseline, False
    while not stop.wait(sup.tick_s):
        sup.tick()
        now = time.monotonic()
        if now < next_line:
            continue
        line, readings = _status_line(home, sup, last)
        if not announced and (readings is None or readings <= baseline) and now - started < STATUS_EVERY_S:
            next_line = now + 0.5  # no reading ledgered yet: look again soon
            continue
        print(line, flush=True)
        announced, next_line = True, now + STATUS_EVERY_S
        last = readings if readings is not None else last


def _status_line(home: Home, sup: Supervisor, last: int) -> tuple[str, int | None]:
    """The status line, and the ledger's reading count (None when ingest is not serving).

    Asks ingest only while the supervisor has it ready: opening the file directly
    while ingest restarts would hold the lock ingest needs.
    """
    stamp = f"[{time.strftime('%H:%M:%S')}]"
    restarts = sup.restarts()
    tail = ""
    if restarts:
        tail += "; restarts: " + ", ".join(f"{name} {n}" for name, n in restarts.items())
    if looping := sup.crash_looping():
        tail += "; crash-looping: " + ", ".join(looping)
    if not sup.get("ingest").ready:
        return f"{stamp} ingest is restarting; status unavailable{tail}", None
    try:
        s = _remote(home).status()
    except Exception as exc:
        return f"{stamp} status unavailable: {exc}{tail}", None
    readings = int(s["readings"])
    counts = (
        f"readings {readings} (+{readings - last}), blocks {s['blocks']}, quarantined {s['quarantined']}, "
        f"duplicates {s['duplicates']}"
    )
    if readings > last:
        return f"{stamp} {s['devices']} devices ledgering: {counts}{tail}", readings
    return f"{stamp} {s['devices']} devices, no new readings: {counts}{tail}", readings
