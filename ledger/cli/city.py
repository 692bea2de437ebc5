"""`cityledger` commands that set up and run the city: its home, each long-running part, all of them at once.

`init` creates the home. `broker`, `ingest`, `anchor`, `fleet` (simulated devices), `dashboard` and
`scheduler` each run one part in the foreground; `districts` opens and lists the district chains of a
city of them. `up` runs every part on this machine, `systemd-units` writes them as services for a
server, and `bench` measures them under load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ledger.cli.common import (
    Subcommands,
    add,
    emit,
    env_default,
    group,
    home_of,
    ledger_api,
    mqtt_tls,
    operator_id,
    operator_option,
    opt,
    stop_on_signals,
)
from ledger.home import Home


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(sub, "init", cmd_init, "create the home, the ledger key, the schema and genesis (idempotent)")
    opt(
        p,
        "--log-origin",
        "cityledger.local",
        "the deployment's name for its transparency log; the chain's name is added (HOST/city, HOST/d01)",
    )
    _broker_tls_options(add(sub, "broker", cmd_broker, "run the project's Mosquitto in the foreground"))
    p = add(sub, "ingest", cmd_ingest, "verify readings from the broker and seal them into blocks")
    opt(p, "--block-readings", 5000, "seal a block at this many messages")
    opt(p, "--block-seconds", 1.0, "or when the oldest pending message is this old")
    opt(p, "--quarantine-cap", 1000, "quarantine entries stored per device and hour (the rest only counted)")
    opt(
        p,
        "--workers",
        "auto",
        "screening processes on one MQTT 5 shared subscription (auto: one per core; 0: screen in this process)",
    )
    p = add(sub, "anchor", cmd_anchor, "on a city of district chains: seal every district's head into the city chain")
    opt(p, "--every", 5.0, "seconds between anchors (a city block when any district head moved)")
    dssub = group(sub, "districts", "a city of district chains: each district seals its own (docs/scaling.md)")
    p = add(
        dssub,
        "add",
        cmd_districts_add,
        "open a district's chain in HOME/districts/DISTRICT (city home, no devices)",
        json=True,
    )
    p.add_argument("district")
    operator_option(p)
    add(dssub, "list", cmd_districts_list, "the district chains, and how far the city chain anchors each", json=True)
    p = add(sub, "fleet", cmd_fleet, "run a fleet of simulated devices (keys provisioned on first run)")
    opt(p, "--devices", 40, "number of devices")
    opt(p, "--interval", 5.0, "seconds between readings")
    opt(p, "--districts", "d01,d02,d03", "comma-separated districts")
    opt(p, "--seed", 0, "simulation seed")
    opt(p, "--faults", "", "inject faults, e.g. leak=0.02,dead=0.01,horizon=2h (docs/anomalies.md)")
    p = add(sub, "dashboard", cmd_dashboard, "serve the Streamlit dashboard")
    opt(p, "--port", 8501, "HTTP port")
    p = add(sub, "scheduler", cmd_scheduler, "run periodic jobs (audit)")
    opt(p, "--audit-minutes", 10.0, "minutes between audits")
    p = add(
        sub, "up", cmd_up, "install nothing, start everything: broker, ingest, fleet, scheduler, dashboard, log server"
    )
    opt(p, "--devices", 40, "simulated devices")
    opt(p, "--interval", 5.0, "seconds between readings")
    opt(p, "--dashboard-port", 8501, "dashboard HTTP port")
    opt(p, "--log-port", 8470, "HTTP port of the transparency log's files (`cityledger serve`)")
    opt(p, "--api-port", 8480, "HTTP port of the city's API (`cityledger api`)")
    _broker_tls_options(p)
    p = add(
        sub,
        "systemd-units",
        cmd_systemd_units,
        "for a server: write a systemd unit per long-running part "
        "(Restart=on-failure, hardened) and cityledger.target into DIR (docs/reliability.md)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the unit files to")
    p.add_argument("--user", help="the user the parts run as (default: the owner of the home)")
    p.add_argument("--group", help="their group (default: the user's)")
    p.add_argument(
        "--parts",
        default="broker,ingest,scheduler,dashboard,api,serve",
        help="comma-separated parts among broker, ingest, fleet (simulated devices), scheduler, dashboard, "
        "api (the city's HTTP API), serve (the transparency log's files)",
    )
    p.add_argument("--prefix", default="cityledger", help="unit names: PREFIX-PART.service and PREFIX.target")
    opt(p, "--dashboard-port", 8501, "dashboard HTTP port")
    opt(p, "--api-port", 8480, "the city's API HTTP port")
    opt(p, "--log-port", 8470, "the transparency log's HTTP port")
    opt(p, "--devices", 40, "with the fleet part: simulated devices")
    opt(p, "--interval", 5.0, "with the fleet part: seconds between readings")

    p = add(
        sub,
        "bench",
        cmd_bench,
        "measure sustained readings/s, ack latency and CPU per reading on this machine "
        "(on a temporary home, or --home naming an empty directory)",
        json=True,
    )
    opt(p, "--seconds", 60.0, "measured seconds of load, after a warm-up of up to 5 s")
    opt(p, "--devices", 1000, "simulated devices, one broker connection each")
    opt(p, "--window", 0, "unacknowledged readings per device (0: about two blocks in flight in all)")
    p.add_argument("--workers", type=int, help="run ingest with --workers W (default: ingest's own default)")
    p.add_argument(
        "--districts",
        type=int,
        default=0,
        help="a city of N district chains (N >= 2): one ingest per "
        "district (--workers each) and the city's anchor (default 0: one chain)",
    )
    opt(p, "--block-readings", 5000, "ingest seals a block at this many messages")
    opt(p, "--block-seconds", 1.0, "or when the oldest pending message is this old")
    p.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="JOB",
        help="measure sealing while a job runs over and over, --seconds each after a baseline: audit, "
        "deep-audit, scan, roll-up, close, sign-in, or all (repeat or comma-separate; bench/jobs.py)",
    )
    opt(p, "--history-devices", 1000, "with --job: meters whose history the ledger holds before the load starts")
    opt(p, "--history-days", 21.0, "with --job: days of 15-minute readings in that history")
    opt(p, "--extra-accounts", 0, "with --job: accounts without meters, more bills for the close to issue")


def cmd_init(args: argparse.Namespace) -> int:
    from ledger.service.rpc import RemoteLedger

    ledger = ledger_api(args)
    if isinstance(ledger, RemoteLedger):
        print("ingest is running on this home: already initialised")
        return 0
    from ledger.service.homes import initialize

    result = initialize(home_of(args), log_origin=args.log_origin)
    print(f"{'created' if result['created'] else 'already initialised'}: {result['home']}")
    print(f"ledger key: {result['ledger_key']}")
    print(f"log origin: {result['log_origin']}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from broker import mosquitto

    home = home_of(args)
    if not home.passwd.exists():
        print("no broker access files yet: run `cityledger init` first", file=sys.stderr)
        return 2
    certs = _broker_certs(args, home) if args.tls else None
    mosquitto.exec_foreground(home, args.mqtt_port, args.tls_port if args.tls else None, certs=certs)
    return 0  # not reached


def _broker_certs(args: argparse.Namespace, home: Home) -> Any:
    """The operator's --tls-cert/--tls-key/--tls-ca, or the home's generated CA and certificate."""
    from broker.certs import resolve

    return resolve(
        home,
        cert=args.tls_cert or None,
        key=args.tls_key or None,
        ca=args.tls_ca or None,
        hosts=[h for h in args.tls_hosts.split(",") if h.strip()],
    )


def _broker_tls_options(p: argparse.ArgumentParser) -> None:
    """The broker's TLS listener, for `broker` and `up` alike."""
    p.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("CITYLEDGER_TLS", "").lower() not in ("", "0", "false", "no"),
        help="also listen for MQTT over TLS (`up`: every part connects over TLS) (env CITYLEDGER_TLS)",
    )
    opt(p, "--tls-port", 8883, "TLS listener port")
    opt(p, "--tls-cert", "", "your own broker certificate, with --tls-key and --tls-ca (default: made in HOME/tls)")
    opt(p, "--tls-key", "", "the private key of --tls-cert")
    opt(p, "--tls-ca", "", "the CA that signed --tls-cert; clients are given it")
    opt(p, "--tls-hosts", "", "comma-separated extra host names or addresses for the generated certificate")


def cmd_ingest(args: argparse.Namespace) -> int:
    from ledger.ingest.service import IngestService
    from ledger.ingest.workers import worker_count
    from ledger.service.writer import LedgerWriter

    home = home_of(args)
    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        print(f"cityledger ingest: {exc}", file=sys.stderr)
        return 2
    if home.root.exists():
        home.close_to_others()  # a home from an older version, or widened by hand
    secret = json.loads(home.service_secret("ingest").read_text())
    writer = LedgerWriter.open(home)
    try:
        service = IngestService(
            home,
            writer,
            host=args.mqtt_host,
            port=args.mqtt_port,
            username=secret["username"],
            password=secret["password"],
            block_readings=args.block_readings,
            block_seconds=args.block_seconds,
            tls=mqtt_tls(args),
            quarantine_cap=args.quarantine_cap,
            workers=workers,
        )
        stop = stop_on_signals()
        logging.getLogger("cityledger.ingest").info(
            "ingest on %s:%d, home %s, blocks of %d readings or %.1f s, %s",
            args.mqtt_host,
            args.mqtt_port,
            home.root,
            args.block_readings,
            args.block_seconds,
            f"{workers} workers" if workers else "no workers",
        )
        service.run(stop)
    finally:
        writer.close()
    return 0


def cmd_anchor(args: argparse.Namespace) -> int:
    from ledger.ingest.anchor import AnchorService
    from ledger.service.writer import LedgerWriter

    home = home_of(args)
    secret = json.loads(home.service_secret("ingest").read_text())
    writer = LedgerWriter.open(home)
    try:
        service = AnchorService(
            home,
            writer,
            host=args.mqtt_host,
            port=args.mqtt_port,
            username=secret["username"],
            password=secret["password"],
            every=args.every,
            tls=mqtt_tls(args),
        )
        logging.getLogger("cityledger.anchor").info(
            "anchoring %d district chains into %s every %.1f s", len(writer.districts()), home.root, args.every
        )
        service.run(stop_on_signals())
    finally:
        writer.close()
    return 0


def cmd_districts_add(args: argparse.Namespace) -> int:
    out = ledger_api(args).add_district(args.district, operator=operator_id(args))
    if args.json:
        emit(out)
    else:
        print(f"district {out['district']}: its ledger is {out['home']} (first key {out['ledger_key']})")
        print(f"run its ingest with `cityledger --home {out['home']} ingest`")
    return 0


def cmd_districts_list(args: argparse.Namespace) -> int:
    rows = ledger_api(args).districts()
    if args.json:
        emit(rows)
        return 0
    for r in rows:
        head = f"anchored at height {r['anchored_height']}" if r["anchored_height"] is not None else "not anchored yet"
        print(f"{r['district']:<12} {head:<28} {r['home']}")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from edge.fleet import run_fleet

    home = home_of(args)
    ledger = ledger_api(args)

    def enroll(identity: Any) -> tuple[str, str]:
        from ledger.service.writer import AlreadyEnrolled

        try:
            out = ledger.enroll_device(
                device=identity.device,
                kind=identity.kind,
                district=identity.district,
                public_key=identity.public_key_hex,
            )
        except AlreadyEnrolled:  # raised as itself over the socket too (ledger/errors.py)
            # Enrolled before a crash, login never saved: same key, new password.
            out = ledger.reset_device_password(device=identity.device, public_key=identity.public_key_hex)
        return out["mqtt_username"], out["mqtt_password"]

    faults = None
    if args.faults:
        from edge.faults import FaultPlan

        try:
            faults = FaultPlan.parse(args.faults)
        except ValueError as exc:
            print(f"--faults: {exc}", file=sys.stderr)
            return 2
    stop = stop_on_signals()
    stats = run_fleet(
        home,
        devices=args.devices,
        interval=args.interval,
        host=args.mqtt_host,
        port=args.mqtt_port,
        districts=tuple(args.districts.split(",")),
        enroll=enroll,
        stop=stop,
        seed=args.seed,
        tls=mqtt_tls(args),
        faults=faults,
    )
    emit(stats.as_dict(), compact=True)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.serve import exec_streamlit

    exec_streamlit(home_of(args), args.port)
    return 0  # not reached


def cmd_scheduler(args: argparse.Namespace) -> int:
    from ledger.service.scheduler import run_scheduler

    run_scheduler(home_of(args), audit_minutes=args.audit_minutes, stop=stop_on_signals())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ledger.city.up import run_up

    return run_up(home_of(args), args)


def cmd_systemd_units(args: argparse.Namespace) -> int:
    from ledger.city import systemd_units as su

    home = home_of(args)
    settings = su.UnitSettings(
        home=home.root,
        user=args.user or su.home_owner(home.root),
        group=args.group or None,
        executable=su.this_executable(),
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        mqtt_ca=args.mqtt_ca,
        dashboard_port=args.dashboard_port,
        api_port=args.api_port,
        log_port=args.log_port,
        fleet_devices=args.devices,
        fleet_interval=args.interval,
        parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        prefix=args.prefix,
        code_paths=su.code_paths(),
    )
    written = su.write_units(su.render_units(settings), Path(args.out))
    for path in written:
        print(path)
    if settings.user == "root":
        print("warning: the units run as root; a user of their own (--user) is safer", file=sys.stderr)
    print(
        f"install: cp {' '.join(p.name for p in written)} /etc/systemd/system/ (from {args.out}), then "
        f"systemctl daemon-reload && systemctl enable --now {settings.unit_name('target')}"
    )
    return 0


CHECKOUT = Path(__file__).resolve().parents[2]


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks stay in the repository, out of the wheel (issue 16): they run from a checkout.
    if not (CHECKOUT / "bench" / "city.py").is_file():
        print(
            "cityledger bench: the benchmarks are in the source checkout's bench/, not in an installed "
            "package; run it from a checkout (bash .ci/setup, then .venv/bin/cityledger bench)",
            file=sys.stderr,
        )
        return 2
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    if args.job:  # the heavy jobs against a loaded ingest (bench/jobs.py)
        from bench.jobs import main as bench_main
    else:
        from bench.city import main as bench_main

    # --home defaults to the deployment's home, which the bench must never fill with its devices.
    return bench_main(args, home_given=args.home != env_default("home", "./var"))
