"""`cityledger`: the console command. Thin: parse flags, call a module, print.

Every flag also reads an environment variable CITYLEDGER_<NAME> (the flag's
name upper-cased, dashes as underscores), so a deployment configures all of it
in one place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ledger.home import Home
from ledger.defaults import configured_timezone

Handler = Callable[[argparse.Namespace], int]


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(f"CITYLEDGER_{name.upper().replace('-', '_')}")
    if raw is None:
        return default
    return type(default)(raw) if default is not None and not isinstance(default, bool) else raw


def _opt(p: argparse.ArgumentParser, flag: str, default: Any, help: str, *, suppress: bool = False,
         **kw: Any) -> None:
    name = flag.lstrip("-")
    p.add_argument(flag, default=argparse.SUPPRESS if suppress else _env(name, default),
                   type=type(default) if default is not None else str,
                   help=f"{help} (env CITYLEDGER_{name.upper().replace('-', '_')}; default {default})", **kw)


def _common(suppress: bool = False) -> argparse.ArgumentParser:
    """Options every command takes, before or after its name.

    A subcommand's copy defaults to SUPPRESS, or argparse would let its default
    overwrite a value given before the subcommand's name.
    """
    p = argparse.ArgumentParser(add_help=False)
    _opt(p, "--home", "./var", "where keys, the database and broker files live", suppress=suppress)
    _opt(p, "--mqtt-host", "127.0.0.1", "broker host", suppress=suppress)
    _opt(p, "--mqtt-port", 1883, "broker port", suppress=suppress)
    _opt(p, "--mqtt-ca", "", "CA certificate file: connect to the broker over TLS and verify it", suppress=suppress)
    _opt(p, "--log-level", "INFO", "logging level", suppress=suppress)
    return p


def _tls(args: argparse.Namespace) -> Any:
    from broker.mqtt.tls import TLSSettings

    return TLSSettings.from_option(args.mqtt_ca)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _home(args: argparse.Namespace) -> Home:
    return Home.from_env(args.home)


def _ledger(args: argparse.Namespace) -> Any:
    from ledger.service.rpc import open_ledger

    return open_ledger(_home(args))


# ---------------------------------------------------------------- commands


def cmd_init(args: argparse.Namespace) -> int:
    from ledger.service.rpc import RemoteLedger

    ledger = _ledger(args)
    if isinstance(ledger, RemoteLedger):
        print("ingest is running on this home: already initialised")
        return 0
    from ledger.service.writer import initialize

    result = initialize(_home(args))
    print(f"{'created' if result['created'] else 'already initialised'}: {result['home']}")
    print(f"ledger key: {result['ledger_key']}")
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from broker import mosquitto

    home = _home(args)
    if not home.passwd.exists():
        print("no broker access files yet: run `cityledger init` first", file=sys.stderr)
        return 2
    certs = _broker_certs(args, home) if args.tls else None
    mosquitto.exec_foreground(home, args.mqtt_port, args.tls_port if args.tls else None, certs=certs)
    return 0  # not reached


def _broker_certs(args: argparse.Namespace, home: Home) -> Any:
    """The operator's --tls-cert/--tls-key/--tls-ca, or the home's generated CA and certificate."""
    from broker.certs import resolve

    return resolve(home, cert=args.tls_cert or None, key=args.tls_key or None, ca=args.tls_ca or None,
                   hosts=[h for h in args.tls_hosts.split(",") if h.strip()])


def cmd_ingest(args: argparse.Namespace) -> int:
    from ledger.ingest.service import IngestService
    from ledger.ingest.workers import worker_count
    from ledger.service.writer import LedgerWriter

    home = _home(args)
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
        service = IngestService(home, writer, host=args.mqtt_host, port=args.mqtt_port, username=secret["username"],
                                password=secret["password"], block_readings=args.block_readings,
                                block_seconds=args.block_seconds, tls=_tls(args), quarantine_cap=args.quarantine_cap,
                                workers=workers)
        stop = _stop_on_signals()
        logging.getLogger("cityledger.ingest").info(
            "ingest on %s:%d, home %s, blocks of %d readings or %.1f s, %s", args.mqtt_host, args.mqtt_port,
            home.root, args.block_readings, args.block_seconds, f"{workers} workers" if workers else "no workers")
        service.run(stop)
    finally:
        writer.close()
    return 0


def cmd_anchor(args: argparse.Namespace) -> int:
    from ledger.ingest.anchor import AnchorService
    from ledger.service.writer import LedgerWriter

    home = _home(args)
    secret = json.loads(home.service_secret("ingest").read_text())
    writer = LedgerWriter.open(home)
    try:
        service = AnchorService(home, writer, host=args.mqtt_host, port=args.mqtt_port, username=secret["username"],
                                password=secret["password"], every=args.every, tls=_tls(args))
        logging.getLogger("cityledger.anchor").info(
            "anchoring %d district chains into %s every %.1f s", len(writer.districts()), home.root, args.every)
        service.run(_stop_on_signals())
    finally:
        writer.close()
    return 0


def cmd_districts_add(args: argparse.Namespace) -> int:
    out = _ledger(args).add_district(args.district, operator=_operator(args))
    if args.json:
        _print(out)
    else:
        print(f"district {out['district']}: its ledger is {out['home']} (first key {out['ledger_key']})")
        print(f"run its ingest with `cityledger --home {out['home']} ingest`")
    return 0


def cmd_districts_list(args: argparse.Namespace) -> int:
    rows = _ledger(args).districts()
    if args.json:
        _print(rows)
        return 0
    for r in rows:
        head = f"anchored at height {r['anchored_height']}" if r["anchored_height"] is not None else "not anchored yet"
        print(f"{r['district']:<12} {head:<28} {r['home']}")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from edge.fleet import run_fleet

    home = _home(args)
    ledger = _ledger(args)

    def enroll(identity: Any) -> tuple[str, str]:
        from ledger.service.writer import AlreadyEnrolled

        try:
            out = ledger.enroll_device(device=identity.device, kind=identity.kind, district=identity.district,
                                       public_key=identity.public_key_hex)
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
    stop = _stop_on_signals()
    stats = run_fleet(home, devices=args.devices, interval=args.interval, host=args.mqtt_host,
                      port=args.mqtt_port, districts=tuple(args.districts.split(",")), enroll=enroll, stop=stop,
                      seed=args.seed, tls=_tls(args), faults=faults)
    print(json.dumps(stats.as_dict()))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.serve import exec_streamlit

    exec_streamlit(_home(args), args.port)
    return 0  # not reached


def cmd_scheduler(args: argparse.Namespace) -> int:
    from ledger.service.scheduler import run_scheduler

    run_scheduler(_home(args), audit_minutes=args.audit_minutes, stop=_stop_on_signals())
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from ledger.city.up import run_up

    return run_up(_home(args), args)


def cmd_systemd_units(args: argparse.Namespace) -> int:
    from ledger.city import systemd_units as su

    home = _home(args)
    settings = su.UnitSettings(
        home=home.root, user=args.user or su.home_owner(home.root), group=args.group or None,
        executable=su.this_executable(), mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port, mqtt_ca=args.mqtt_ca,
        dashboard_port=args.dashboard_port, fleet_devices=args.devices, fleet_interval=args.interval,
        parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()), prefix=args.prefix,
        code_paths=su.code_paths())
    written = su.write_units(su.render_units(settings), Path(args.out))
    for path in written:
        print(path)
    if settings.user == "root":
        print("warning: the units run as root; a user of their own (--user) is safer", file=sys.stderr)
    print(f"install: cp {' '.join(p.name for p in written)} /etc/systemd/system/ (from {args.out}), then "
          f"systemctl daemon-reload && systemctl enable --now {settings.unit_name('target')}")
    return 0


CHECKOUT = Path(__file__).resolve().parents[2]


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks stay in the repository, out of the wheel (issue 16): they run from a checkout.
    if not (CHECKOUT / "bench" / "city.py").is_file():
        print("cityledger bench: the benchmarks are in the source checkout's bench/, not in an installed "
              "package; run it from a checkout (bash .ci/setup, then .venv/bin/cityledger bench)", file=sys.stderr)
        return 2
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    if args.job:  # the heavy jobs against a loaded ingest (bench/jobs.py)
        from bench.jobs import main as bench_main
    else:
        from bench.city import main as bench_main

    # --home defaults to the deployment's home, which the bench must never fill with its devices.
    return bench_main(args, home_given=args.home != _env("home", "./var"))


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    out = _ledger(args).enroll_device(device=args.id, kind=args.kind, district=args.district,
                                      public_key=args.public_key, account=args.account, operator=_operator(args))
    _print(out)
    return 0


def cmd_devices_provision(args: argparse.Namespace) -> int:
    """Make a key pair for a device with no key store of its own; only the bundle keeps the private key."""
    from broker.mqtt.client_ids import mqtt_client_id
    from edge.identity import DeviceIdentity

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; refusing to overwrite a device bundle", file=sys.stderr)
        return 2
    identity = DeviceIdentity.generate(args.id, args.kind, args.district)
    enrolled = _ledger(args).enroll_device(device=args.id, kind=args.kind, district=args.district,
                                           public_key=identity.public_key_hex, account=args.account,
                                           operator=_operator(args))
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    identity.with_credentials(enrolled["mqtt_username"], enrolled["mqtt_password"]).save(out)
    # client_id: the broker admits only ids with the project's prefix (docs/security.md).
    broker = {"host": args.mqtt_host, "port": args.mqtt_port, "ca": None, "client_id": mqtt_client_id(args.id)}
    if args.mqtt_ca:
        (out / "ca.crt").write_bytes(Path(args.mqtt_ca).read_bytes())
        broker["ca"] = "ca.crt"
    (out / "device.json").write_text(json.dumps({
        "device": args.id, "kind": args.kind, "district": args.district, "account": args.account,
        "public_key": identity.public_key_hex, "broker": broker,
        "topics": {leaf: identity.topic(leaf) for leaf in ("reading", "status", "ack")},
    }, indent=2) + "\n")
    _print({"device": args.id, "bundle": str(out.resolve()), "public_key": identity.public_key_hex,
            "block": enrolled["block"]})
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    _print(_ledger(args).revoke_device(device=args.id, operator=_operator(args)))
    return 0


def cmd_devices_flagged(args: argparse.Namespace) -> int:
    rows = _ledger(args).flagged_devices(minutes=args.minutes, threshold=args.threshold)
    if args.json:
        _print(rows)
        return 0
    for r in rows:
        print(f"{r['device']:<22} peak {r['peak_rejects_per_minute']:>7}/min  {r['rejects']:>9} rejects  {r['reasons']}")
        s = r.get("suspension")
        if s:  # ledger/service/budget.py: over budget for too long
            rule = s["rule"] or {}
            state = (f"suspended until {_iso(s['until'])}" if s["status"] == "suspended"
                     else f"was suspended {_iso(s['at'])}, reinstated {_iso(s['reinstated_at'])}")
            print(f"{'':<22} {state}: over budget ({rule.get('rate')}/s, burst {rule.get('burst')}) for "
                  f"{rule.get('suspend_after_min')} min, suspended for {rule.get('suspend_for_min')} min "
                  + (f"(rule of block {rule['policy_height']})" if rule.get("policy_height") is not None
                     else "(the default rule)"))
    print(f"{len(rows)} flagged devices")
    return 0


def _iso(ms: int | None) -> str:
    import datetime

    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_devices_policy(args: argparse.Namespace) -> int:
    changes = {"rate": args.rate, "burst": args.burst, "suspend_after_min": args.suspend_after,
               "suspend_for_min": args.suspend_for}
    api = _ledger(args)
    if any(v is not None for v in changes.values()):
        _print(api.set_budget_policy(**changes, operator=_operator(args)))
    else:
        _print(api.budget_policy())
    return 0


def cmd_devices_reinstate(args: argparse.Namespace) -> int:
    _print(_ledger(args).reinstate_device(device=args.id, operator=_operator(args)))
    return 0


def cmd_devices_reset_password(args: argparse.Namespace) -> int:
    _print(_ledger(args).reset_device_password(device=args.id))
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    devices = _ledger(args).devices()
    if args.json:
        _print(devices)
        return 0
    print(f"{'device':<22} {'kind':<12} {'district':<10} {'status':<9} {'online':<8} account")
    for d in devices:
        print(f"{d['device']:<22} {d['kind']:<12} {d['district']:<10} {d['status']:<9} {d['online']:<8} "
              f"{d['account'] or '-'}")
    print(f"{len(devices)} devices")
    return 0


def cmd_receipt(args: argparse.Namespace) -> int:
    from ledger.chain.receipts import encode_receipt

    if args.anchored:
        from ledger.service.cityaudit import anchored_receipt

        data = encode_receipt(anchored_receipt(_home(args), args.device, args.seq))
    else:
        data = encode_receipt(_ledger(args).receipt(device=args.device, seq=args.seq))
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data + (b"\n" if sys.stdout.isatty() else b""))
    return 0


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Offline: reads only the files named, never the home, the database or the network."""
    from ledger.chain.keychain import KeyChainError, key_for_height
    from ledger.chain.receipts import receipt_ok, verify_receipt

    from ledger.chain.anchored import anchored_ok, is_anchored, verify_anchored

    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    trusted = args.ledger_key.lower()
    try:
        anchored = is_anchored(json.loads(data))
    except ValueError:
        anchored = False
    if args.key_chain:
        try:
            receipt = json.loads(data)
            height = receipt["anchor"]["city_block"]["height"] if anchored else receipt["block"]["height"]
            trusted = key_for_height(trusted, json.loads(Path(args.key_chain).read_bytes()), height)
        except (KeyChainError, ValueError, KeyError, TypeError) as exc:
            print(f"key chain refused: {exc}", file=sys.stderr)
            return 1
    checks = verify_anchored(data, trusted) if anchored else verify_receipt(data, trusted)
    ok = anchored_ok(checks) if anchored else receipt_ok(checks)
    if args.json:
        _print({"ok": ok, "checks": [vars(c) for c in checks]})
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<16} {c.detail}")
        print("receipt valid" if ok else "receipt REFUSED")
    return 0 if ok else 1


def cmd_key_chain(args: argparse.Namespace) -> int:
    _print(_ledger(args).key_chain())
    return 0


def cmd_rotate_ledger_key(args: argparse.Namespace) -> int:
    _print(_ledger(args).rotate_ledger_key(operator=_operator(args)))
    return 0


def cmd_devices_rotate_key(args: argparse.Namespace) -> int:
    _print(_ledger(args).rotate_device_key(device=args.id, public_key=args.public_key, from_seq=args.from_seq,
                                           operator=_operator(args)))
    return 0


def _seq_range(text: str) -> tuple[int, int]:
    """`7` or `7-12`: the seqs a write-off names."""
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seq or a range like 7-12") from None
    return lo, hi


def cmd_devices_write_off(args: argparse.Namespace) -> int:
    lo, hi = args.seqs
    _print(_ledger(args).write_off(device=args.id, from_seq=lo, to_seq=hi, reason=args.reason,
                                   operator=_operator(args)))
    return 0


def cmd_devices_write_offs(args: argparse.Namespace) -> int:
    _print(_ledger(args).write_offs(device=args.id))
    return 0


def cmd_devices_held_back(args: argparse.Namespace) -> int:
    rows = _ledger(args).held_back()
    if args.json:
        _print(rows)
        return 0
    for r in rows:
        gap = f"{r['missing_from']}" + (f"-{r['missing_to']}" if r["missing_to"] > r["missing_from"] else "")
        print(f"{r['device']:<22} acked {r['acked']:>8}  missing {gap:<15} {r['ledgered_above']:>6} ledgered above  "
              f"(see `cityledger quarantine list --device {r['device']}`; settle: `cityledger devices write-off "
              f"{r['device']} --seqs {gap} --reason ...`)")
    return 0


def cmd_devices_assign(args: argparse.Namespace) -> int:
    _print(_ledger(args).assign_account(device=args.id, account=None if args.none else args.account,
                                        operator=_operator(args)))
    return 0


def cmd_devices_keys(args: argparse.Namespace) -> int:
    _print(_ledger(args).device_key_history(device=args.id))
    return 0


def cmd_witnesses_reports(args: argparse.Namespace) -> int:
    rows = _ledger(args).witness_reports(kind=args.kind)
    if args.json:
        _print(rows)
    else:
        for r in rows:
            print(f"{r['received_at']}  {r['witness']:<16} {r['kind']:<6} {r['body']}")
        print(f"{len(rows)} reports")
    return 0


def _when(text: str | None) -> int | None:
    """An ISO date/time in the city's time zone, or epoch ms, as epoch ms."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    import datetime as dt
    from zoneinfo import ZoneInfo

    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(configured_timezone()))
    return int(when.timestamp() * 1000)


def _password(args: argparse.Namespace) -> str | None:
    """A password from --password-file (never from the command line, where `ps` would show it)."""
    if not getattr(args, "password_file", None):
        return None
    return Path(args.password_file).read_text().strip()


def cmd_accounts_add(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    out = ledger.add_account(account=args.id, name=args.name, customer_class=args.customer_class,
                             operator=_operator(args))
    password = _password(args)
    if password:
        out["password_set"] = ledger.set_password(role="citizen", principal=args.id, password=password)["password_set"]
    _print(out)
    return 0


def cmd_set_password(role: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        password = _password(args)
        if not password:
            print("give the new password in a file: --password-file FILE", file=sys.stderr)
            return 2
        _print(_ledger(args).set_password(role=role, principal=args.id, password=password))
        return 0

    return run


def cmd_operators_add(args: argparse.Namespace) -> int:
    ledger = _ledger(args)
    out = ledger.add_operator(operator=args.id, name=args.name or args.id, districts=args.districts)
    password = _password(args)
    if password:
        out["password_set"] = ledger.set_password(role="operator", principal=args.id, password=password)["password_set"]
    _print(out)
    return 0


def cmd_operators_list(args: argparse.Namespace) -> int:
    _print(_ledger(args).operators())
    return 0


def cmd_accounts_list(args: argparse.Namespace) -> int:
    rows = _ledger(args).accounts()
    if args.json:
        _print(rows)
        return 0
    for a in rows:
        print(f"{a['account']:<20} {a['customer_class']:<16} {a['devices']:>3} meters  {a['name']}")
    print(f"{len(rows)} accounts")
    return 0


def cmd_tariffs_show(args: argparse.Namespace) -> int:
    t = _ledger(args).tariffs()
    print(f"# tariff version {t['version']}")
    print(t["source"], end="")
    return 0


def cmd_tariffs_load(args: argparse.Namespace) -> int:
    _print(_ledger(args).load_tariffs(source=Path(args.file).read_text(), operator=_operator(args)))
    return 0


def cmd_parking_zone(args: argparse.Namespace) -> int:
    _print(_ledger(args).set_zone(space=args.space, zone_class=args.zone_class, from_ts=_when(args.since),
                                  operator=_operator(args)))
    return 0


def cmd_parking_lease(args: argparse.Namespace) -> int:
    _print(_ledger(args).lease(space=args.space, account=args.account, from_ts=_when(args.since),
                               operator=_operator(args)))
    return 0


def cmd_parking_checkin(args: argparse.Namespace) -> int:
    _print(_ledger(args).checkin(space=args.space, account=args.account, at=_when(args.at), operator=_operator(args)))
    return 0


def cmd_parking_unpaid(args: argparse.Namespace) -> int:
    _print(_ledger(args).unpaid_stays(month=args.month))
    return 0


def cmd_meters_replace(args: argparse.Namespace) -> int:
    _print(_ledger(args).record_replacement(device=args.device, ts=_when(args.at), old_final=args.old_final,
                                            new_initial=args.new_initial, operator=_operator(args)))
    return 0


def cmd_adjust(args: argparse.Namespace) -> int:
    out = _ledger(args).adjust(account=args.account, amount=args.amount, reason=args.reason, operator=_operator(args))
    _print(out)
    if out["status"] == "pending":
        print(f"{out['amount']} is above the approval limit of {out['limit']}: another operator must approve it "
              f"(`cityledger adjustments approve {out['id']}`)", file=sys.stderr)
    return 0


def cmd_adjustments_list(args: argparse.Namespace) -> int:
    _print(_ledger(args).adjustment_requests(status=None if args.status == "all" else args.status))
    return 0


def cmd_adjustments_decide(approve: bool) -> Handler:
    def run(args: argparse.Namespace) -> int:
        _print(_ledger(args).decide_adjustment(id=args.id, operator=_operator(args), approve=approve,
                                               note=args.note or ""))
        return 0
    return run


def cmd_adjustments_limit(args: argparse.Namespace) -> int:
    api = _ledger(args)
    _print(api.set_adjustment_limit(amount=args.amount, operator=_operator(args)) if args.amount
           else {"limit": api.adjustment_limit()})
    return 0


def cmd_bill(args: argparse.Namespace) -> int:
    bill = _ledger(args).bill(account=args.account, month=args.month)
    if args.json:
        _print(bill)
        return 0
    print(f"{bill['name']} ({bill['account']}), {bill['month']}: {bill['status']}, total {bill['total']} yuan")
    for line in bill["lines"]:
        if line["type"] == "utility":
            print(f"  {line['kind']:<12} {line['device']:<18} {line['consumption']:>12} {line['unit']:<4}"
                  f" {line['amount']:>10}")
            for t in line["tiers"]:
                print(f"      tier {t['tier']}: {t['quantity']} {t['unit']} x {t['price']} = {t['amount']}")
        elif line["type"] == "parking":
            print(f"  parking      {line['device']:<18} {len(line['sessions']):>4} stays{'':>9} {line['amount']:>10}")
        else:
            print(f"  adjustment   {line['reason'][:40]:<40} {line['amount']:>10}")
        for flag in line.get("flags", []):
            print(f"      ! {flag}")
    return 0


def cmd_billing_close(args: argparse.Namespace) -> int:
    from ledger.service.progress import ProgressBar

    bar = ProgressBar("close", stream=sys.stderr)
    result = _ledger(args).close_month(month=args.month, progress=bar.update)
    bar.close()
    _print(result)
    return 0


def cmd_anomalies_scan(args: argparse.Namespace) -> int:
    _print(_ledger(args).scan_anomalies(lookback_days=args.days))
    return 0


def _anomaly_line(a: dict[str, Any]) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp((a["window_end"] or a["raised_at"]) / 1000, dt.timezone.utc).strftime("%m-%d %H:%M")
    return (f"{a['id']:<14} {a['status']:<12} {a['type']:<17} {a['severity'] or '-':<7} {a['device']:<20} "
            f"{a['district']:<6} {when}  {a['detail'] or ''}")


def cmd_anomalies_list(args: argparse.Namespace) -> int:
    rows = _ledger(args).anomalies(status=args.status, type=args.type, district=args.district)
    if args.json:
        _print(rows)
        return 0
    for a in rows:
        print(_anomaly_line(a))
    print(f"{len(rows)} anomalies")
    return 0


def cmd_anomalies_show(args: argparse.Namespace) -> int:
    _print(_ledger(args).anomaly(anomaly_id=args.id))
    return 0


def _operator(args: argparse.Namespace) -> str:
    """Who runs this command: every action reaching the ledger is sealed under an operator's id."""
    import getpass

    return args.operator or os.environ.get("CITYLEDGER_OPERATOR") or getpass.getuser()


def _operator_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operator", help="your operator id, sealed with the action (env CITYLEDGER_OPERATOR; "
                   "default: your login name)")


def cmd_anomalies_act(status: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        a = _ledger(args).act_on_anomaly(anomaly_id=args.id, status=status, operator=_operator(args),
                                         note=getattr(args, "note", None))
        print(_anomaly_line(a))
        return 0

    return run


def cmd_witnesses_add(args: argparse.Namespace) -> int:
    _print(_ledger(args).add_witness(name=args.name))
    return 0


def cmd_witness(args: argparse.Namespace) -> int:
    from ledger.witnesses.follower import run_witness

    password = open(args.password_file).read().strip() if args.password_file else os.environ.get(
        "CITYLEDGER_WITNESS_PASSWORD", "")
    if not password:
        print("a witness needs its broker password: --password-file FILE or CITYLEDGER_WITNESS_PASSWORD",
              file=sys.stderr)
        return 2
    from ledger.chain.protocol import ChainTopics

    return run_witness(Path(args.store), host=args.mqtt_host, port=args.mqtt_port, name=args.name,
                       password=password, ledger_key=args.ledger_key, stop=_stop_on_signals(), tls=_tls(args),
                       chain=ChainTopics(args.district))


def cmd_status(args: argparse.Namespace) -> int:
    status = _ledger(args).status()
    if args.json:
        _print(status)
    else:
        for key in ("ledger_key", "height", "last_block_hash", "blocks", "readings", "quarantined",
                    "quarantine_dropped", "duplicates", "devices"):
            print(f"{key:>16}: {status[key]}")
        ingest = status["ingest"]
        if ingest["running"]:
            print(f"{'ingest':>16}: lag {ingest['lag_ms'] / 1000:.1f} s, last seal at {ingest['last_seal_at']}, "
                  f"{ingest['pending']} waiting, {ingest['workers']} workers")
        else:
            print(f"{'ingest':>16}: not running")
        for name, job in status["jobs"].items():
            if job["failing"]:
                print(f"{'job failing':>16}: {name}, {job['failures']} in a row: {job['last_error']}")
        from ledger.service.supervision import describe_restarts

        if restarts := describe_restarts(status.get("supervisor") or {}):  # parts `cityledger up` restarted
            print(f"{'restarts':>16}: {restarts}")
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    rows = _ledger(args).quarantine(reason=args.reason, device=args.device, limit=args.limit)
    if args.json:
        _print(rows)
        return 0
    for r in rows:
        print(f"{r['received_at']}  {r['reason']:<17} {r['topic']}  {r['detail']}")
    print(f"{len(rows)} entries")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from ledger.service.progress import ProgressBar

    bar = None if args.json else ProgressBar("archive", stream=sys.stderr)
    result = _ledger(args).archive(out=str(Path(args.out).resolve()), upto_height=args.upto_height,
                                   progress=bar.update if bar else None)
    if bar:
        bar.close()
    written = result["segments_written"]
    if args.json:
        _print(result)
    elif written:
        print(f"archived blocks {result['first_height']}..{result['last_height']} in {written} "
              f"new segment{'s' if written > 1 else ''} ({result['readings']} readings, {result['entries']} "
              f"entries, {result['bytes'] / 1e6:.1f} MB) to {result['archive']} in {result['seconds']:.2f} s")
    else:
        held = f"blocks up to {result['last_height']}" if result["last_height"] is not None else "no blocks"
        print(f"archive up to date: {result['archive']} holds {held}")
    return 0


def cmd_verify_archive(args: argparse.Namespace) -> int:
    """`verify --archive DIR`: the audit over the Parquet files, reaching the live ledger only for its link."""
    from ledger.store.archive import verify_archive
    from ledger.service.progress import ProgressBar

    if args.witness:
        print("--witness compares the live ledger; it does not go with --archive", file=sys.stderr)
        return 2
    home = _home(args)
    first_key = home.trusted_key.read_text().strip() if home.trusted_key.exists() else None
    bar = None if args.json else ProgressBar("verify", stream=sys.stderr)
    report = verify_archive(Path(args.archive).resolve(), live=_ledger(args), ledger_key=args.ledger_key,
                            first_key=first_key, deep=args.deep, progress=bar.update if bar else None)
    if bar:
        bar.close()
    if args.json:
        _print(report)
    else:
        _print_archive_report(report)
    return 0 if report["ok"] else 1


def _print_archive_report(report: dict[str, Any]) -> None:
    state = "intact" if report["ok"] else "FAILED"
    rate = report["readings"] / report["seconds"] if report["seconds"] else 0
    span = f" (heights {report['first_height']}..{report['last_height']})" if report["last_height"] is not None else ""
    print(f"archive {state}: {report['blocks']} blocks{span}, {report['readings']} readings, {report['entries']} "
          f"entries in {report['seconds']:.2f} s ({rate:,.0f} readings/s, "
          f"{'deep' if report['deep'] else 'structural'})")
    print(f"{report['files_checked']} files in {report['segments']} segment(s) checked against the manifest")
    for problem in report["file_failures"]:
        print(f"file failure: {problem}")
    if report["failure"]:
        print(f"first failure: {report['failure']}")
    link = report["link"]
    lead = "linked to the live ledger: " if link["ok"] else "NOT linked to the live ledger: " if link["checked"] else ""
    print(lead + link["detail"])


def cmd_verify(args: argparse.Namespace) -> int:
    from ledger.service.progress import ProgressBar

    if args.archive:
        return cmd_verify_archive(args)
    if args.districts:
        return cmd_verify_districts(args)
    bar = None if args.json else ProgressBar("verify", stream=sys.stderr)
    report = _ledger(args).verify(deep=args.deep, ledger_key=args.ledger_key,
                                  witness=str(Path(args.witness).resolve()) if args.witness else None,
                                  progress=bar.update if bar else None)
    if bar:
        bar.close()
    if args.json:
        _print(report)
    else:
        state = "intact" if report["ok"] else "FAILED"
        rate = report["readings"] / report["seconds"] if report["seconds"] else 0
        print(f"ledger {state}: {report['blocks']} blocks, {report['readings']} readings, "
              f"{report['entries']} entries in {report['seconds']:.2f} s ({rate:,.0f} readings/s, "
              f"{'deep' if report['deep'] else 'structural'})")
        if "witness_blocks" in report:
            print(f"compared with {report['witness_blocks']} blocks held by the witness")
        _print_registry(report)
        if report["failure"] and (report["failed_block"] is not None or not report.get("disagreements")):
            print(f"first failure: {report['failure']}")
    return 0 if report["ok"] else 1


def _print_registry(report: dict[str, Any]) -> None:
    """--deep: whether the registry tables say what the chain says, and every place they do not."""
    if not report.get("registry_checked"):
        if report.get("deep") and report["failure"]:
            print("registry tables not compared: the chain fails first")
        return
    found = report.get("disagreements_found", 0)
    if not found:
        print("registry tables agree with the chain")
        return
    print(f"registry tables disagree with the chain in {found} place(s):")
    for d in report["disagreements"]:
        print(f"  {d['text']}")
    if found > len(report["disagreements"]):
        print(f"  ... and {found - len(report['disagreements'])} more")


def cmd_verify_districts(args: argparse.Namespace) -> int:
    from ledger.service.cityaudit import verify_city
    from ledger.service.progress import ProgressBar

    bars: dict[str, ProgressBar] = {}

    def progress(chain: str, done: int, total: int) -> None:
        if chain not in bars:
            for bar in bars.values():
                bar.close()
            bars[chain] = ProgressBar(f"verify {chain}", stream=sys.stderr)
        bars[chain].update(done, total)

    report = verify_city(_home(args), deep=args.deep, ledger_key=args.ledger_key,
                         progress=None if args.json else progress)
    for bar in bars.values():
        bar.close()
    if args.json:
        _print(report)
        return 0 if report["ok"] else 1
    for name, chain in [("city", report["city"]), *sorted(report["districts"].items())]:
        state = "intact" if chain["ok"] else "FAILED"
        height = chain.get("anchored_height")
        anchored = f", anchored up to height {height}" if height is not None else ""
        print(f"{name:<12} {state}: {chain['blocks']} blocks, {chain['readings']} readings{anchored}")
    print(f"anchors: {report['anchors']} district heads in the city chain, "
          + ("all held by their district chains" if report["anchor_failure"] is None else "NOT all held"))
    print(f"city {'intact' if report['ok'] else 'FAILED'}: {report['blocks']} blocks, {report['readings']} readings "
          f"in {report['seconds']:.2f} s ({'deep' if report['deep'] else 'structural'})")
    if report["failure"]:
        print(f"first failure: {report['failure']}")
    return 0 if report["ok"] else 1


# ---------------------------------------------------------------- plumbing


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _broker_tls_options(p: argparse.ArgumentParser) -> None:
    """The broker's TLS listener, for `broker` and `up` alike."""
    p.add_argument("--tls", action="store_true",
                   default=os.environ.get("CITYLEDGER_TLS", "").lower() not in ("", "0", "false", "no"),
                   help="also listen for MQTT over TLS (`up`: every part connects over TLS) (env CITYLEDGER_TLS)")
    _opt(p, "--tls-port", 8883, "TLS listener port")
    _opt(p, "--tls-cert", "", "your own broker certificate, with --tls-key and --tls-ca (default: made in HOME/tls)")
    _opt(p, "--tls-key", "", "the private key of --tls-cert")
    _opt(p, "--tls-ca", "", "the CA that signed --tls-cert; clients are given it")
    _opt(p, "--tls-hosts", "", "comma-separated extra host names or addresses for the generated certificate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityledger", description=__doc__.splitlines()[0], parents=[_common()])
    common = _common(suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help: str, parent: Any = sub, *,
            json: bool = False) -> argparse.ArgumentParser:
        """A command; `json` gives it the one `--json` flag (its result as JSON on standard output)."""
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        if json:
            p.add_argument("--json", action="store_true", help="print the result as JSON on standard output")
        return p

    add("init", cmd_init, "create the home, the ledger key, the schema and genesis (idempotent)")
    _broker_tls_options(add("broker", cmd_broker, "run the project's Mosquitto in the foreground"))
    p = add("ingest", cmd_ingest, "verify readings from the broker and seal them into blocks")
    _opt(p, "--block-readings", 5000, "seal a block at this many messages")
    _opt(p, "--block-seconds", 1.0, "or when the oldest pending message is this old")
    _opt(p, "--quarantine-cap", 1000, "quarantine entries stored per device and hour (the rest only counted)")
    _opt(p, "--workers", "auto", "screening processes on one MQTT 5 shared subscription (auto: one per core; "
         "0: screen in this process)")
    p = add("anchor", cmd_anchor, "on a city of district chains: seal every district's head into the city chain")
    _opt(p, "--every", 5.0, "seconds between anchors (a city block when any district head moved)")
    ds = add("districts", lambda a: 2, "a city of district chains: each district seals its own (docs/scaling.md)")
    dssub = ds.add_subparsers(dest="districts_command", required=True, metavar="ACTION")
    p = add("add", cmd_districts_add, "open a district's chain in HOME/districts/DISTRICT (city home, no devices)",
            dssub, json=True)
    p.add_argument("district")
    _operator_option(p)
    p = add("list", cmd_districts_list, "the district chains, and how far the city chain anchors each",
            dssub, json=True)
    p = add("fleet", cmd_fleet, "run a fleet of simulated devices (keys provisioned on first run)")
    _opt(p, "--devices", 40, "number of devices")
    _opt(p, "--interval", 5.0, "seconds between readings")
    _opt(p, "--districts", "d01,d02,d03", "comma-separated districts")
    _opt(p, "--seed", 0, "simulation seed")
    _opt(p, "--faults", "", "inject faults, e.g. leak=0.02,dead=0.01,horizon=2h (docs/anomalies.md)")
    p = add("dashboard", cmd_dashboard, "serve the Streamlit dashboard")
    _opt(p, "--port", 8501, "HTTP port")
    p = add("scheduler", cmd_scheduler, "run periodic jobs (audit)")
    _opt(p, "--audit-minutes", 10.0, "minutes between audits")
    p = add("up", cmd_up, "install nothing, start everything: broker, ingest, fleet, scheduler, dashboard")
    _opt(p, "--devices", 40, "simulated devices")
    _opt(p, "--interval", 5.0, "seconds between readings")
    _opt(p, "--dashboard-port", 8501, "dashboard HTTP port")
    _broker_tls_options(p)
    p = add("systemd-units", cmd_systemd_units, "for a server: write a systemd unit per long-running part "
            "(Restart=on-failure, hardened) and cityledger.target into DIR (docs/reliability.md)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the unit files to")
    p.add_argument("--user", help="the user the parts run as (default: the owner of the home)")
    p.add_argument("--group", help="their group (default: the user's)")
    p.add_argument("--parts", default="broker,ingest,scheduler,dashboard",
                   help="comma-separated parts among broker, ingest, fleet (simulated devices), scheduler, dashboard")
    p.add_argument("--prefix", default="cityledger", help="unit names: PREFIX-PART.service and PREFIX.target")
    _opt(p, "--dashboard-port", 8501, "dashboard HTTP port")
    _opt(p, "--devices", 40, "with the fleet part: simulated devices")
    _opt(p, "--interval", 5.0, "with the fleet part: seconds between readings")

    p = add("bench", cmd_bench, "measure sustained readings/s, ack latency and CPU per reading on this machine "
            "(on a temporary home, or --home naming an empty directory)", json=True)
    _opt(p, "--seconds", 60.0, "measured seconds of load, after a warm-up of up to 5 s")
    _opt(p, "--devices", 1000, "simulated devices, one broker connection each")
    _opt(p, "--window", 0, "unacknowledged readings per device (0: about two blocks in flight in all)")
    p.add_argument("--workers", type=int, help="run ingest with --workers W (default: ingest's own default)")
    p.add_argument("--districts", type=int, default=0, help="a city of N district chains (N >= 2): one ingest per "
                   "district (--workers each) and the city's anchor (default 0: one chain)")
    _opt(p, "--block-readings", 5000, "ingest seals a block at this many messages")
    _opt(p, "--block-seconds", 1.0, "or when the oldest pending message is this old")
    p.add_argument("--job", action="append", default=[], metavar="JOB",
                   help="measure sealing while a job runs over and over, --seconds each after a baseline: audit, "
                   "deep-audit, scan, roll-up, close, sign-in, or all (repeat or comma-separate; bench/jobs.py)")
    _opt(p, "--history-devices", 1000, "with --job: meters whose history the ledger holds before the load starts")
    _opt(p, "--history-days", 21.0, "with --job: days of 15-minute readings in that history")
    _opt(p, "--extra-accounts", 0, "with --job: accounts without meters, more bills for the close to issue")

    devices = add("devices", lambda a: 2, "enrol, revoke and list devices")
    dsub = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    p = add("enroll", cmd_devices_enroll, "enrol a device whose key was made on the device", dsub)
    p.add_argument("--id", required=True)
    p.add_argument("--kind", required=True, choices=["water", "gas", "electricity", "parking"])
    p.add_argument("--district", required=True)
    p.add_argument("--public-key", required=True, help="hex Ed25519 public key")
    p.add_argument("--account")
    _operator_option(p)
    p = add("provision", cmd_devices_provision,
            "for a device without its own key store: make its key and broker login into a bundle DIR", dsub)
    p.add_argument("--id", required=True)
    p.add_argument("--kind", required=True, choices=["water", "gas", "electricity", "parking"])
    p.add_argument("--district", required=True)
    p.add_argument("--account")
    p.add_argument("--out", required=True, help="bundle directory to create (private key, login, settings)")
    _operator_option(p)
    p = add("revoke", cmd_devices_revoke, "revoke a device: broker login removed, readings refused", dsub)
    p.add_argument("id")
    _operator_option(p)
    p = add("rotate-key", cmd_devices_rotate_key, "give a device a new key from a seq on; earlier readings "
            "stay verifiable", dsub)
    p.add_argument("id")
    p.add_argument("--public-key", required=True, help="hex Ed25519 public key made on the device")
    p.add_argument("--from-seq", type=int, required=True,
                   help="the first seq the new key signs, as the device reports it (its next seq)")
    _operator_option(p)
    p = add("write-off", cmd_devices_write_off, "settle seqs that will never be ledgered: the device's ack "
            "passes them and it drops them", dsub)
    p.add_argument("id")
    p.add_argument("--seqs", type=_seq_range, required=True, metavar="FIRST[-LAST]")
    p.add_argument("--reason", required=True)
    _operator_option(p)
    p = add("held-back", cmd_devices_held_back, "devices whose ack a missing reading holds back", dsub, json=True)
    p = add("write-offs", cmd_devices_write_offs, "seqs written off, of one device or all", dsub)
    p.add_argument("id", nargs="?")
    p = add("assign", cmd_devices_assign, "bind a meter to an account (a household moves in), or unbind it", dsub)
    p.add_argument("id")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--account")
    who.add_argument("--none", action="store_true", help="unbind: nobody is billed for it from now on")
    _operator_option(p)
    p = add("keys", cmd_devices_keys, "a device's key history", dsub)
    p.add_argument("id")
    p = add("reset-password", cmd_devices_reset_password, "issue a new broker password (shown once)", dsub)
    p.add_argument("id")
    p = add("flagged", cmd_devices_flagged, "devices sending many rejected messages (hostile or broken)",
            dsub, json=True)
    p.add_argument("--minutes", type=int, default=60, help="look back this far")
    p.add_argument("--threshold", type=int, default=60, help="rejects per minute that flag a device")
    p = add("policy", cmd_devices_policy, "the per-device message budget, and when a device over it is "
            "suspended (sealed in the chain); no option: show it", dsub)
    p.add_argument("--rate", type=float, help="messages a second a device may send, sustained")
    p.add_argument("--burst", type=float, help="messages a device may send at once")
    p.add_argument("--suspend-after", type=float, metavar="MIN", help="minutes over budget before suspension")
    p.add_argument("--suspend-for", type=float, metavar="MIN", help="minutes a suspension lasts")
    _operator_option(p)
    p = add("reinstate", cmd_devices_reinstate, "end a device's suspension now (it ends by itself when due)", dsub)
    p.add_argument("id")
    _operator_option(p)
    p = add("list", cmd_devices_list, "list enrolled devices", dsub, json=True)

    w = add("witnesses", lambda a: 2, "logins for outside parties that follow the header stream")
    wsub = w.add_subparsers(dest="witnesses_command", required=True, metavar="ACTION")
    p = add("add", cmd_witnesses_add, "create a witness login (password shown once)", wsub)
    p.add_argument("name")
    p = add("reports", cmd_witnesses_reports, "what witnesses reported: alarms and the heads they hold",
            wsub, json=True)
    p.add_argument("--kind", choices=["alarm", "head"])
    p = add("witness", cmd_witness, "follow the ledger's headers, keep them, alarm on fork, rollback or bad signature")
    p.add_argument("--store", required=True, help="directory where this witness keeps what it accepted")
    _opt(p, "--name", "witness", "this witness's broker login")
    p.add_argument("--password-file", help="file holding the witness's broker password")
    p.add_argument("--ledger-key", help="hex ledger key to trust (required on first run)")
    p.add_argument("--district", help="follow this district's chain instead of the city's (its first key: "
                   "`cityledger districts list`)")

    a = add("accounts", lambda a: 2, "households and businesses that own meters")
    asub = a.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    p = add("add", cmd_accounts_add, "open an account", asub)
    p.add_argument("--id", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--class", dest="customer_class", default="residential", choices=["residential", "non-residential"])
    p.add_argument("--password-file", help="file holding the account's dashboard password")
    _operator_option(p)
    p = add("set-password", cmd_set_password("citizen"), "set or reset an account's dashboard password", asub)
    p.add_argument("id")
    p.add_argument("--password-file", required=True)
    p = add("list", cmd_accounts_list, "list accounts", asub, json=True)

    o = add("operators", lambda a: 2, "people who run the city: scoped to districts")
    osub = o.add_subparsers(dest="operators_command", required=True, metavar="ACTION")
    p = add("add", cmd_operators_add, "add an operator for some districts, or all", osub)
    p.add_argument("--id", required=True)
    p.add_argument("--name")
    p.add_argument("--districts", required=True, help="d01,d02 or all")
    p.add_argument("--password-file", help="file holding the operator's dashboard password")
    p = add("set-password", cmd_set_password("operator"), "set or reset an operator's password", osub)
    p.add_argument("id")
    p.add_argument("--password-file", required=True)
    add("list", cmd_operators_list, "list operators", osub)

    t = add("tariffs", lambda a: 2, "the prices bills are computed with")
    tsub = t.add_subparsers(dest="tariffs_command", required=True, metavar="ACTION")
    add("show", cmd_tariffs_show, "print the tariff file in force", tsub)
    p = add("load", cmd_tariffs_load, "load an edited tariff file as a new version", tsub)
    p.add_argument("file")
    _operator_option(p)

    pk = add("parking", lambda a: 2, "parking spaces: zones, leases, check-ins")
    psub = pk.add_subparsers(dest="parking_command", required=True, metavar="ACTION")
    p = add("zone", cmd_parking_zone, "set a space's zone class (from now, or --since)", psub)
    p.add_argument("--space", required=True)
    p.add_argument("--class", dest="zone_class", type=int, required=True, choices=[1, 2, 3])
    p.add_argument("--since", help="ISO time in the city's time zone, or epoch ms")
    _operator_option(p)
    p = add("lease", cmd_parking_lease, "lease a space to an account (from now, or --since)", psub)
    p.add_argument("--space", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--since")
    _operator_option(p)
    p = add("checkin", cmd_parking_checkin, "an account takes responsibility for the current stay", psub)
    p.add_argument("--space", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--at")
    _operator_option(p)
    p = add("unpaid", cmd_parking_unpaid, "stays in a month that nobody pays for", psub)
    p.add_argument("--month", required=True)

    m = add("meters", lambda a: 2, "meter records kept by operators")
    msub = m.add_subparsers(dest="meters_command", required=True, metavar="ACTION")
    p = add("replace", cmd_meters_replace, "record a meter replacement (the register's jump)", msub)
    p.add_argument("--device", required=True)
    p.add_argument("--at", required=True, help="ISO time in the city's time zone, or epoch ms")
    p.add_argument("--old-final", type=int, required=True, help="the old register's last value")
    p.add_argument("--new-initial", type=int, required=True, help="the new register's first value")
    _operator_option(p)

    p = add("adjust", cmd_adjust, "append a refund, credit or re-bill; it shows on the next bill (above the "
            "approval limit, once a second operator approves it)")
    p.add_argument("--account", required=True)
    p.add_argument("--amount", required=True, help="yuan to the fen, e.g. -12.50 for a refund (no exponent)")
    p.add_argument("--reason", required=True)
    _operator_option(p)
    adj = add("adjustments", lambda a: 2, "adjustments waiting for a second operator (four eyes), and the limit")
    adjsub = adj.add_subparsers(dest="adjustments_command", required=True, metavar="ACTION")
    p = add("list", cmd_adjustments_list, "requested adjustments (pending by default)", adjsub)
    p.add_argument("--status", default="pending", choices=["pending", "approved", "rejected", "all"])
    for action, approve, what in (("approve", True, "approve a requested adjustment: it is sealed now"),
                                  ("reject", False, "reject (or, as its requester, withdraw) a requested adjustment")):
        p = add(action, cmd_adjustments_decide(approve), what, adjsub)
        p.add_argument("id")
        p.add_argument("--note", help="why (kept in the ledger)")
        _operator_option(p)
    p = add("limit", cmd_adjustments_limit, "the amount above which an adjustment needs approval; with AMOUNT, "
            "set it (sealed)", adjsub)
    p.add_argument("amount", nargs="?")
    _operator_option(p)

    p = add("bill", cmd_bill, "an account's bill for a month (issued, or as it stands)", json=True)
    p.add_argument("account")
    p.add_argument("--month", required=True, help="YYYY-MM")
    b = add("billing", lambda a: 2, "month-end close")
    bsub = b.add_subparsers(dest="billing_command", required=True, metavar="ACTION")
    p = add("close", cmd_billing_close, "issue every account's bill for a month (again: nothing new)", bsub)
    p.add_argument("--month", required=True, help="YYYY-MM")

    an = add("anomalies", lambda a: 2, "leaks, tampering, dead devices, hostile traffic: find and investigate")
    ansub = an.add_subparsers(dest="anomalies_command", required=True, metavar="ACTION")
    p = add("scan", cmd_anomalies_scan, "run every detector now", ansub)
    p.add_argument("--days", type=int, default=14, help="how far back the detectors look")
    p = add("list", cmd_anomalies_list, "anomalies, most recently changed first", ansub, json=True)
    p.add_argument("--status", choices=["open", "acknowledged", "resolved", "dismissed"])
    p.add_argument("--type")
    p.add_argument("--district")
    p = add("show", cmd_anomalies_show, "one anomaly with its evidence and history", ansub)
    p.add_argument("id")
    for action, status, needs_note in (("ack", "acknowledged", False), ("resolve", "resolved", True),
                                       ("dismiss", "dismissed", True)):
        p = add(action, cmd_anomalies_act(status), f"mark an anomaly {status}", ansub)
        p.add_argument("id")
        p.add_argument("--note", required=needs_note, help="what was found or done")
        _operator_option(p)

    p = add("status", cmd_status, "ledger counters and head", json=True)

    q = add("quarantine", lambda a: 2, "rejected messages")
    qsub = q.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    p = add("list", cmd_quarantine_list, "list quarantined messages, newest first", qsub, json=True)
    p.add_argument("--reason")
    p.add_argument("--device")
    p.add_argument("--limit", type=int, default=100)

    p = add("verify", cmd_verify, "recompute leaves, roots, links and signatures; exit 1 at the first failure",
            json=True)
    p.add_argument("--deep", action="store_true", help="also check every device signature")
    p.add_argument("--ledger-key", help="hex first ledger public key to trust (default: the home's first key)")
    p.add_argument("--witness", metavar="DIR", help="also compare with the headers a witness kept in DIR")
    p.add_argument("--archive", metavar="DIR",
                   help="verify the Parquet archive in DIR instead (files, chain, and its link to the live ledger)")
    p.add_argument("--districts", action="store_true",
                   help="on a city home: also every district chain, from the keys the city chain names, and the anchors")
    p = add("archive", cmd_archive,
            "append sealed blocks not yet in DIR to its Parquet archive (docs/verifying.md)", json=True)
    p.add_argument("--out", required=True, metavar="DIR", help="archive directory (created if need be)")
    p.add_argument("--upto-height", type=int, metavar="H", help="archive blocks up to H only (default: all sealed)")

    p = add("receipt", cmd_receipt, "print the receipt proving a reading is in the ledger (PROTOCOL.md section 5)")
    p.add_argument("device")
    p.add_argument("seq", type=int)
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument("--anchored", action="store_true", help="from a district's home: with the city anchor covering it, "
                   "so that it verifies against the city's key")
    p = add("verify-receipt", cmd_verify_receipt, "check a receipt offline: device signature, inclusion, block "
            "signature (and, for an anchored receipt, the link to the city's anchor)", json=True)
    p.add_argument("file", help="receipt JSON file, or - for standard input")
    p.add_argument("--ledger-key", required=True, help="hex ledger public key you trust (the city's, for an anchored "
                   "receipt)")
    p.add_argument("--key-chain", help="file from `cityledger key-chain`, when the ledger key has rotated since")
    p = add("key-chain", cmd_key_chain, "the signed headers that rotate the ledger key, oldest first")
    p = add("rotate-ledger-key", cmd_rotate_ledger_key,
            "hand block signing to a new ledger key, announced by the old one")
    _operator_option(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever a command or a library creates (DuckDB's file and WAL, SQLite outboxes, logs,
    # the broker's files, since its process inherits this) is its owner's alone.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from ledger.errors import LedgerError

    try:
        return int(args.handler(args))
    except (LedgerError, FileNotFoundError, ValueError, KeyError, LookupError) as exc:
        print(f"cityledger: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
