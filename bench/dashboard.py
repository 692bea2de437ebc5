"""Every dashboard page against a year of 15-minute readings from 10,000 devices (the dashboard issue).

    .venv/bin/python -m bench.dashboard --devices 10000 --days 365 --home /tmp/bench-dashboard

Fabricates a city straight into DuckDB with SQL (as bench/close.py does): households with a
water, an electricity and a gas meter, parking spaces (a third of them leased), a reading
from every device every 15 minutes up to now, in arrival order, in blocks of half the fleet;
device statuses, quarantined messages, anomalies, disputes and issued bills for every past
month. Readings carry placeholder signatures (64 zero bytes) and blocks placeholder roots:
no page checks a signature except Proof, whose receipt therefore fails at the device
signature step, after the same work as a real one.

The ledger's writer keeps no log files here (`LedgerWriter.open(home, log_files=False)`): the
tiles and entry bundles of 350 million readings would be about 70 GB. The first open of a fresh
fabrication still replays every leaf into the log's edge (issue 18's migration): about 20
minutes on this machine, once.

Then it serves the ledger the way ingest does (the API over the Unix socket, one DuckDB
cursor per call) and times, for each page of both roles:
- its data calls, as the page makes them through `dashboard.data` (cache cleared; median of 3);
- a full AppTest run of the page, signed in through the form: cold (cache cleared) and warm.
`--direct` measures without the socket (each call opens the file, as when ingest is down).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from ledger.clock import now_ms
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import people as people_ops
from ledger.service.writer import LedgerWriter
from ledger.store import accounts
from ledger.store.store import Store

STEP = 900_000
DAY = 86_400_000
PASSWORD = "bench password 10k"
APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


# ---------------------------------------------------------------- the fabricated city


def fabricate(home: Home, devices: int, days: int, end: int) -> dict[str, Any]:
    households = round(devices * 0.85 / 3)
    spaces = devices - 3 * households
    steps = days * 96
    t0 = end - steps * STEP
    half = (devices + 1) // 2
    con = duckdb.connect(str(home.database), config={"memory_limit": os.environ.get("BENCH_MEMORY", "8GB")})
    started = time.perf_counter()
    try:
        base = con.execute("SELECT max(height) + 1 FROM blocks").fetchone()[0]  # after genesis and the tariffs
        con.execute("BEGIN TRANSACTION")
        con.execute(
            """INSERT INTO accounts SELECT 'hh-' || lpad(i::VARCHAR, 7, '0'), 'Household ' || i,
                       CASE WHEN i % 20 = 19 THEN 'non-residential' ELSE 'residential' END, ? FROM range(?) t(i)""",
            [t0, households],
        )
        con.execute(
            """CREATE TEMP TABLE devs AS
            SELECT k.prefix || '-d0' || (i % 3 + 1) || '-' || lpad(i::VARCHAR, 6, '0') AS device, k.kind,
                   'd0' || (i % 3 + 1) AS district, 'hh-' || lpad(i::VARCHAR, 7, '0') AS account, k.rate
            FROM range(?) t(i), (VALUES ('wm', 'water', 5), ('em', 'electricity', 50), ('gm', 'gas', 5)) k(prefix, kind, rate)
            UNION ALL
            SELECT 'ps-d0' || (i % 3 + 1) || '-' || lpad(i::VARCHAR, 6, '0'), 'parking', 'd0' || (i % 3 + 1), NULL, 1
            FROM range(?) t(i)""",
            [households, spaces],
        )
        con.execute(
            "CREATE TEMP TABLE fleet AS SELECT *, (row_number() OVER (ORDER BY device) - 1)::INTEGER AS i FROM devs"
        )
        con.execute(
            """INSERT INTO devices SELECT device, kind, district, account, lpad(lower(hex(i + 1)), 64, '0'),
                       'active', '-', ?, NULL FROM fleet""",
            [t0],
        )
        con.execute(
            "INSERT INTO device_keys (device, public_key, from_height, since)"
            " SELECT device, public_key, 0, ? FROM devices",
            [t0],
        )
        con.execute(
            """INSERT INTO device_status SELECT device, CASE WHEN i % 37 = 0 THEN 'offline' ELSE 'online' END, ?
                       FROM fleet""",
            [end - 3_600_000],
        )
        con.execute(
            """INSERT INTO parking_leases SELECT device, 'hh-' || lpad(((i * 7) % ?)::VARCHAR, 7, '0'), ?
                       FROM fleet WHERE kind = 'parking' AND i % 3 = 0""",
            [households, t0],
        )
        # Blocks: two per 15 minutes (half the fleet each), placeholder roots and signatures.
        con.execute(
            """INSERT INTO blocks SELECT h, sha256('block' || h), sha256('block' || (h - 1)),
                       '{"height":' || h || ',"prev":"' || sha256('block' || (h - 1)) || '","root":"' || sha256('root' || h)
                       || '","sealed_at":' || (? + (h - ?) // 2 * ? + 1000) || ',"size":' || ? || ',"v":1}',
                       repeat('\\x00'::BLOB, 64), ?, ? + (h - ?) // 2 * ? + 1000
                       FROM range(?, ?) t(h)""",
            [t0, base, STEP, half, half, t0, base, STEP, base, base + 2 * steps],
        )
        con.execute("COMMIT")
        chunk = 7 * 96
        for n0 in range(0, steps, chunk):
            n1 = min(steps, n0 + chunk)
            con.execute(f"""INSERT INTO readings
                SELECT {base} + n * 2 + (f.i >= {half})::INT, (f.i % {half})::INTEGER, f.device, f.kind, n + 1, {t0} + n * {STEP},
                       CASE WHEN f.kind = 'parking' THEN ((n + f.i * 7) % 40 < 14)::INT
                            ELSE n * (f.rate * (1 + hash(f.device) % 10)) + hash(f.device || n) % f.rate END,
                       repeat('\\x00'::BLOB, 64), {t0} + n * {STEP} + 500
                FROM range({n0}, {n1}) r(n), fleet f ORDER BY n, f.i""")
            print(
                f"  readings: day {n1 // 96} of {days} ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        con.execute("BEGIN TRANSACTION")
        con.execute(
            """INSERT INTO quarantine SELECT ? - q * 17_280, 'city/' || district || '/' || kind || '/' || device
                       || '/reading', CASE q % 3 WHEN 0 THEN 'bad_signature' WHEN 1 THEN 'malformed' ELSE 'replay' END,
                       device, 'fabricated', ('{"v":1,"junk":"<b>' || q || '</b>"}')::BLOB
                       FROM (SELECT *, row_number() OVER () AS q FROM fleet LIMIT 5000)""",
            [end],
        )
        con.execute("""INSERT INTO reject_counts SELECT coalesce(device, '?'), received_at // 60000, reason, count(*)
                       FROM quarantine GROUP BY ALL""")
        con.execute(
            """INSERT INTO anomalies SELECT 'an-' || lpad(i::VARCHAR, 8, '0'), 'leak:' || device, 'leak', device,
                       account, district, ? FROM fleet WHERE kind = 'water' AND i % 30 = 0""",
            [end - DAY],
        )
        con.execute(
            """INSERT INTO anomaly_events SELECT id, raised_at, 'open', 'detector', NULL, ? , ?, 'medium',
                       '[["' || device || '",' || ? || ']]', 'night flow never below 8 L/h for 3 nights'
                       FROM anomalies""",
            [end - 3 * DAY, end - DAY, steps - 100],
        )
        con.execute(
            """INSERT INTO disputes SELECT 'dsp-' || lpad(i::VARCHAR, 8, '0'), ? - i * 60_000, account, account,
                       'open', 'Meter ' || device, 'The reading looks too high.'
                       FROM fleet WHERE kind = 'electricity' AND i % 50 = 0""",
            [end],
        )
        con.execute("COMMIT")
        issued = _issue_bills(con, households, t0, end)
    finally:
        con.close()
    return {
        "households": households,
        "spaces": spaces,
        "readings": devices * steps,
        "blocks": 2 * steps,
        "t0": t0,
        "issued_months": issued,
        "seconds": round(time.perf_counter() - started),
    }


def _issue_bills(con: duckdb.DuckDBPyConnection, households: int, t0: int, end: int) -> list[str]:
    """Issued bills for every whole month in the data, shaped as the billing code writes them."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    first = dt.datetime.fromtimestamp(t0 / 1000, tz).date().replace(day=1)
    last = dt.datetime.fromtimestamp(end / 1000, tz).date().replace(day=1)
    months, m = [], first
    while True:
        m = (m + dt.timedelta(days=32)).replace(day=1)
        if m >= last:
            break
        months.append(m.strftime("%Y-%m"))
    spaces = dict(con.execute("SELECT account, space FROM parking_leases").fetchall())
    meters = {}
    for device, kind, account in con.execute(
        "SELECT device, kind, account FROM devices WHERE account IS NOT NULL"
    ).fetchall():
        meters.setdefault(account, []).append((device, kind))
    units = {"water": ("m3", "5.00"), "electricity": ("kWh", "0.4883"), "gas": ("m3", "2.61")}
    rows: list[tuple[str, str, int, str, str, str]] = []
    for month in months:
        for a in range(households):
            account = f"hh-{a:07d}"
            lines: list[dict[str, Any]] = []
            for device, kind in meters.get(account, []):
                unit, price = units[kind]
                lines.append(
                    {
                        "type": "utility",
                        "device": device,
                        "kind": kind,
                        "unit": unit,
                        "consumption": "20.000",
                        "used_this_year_before": "60.000",
                        "amount": "100.00",
                        "tariff_from": "2014-05-01",
                        "tiers": [{"tier": 1, "quantity": "20.000", "unit": unit, "price": price, "amount": "100.00"}],
                        "readings": [[device, 1], [device, 2]],
                        "flags": [],
                    }
                )
            if account in spaces:
                stay = {
                    "start": f"{month}-03T08:00+08:00",
                    "end": f"{month}-03T09:40+08:00",
                    "minutes": 100,
                    "zone_class": 2,
                    "readings": [[spaces[account], 1]],
                    "flags": [],
                    "rows": [],
                    "amount": "7.50",
                }
                lines.append(
                    {"type": "parking", "device": spaces[account], "sessions": [stay] * 20, "amount": "150.00"}
                )
            total = f"{100 * len(meters.get(account, [])) + (150 if account in spaces else 0)}.00"
            body = json.dumps(
                {
                    "account": account,
                    "name": f"Household {a}",
                    "customer_class": "residential",
                    "month": month,
                    "currency": "CNY",
                    "timezone": "Asia/Shanghai",
                    "tariff_version": 1,
                    "lines": lines,
                    "total": total,
                    "status": "issued",
                },
                sort_keys=True,
                separators=(",", ":"),
            )
            rows.append((account, month, end, total, body, hashlib.sha256(body.encode()).hexdigest()))
    if not rows:
        return months
    accounts.add_bills(Store(con), rows, height=0)  # the bills table as the close writes it, without blocks
    return months


def logins(home: Home) -> None:
    from ledger.service.writer import LedgerWriter

    w = LedgerWriter.open(home, log_files=False)
    try:
        for op, districts in (("op-all", "all"), ("op-d01", "d01")):
            people_ops.add_operator(w, op, f"Operator {op}", districts)
            people_ops.set_password(w, "operator", op, PASSWORD)
        people_ops.set_password(w, "citizen", "hh-0000042", PASSWORD)
    finally:
        w.close()


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], runs: int = 3, cold: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(runs):
        if cold:
            cold()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def data_calls(home: Home) -> dict[str, Callable[[], Any]]:
    """What each page asks of the ledger, through the same data layer, in the same order."""
    from dashboard import data, proof

    me = data.CitizenData(data.Principal("citizen", "hh-0000042", "Household 42"))
    op = data.OperatorData(data.Principal("operator", "op-all", "Operator", ("all",)))
    d01 = data.OperatorData(data.Principal("operator", "op-d01", "Operator", ("d01",)))
    months = me.bill_months()
    current, issued = months[0]["month"], next(m["month"] for m in months if m["issued"])
    water = next(m["device"] for m in me.meters() if m["kind"] == "water")
    anomaly = op.anomalies(status="open")[0]["id"]
    tz = data.zone(data.tariffs()["timezone"])
    yesterday = dt.datetime.now(tz).date() - dt.timedelta(days=1)
    trusted = home.trusted_key.read_text().strip()

    def usage(g: str) -> Callable[[], Any]:
        return lambda: (me.meters(), me.usage(water, g))

    def proof_page() -> Any:
        r = me.reading_near(water, data.now_ms() - 3_600_000)
        return proof.check(me.receipt(water, r["seq"]), trusted, data.call(data.ledger().key_chain))

    def anomaly_page() -> Any:
        a = op.anomaly(anomaly)
        return (
            op.anomaly_readings(a),
            op.device(a["device"]),
            op.key_history(a["device"]),
            op.device_anomalies(a["device"]),
        )

    return {
        "citizen · Usage (daily)": usage("Daily"),
        "citizen · Usage (weekly)": usage("Weekly"),
        "citizen · Usage (monthly)": usage("Monthly"),
        "citizen · Bill (this month, as it stands)": lambda: (me.bill_months(), me.bill(current)),
        "citizen · Bill (an issued month)": lambda: (me.bill_months(), me.bill(issued)),
        "citizen · Parking (this month)": lambda: (me.bill_months(), me.parking(current)),
        "citizen · Proof (receipt, checked)": proof_page,
        "citizen · Disputes": lambda: (me.disputes(), me.bill_months()),
        "operator · City overview": lambda: (
            op.districts(),
            op.overview(),
            op.arrivals(),
            op.witness_reports("alarm", 3),
            op.last_audit(),
        ),
        "operator · City overview (one district)": lambda: (d01.overview(), d01.arrivals()),
        "operator · Anomalies": lambda: (op.districts(), op.anomalies(status="open")),
        "operator · Anomaly": anomaly_page,
        "operator · Devices (search)": lambda: op.devices(text="d02-0000"),
        "operator · Device": lambda: (op.device(water), op.key_history(water)),
        "operator · Quarantine": lambda: (op.quarantine_summary(), op.quarantine()),
        "operator · Ledger": lambda: (op.status(), op.blocks(), op.witness_reports(limit=200), op.last_audit()),
        "operator · Disputes": lambda: op.disputes(status="open"),
        "operator · Parking": lambda: (op.parking_now(), op.occupancy(yesterday), op.revenue()),
    }


PAGES = {
    "citizen": ["citizen_usage", "citizen_bill", "citizen_parking", "citizen_proof", "citizen_disputes"],
    "operator": [
        "operator_overview",
        "operator_anomalies",
        "operator_anomaly",
        "operator_devices",
        "operator_quarantine",
        "operator_ledger",
        "operator_disputes",
        "operator_parking",
    ],
}


def app_runs(anomaly: str, device: str) -> dict[str, dict[str, float]]:
    from streamlit.testing.v1 import AppTest

    from dashboard import data

    out: dict[str, dict[str, float]] = {}
    for role, who in (("citizen", "hh-0000042"), ("operator", "op-all")):
        at = AppTest.from_file(str(APP), default_timeout=300).run()
        at.radio(key="role").set_value(role)
        at.text_input(key="principal").input(who)
        at.text_input(key="password").input(PASSWORD)
        t = time.perf_counter()
        at.button[0].click().run()
        out[f"{role} · sign in (Argon2id check + first page)"] = {"cold": time.perf_counter() - t}
        for screen in PAGES[role]:
            at.query_params.clear()
            if screen == "operator_anomaly":
                at.query_params["id"] = anomaly
            if screen == "operator_devices":
                at.query_params["device"] = device
            data.CACHE.forget()
            t = time.perf_counter()
            at.switch_page(f"screens/{screen}.py").run()
            cold = time.perf_counter() - t
            t = time.perf_counter()
            at.run()
            warm = time.perf_counter() - t
            problems = [e.value for e in at.exception] + [e.value for e in at.error]
            out[f"{role} · {screen.split('_', 1)[1]}"] = {
                "cold": cold,
                "warm": warm,
                **({"problems": problems} if problems else {}),
            }
    return out


def measure(home: Home, direct: bool) -> dict[str, Any]:
    from dashboard import data
    from ledger.service import rpc
    from ledger.service.api import local_api
    from ledger.service.writer import LedgerWriter

    os.environ["CITYLEDGER_HOME"] = str(home.root)
    server = writer = None
    if not direct:
        writer = LedgerWriter.open(home, log_files=False)
        server, _ = rpc.serve(local_api(home, writer), home.rpc_socket)
    try:
        calls = data_calls(home)
        results: dict[str, Any] = {}
        for name, fn in calls.items():
            cold = timed(fn, 3, cold=lambda: data.CACHE.forget())
            warm = timed(fn, 1)
            results[name] = {"cold": cold, "warm": warm}
            print(f"  {name}: {cold * 1000:.0f} ms cold, {warm * 1000:.0f} ms warm", file=sys.stderr, flush=True)
        op = data.OperatorData(data.Principal("operator", "op-all", "Operator", ("all",)))
        anomaly = op.anomalies(status="open")[0]["id"]
        apps = app_runs(anomaly, op.anomaly(anomaly)["device"])
        for name, r in apps.items():
            print(
                f"  AppTest {name}: {r['cold'] * 1000:.0f} ms"
                + (f", warm {r['warm'] * 1000:.0f} ms" if "warm" in r else ""),
                file=sys.stderr,
                flush=True,
            )
    finally:
        if server is not None:
            rpc.stop(server, home.rpc_socket)
        if writer is not None:
            writer.close()
    return {"data_calls": results, "apptest": apps}


def roll_up(home: Home) -> dict[str, Any]:
    """Summarise the readings per device and day, as the scheduler keeps doing every minute."""
    writer = LedgerWriter.open(home, log_files=False)
    started = time.perf_counter()
    try:
        done = billing_ops.roll_up(
            writer,
            max_readings=10_000_000,
            progress=lambda h, top: print(f"\rrolling up: block {h:,} of {top:,}", end="", file=sys.stderr, flush=True),
        )
    finally:
        writer.close()
    print(file=sys.stderr)
    return {**done, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--home", help="keep the ledger here (reused if it exists)")
    p.add_argument("--direct", action="store_true", help="no ledger service: every call opens the file")
    args = p.parse_args()
    home = Home(Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="cityledger-dashboard-")))
    made: dict[str, Any] = {}
    if not home.database.exists():
        initialize(home)
        end = now_ms() // STEP * STEP
        print(f"fabricating {args.devices:,} devices x {args.days} days in {home.root}", file=sys.stderr)
        made = fabricate(home, args.devices, args.days, end)
        logins(home)
        print(f"fabricated in {made['seconds']} s: {made}", file=sys.stderr)
    made["roll_up"] = roll_up(home)
    result = measure(home, args.direct)
    size = home.database.stat().st_size
    print(
        json.dumps(
            {
                "devices": args.devices,
                "days": args.days,
                "mode": "direct (no ingest)" if args.direct else "served (as ingest)",
                "fabricated": made,
                "database_gb": round(size / 1e9, 2),
                "data_calls_ms": {
                    k: {m: round(v * 1000) for m, v in r.items()} for k, r in result["data_calls"].items()
                },
                "apptest_ms": {
                    k: {m: (round(v * 1000) if isinstance(v, float) else v) for m, v in r.items()}
                    for k, r in result["apptest"].items()
                },
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                f"DuckDB {duckdb.__version__}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
