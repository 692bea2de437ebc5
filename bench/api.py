"""The city's API (issue 19): latency on a year of 10,000 devices, and 50 clients while ingest seals.

    .venv/bin/python -m bench.api load --clients 50 --devices 1000 --seconds 30
    .venv/bin/python -m bench.api latency --home /tmp/bench-dash      # bench.dashboard's ledger

`load`: the `cityledger bench` stack (Mosquitto, ingest, the load generator publishing as fast
as the devices' windows let them) plus `cityledger api` as its own process, and `--clients`
threads, each reading its account's bill for this month and its meter's last day of readings
over and over. Every answer is checked (a bill's lines add up to its total; a day of readings
is the device's own, in order, each seq once, inside the day), and the figures are the API's
requests/s and latency beside ingest's readings/s and publish-to-ack p99 in the same window.

`latency`: bench.dashboard's fabricated city (365 days x 96 readings x 10,000 devices, 350
million readings; made first if `--home` has none), served as ingest serves it (the ledger's
API on its socket), and `cityledger api` in front: p50/p99 of a bill, a day of readings for
one device and a month for one account, then requests/s with `--clients` at once.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench import city
from bench.city import BenchOptions, running_stack
from bench.loadgen import LoadGenerator
from ledger.clock import now_ms
from ledger.home import Home
from ledger.processes import wait_until

DAY = 86_400_000
PAGE = 10_000


# ---------------------------------------------------------------- the API as its own process


def start_api(
    env: dict[str, str], log: Path, *args: str, scheme: str = "http", verify: ssl.SSLContext | bool = True
) -> tuple[subprocess.Popen[bytes], str]:
    """`cityledger api ARGS` on a free port with `env` (its CITYLEDGER_HOME), once /v1/health answers
    (over TLS: `scheme` https and `verify` the CA). The tests start theirs the same way."""
    port = city._free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "--log-level", "WARNING", "api", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"{scheme}://{'localhost' if scheme == 'https' else '127.0.0.1'}:{port}/v1"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"cityledger api exited with {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(url + "/health", timeout=2, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, 0.05, what="the API's /v1/health")
    return proc, url


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def home_env(home: Home) -> dict[str, str]:
    return {**os.environ, "CITYLEDGER_HOME": str(home.root)}


# ---------------------------------------------------------------- checked requests


@dataclass
class Tally:
    """Latencies per kind of request, and every wrong answer."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, problem: str | None) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            if problem:
                self.wrong.append(f"{kind}: {problem}")

    def figures(self, seconds: float) -> dict[str, Any]:
        every = [x for xs in self.latencies.values() for x in xs]
        return {
            "requests": len(every),
            "requests_per_s": round(len(every) / seconds, 1) if seconds else None,
            "wrong_answers": len(self.wrong),
            "first_wrong": self.wrong[:5],
            **{kind: percentiles(xs) for kind, xs in sorted(self.latencies.items())},
        }


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    ordered = sorted(xs)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": round(at(0.5) * 1000, 1), "p99_ms": round(at(0.99) * 1000, 1), "n": len(ordered)}


def bill_problem(body: Any, account: str, month: str) -> str | None:
    """None when the statement is the account's for the month, its bill's lines add up to the bill's
    total, and its balance is that total less what was paid."""
    bill = body["bill"]
    if bill.get("account") != account or bill.get("month") != month:
        return f"asked for {account} {month}, got {bill.get('account')} {bill.get('month')}"
    lines = sum((Decimal(line["amount"]) for line in bill["lines"]), Decimal(0))
    if lines != Decimal(bill["total"]) or Decimal(body["total"]) != lines:
        return f"{account} {month}: lines add up to {lines}, the totals say {bill['total']} and {body['total']}"
    if Decimal(body["balance"]) != Decimal(body["total"]) - Decimal(body["paid"]):
        return f"{account} {month}: balance {body['balance']} is not {body['total']} less {body['paid']}"
    return None


def readings_problem(items: list[dict[str, Any]], device: str, start: int, end: int) -> str | None:
    """None when every reading is the device's, inside [start, end), in time order, each seq once."""
    seqs = [r["seq"] for r in items]
    if any(r["device"] != device for r in items):
        return f"{device}: a reading of another device"
    if any(not start <= r["ts_ms"] < end for r in items):
        return f"{device}: a reading outside the day asked for"
    if [(r["ts_ms"], r["seq"]) for r in items] != sorted((r["ts_ms"], r["seq"]) for r in items):
        return f"{device}: readings out of order"
    if len(set(seqs)) != len(seqs):
        return f"{device}: a seq twice"
    return None


def get_bill(client: httpx.Client, account: str, month: str) -> str | None:
    r = client.get(f"/accounts/{account}/bills/{month}")
    return f"{r.status_code} {r.text[:200]}" if r.status_code != 200 else bill_problem(r.json(), account, month)


def get_readings(client: httpx.Client, path: str, device: str | None, start: int, end: int) -> str | None:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"from": start, "to": end, "limit": PAGE}
    while True:
        r = client.get(path, params=params)
        if r.status_code != 200:
            return f"{r.status_code} {r.text[:200]}"
        page = r.json()
        items += page["items"]
        if not page["next"]:
            break
        params["cursor"] = page["next"]
    if device is None:
        return None if all(start <= x["ts_ms"] < end for x in items) else "a reading outside the range"
    return readings_problem(items, device, start, end)


def timed(tally: Tally, kind: str, call: Callable[[], str | None]) -> None:
    t = time.perf_counter()
    try:
        problem = call()
    except httpx.HTTPError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    tally.add(kind, time.perf_counter() - t, problem)


def clients(
    url: str, token: str, work: list[tuple[str, str]], n: int, stop: threading.Event, tally: Tally, month: str = ""
) -> list[threading.Thread]:
    """`n` threads, client i reading account work[i]'s bill for `month` (default: this month, as it stands)
    and its device's last day of readings, until `stop`."""
    month = month or time.strftime("%Y-%m", time.gmtime())

    def run(i: int) -> None:
        account, device = work[i % len(work)]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            while not stop.is_set():
                timed(tally, "bill", lambda: get_bill(client, account, month))
                end = now_ms()
                timed(
                    tally,
                    "day_of_readings",
                    lambda end=end: get_readings(client, f"/devices/{device}/readings", device, end - DAY, end),  # type: ignore[misc]
                )

    threads = [threading.Thread(target=run, args=(i,), name=f"api-client-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def _run_clients(
    url: str, token: str, work: list[tuple[str, str]], n: int, month: str, stop: Any, conn: Connection
) -> None:
    """In a process of its own: the clients until `stop`, then their latencies and wrong answers to `conn`."""
    tally = Tally()
    for t in clients(url, token, work, n, stop, tally, month):
        t.join()
    conn.send((tally.latencies, tally.wrong))


class ClientProcess:
    """The API's clients in a process of their own, as other systems are: in the bench's process they
    would take the GIL from the load generator (or the ledger's server) and skew its figures."""

    def __init__(self, url: str, token: str, work: list[tuple[str, str]], n: int, month: str = "") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self._conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_run_clients, args=(url, token, work, n, month, self.stop, child), daemon=True)
        self.proc.start()
        self.started = time.monotonic()

    def finish(self, timeout: float = 300.0) -> Tally:
        """Stop the clients (each ends the request it is in) and collect what they saw."""
        self.stop.set()
        if not self._conn.poll(timeout):
            self.proc.kill()
            raise RuntimeError("the API's clients did not finish")
        tally = Tally()
        tally.latencies, tally.wrong = self._conn.recv()
        self.proc.join(timeout=30)
        return tally


# ---------------------------------------------------------------- load: the API while ingest seals


def load(devices: int, seconds: float, n_clients: int, keep: Path | None = None) -> dict[str, Any]:
    home = Home(keep or Path(tempfile.mkdtemp(prefix="cityledger-bench-api-")))
    opt = BenchOptions(seconds=seconds, devices=devices, home=home.root)
    specs = city.device_specs(devices)
    with running_stack(home, opt) as stack:
        ledger = stack.ingests[0].api
        city.enrol(stack, specs)
        metered = [s for s in specs if s.kind != "parking"][: max(1, n_clients)]
        for i, spec in enumerate(metered):
            account = f"acct-{i:05d}"
            ledger.add_account(account=account, name=f"Household {i}", operator="bench")
            ledger.assign_account(device=spec.device, account=account, operator="bench")
        ledger.add_operator(operator="bench-ops", name="Bench", districts="all")
        token = ledger.issue_token(kind="operator", principal="bench-ops", rate_per_minute=100_000)["token"]
        api, url = start_api(home_env(home), home.logs / "bench-api.log")
        try:
            supplies = city.presign(specs, opt.readings_per_device(), os.cpu_count() or 1)
            gen = LoadGenerator("127.0.0.1", stack.port, supplies, opt.window_per_device())
            work = [(f"acct-{i:05d}", s.device) for i, s in enumerate(metered)]
            readers: ClientProcess | None = None
            try:
                gen.connect()
                base = sum(city.chain_readings(stack))
                readers = ClientProcess(url, token, work, n_clients)
                first, last, _ = city.drive(stack, gen, opt)
                tally = readers.finish()
                ledgered = city.drain(stack, gen, base, opt.drain_timeout)
            finally:
                if readers is not None:
                    readers.stop.set()
                gen.close()
        finally:
            stop_api(api)
    window = last.t - first.t
    return {
        "clients": n_clients,
        "devices": devices,
        "window_s": round(window, 1),
        "readings_per_s": round((last.readings - first.readings) / window, 1),
        "ack_p50_ms": round(gen.latencies.percentile(0.50) * 1000, 1),  # type: ignore[operator]
        "ack_p99_ms": round(gen.latencies.percentile(0.99) * 1000, 1),  # type: ignore[operator]
        "readings_acked": gen.acked_total,
        "readings_ledgered": ledgered,
        "api": tally.figures(window),
    }


# ---------------------------------------------------------------- latency: a year of 10,000 devices


def latency(home: Home, n_clients: int, runs: int, seconds: float) -> dict[str, Any]:
    from bench import dashboard
    from ledger.service import rpc
    from ledger.service.api import local_api
    from ledger.service.homes import initialize
    from ledger.service.writer import LedgerWriter

    made: dict[str, Any] = {}
    if not home.database.exists():
        initialize(home)
        made = dashboard.fabricate(home, 10_000, 365, now_ms() // dashboard.STEP * dashboard.STEP)
        dashboard.logins(home)
    made["roll_up"] = dashboard.roll_up(home)  # as the scheduler keeps it: what a bill as it stands reads
    writer = LedgerWriter.open(home, log_files=False)  # bench.dashboard says why
    server, _ = rpc.serve(local_api(home, writer), home.rpc_socket)
    api = None
    try:
        ledger = local_api(home, writer)
        token = ledger.issue_token(kind="operator", principal="op-all", rate_per_minute=100_000, operator="bench")[
            "token"
        ]
        account = "hh-0000042"
        devices = [d["device"] for d in ledger.view("devices_of_account", {"account": account})]
        issued = ledger.bills(account)[0]["month"]  # the newest issued month
        end = ledger.recent_readings(limit=1)[0]["ts"] + 1  # the fabricated year ends when it was made
        this_month = time.strftime("%Y-%m", time.gmtime(end / 1000))
        api, url = start_api(home_env(home), home.logs / "bench-api.log")
        calls: dict[str, Callable[[httpx.Client], str | None]] = {
            "bill_issued_month": lambda c: get_bill(c, account, issued),
            "bill_this_month_as_it_stands": lambda c: get_bill(c, account, this_month),
            "day_of_readings_one_device": lambda c: get_readings(
                c, f"/devices/{devices[0]}/readings", devices[0], end - DAY, end
            ),
            "month_of_readings_one_account": lambda c: get_readings(
                c, f"/accounts/{account}/readings", None, end - 30 * DAY, end
            ),
        }
        tally = Tally()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            for kind, call in calls.items():
                for _ in range(runs):
                    timed(tally, kind, lambda call=call: call(client))  # type: ignore[misc]
        sequential = tally.figures(0)
        together, stop = Tally(), threading.Event()
        threads = clients(url, token, [(account, devices[0])], n_clients, stop, together, issued)
        time.sleep(seconds)  # the measured window: the clients run this long
        stop.set()
        for t in threads:
            t.join(timeout=120)
        return {
            "fabricated": made,
            "sequential": sequential,
            "clients": n_clients,
            "concurrent": together.figures(seconds),
        }
    finally:
        if api is not None:
            stop_api(api)
        rpc.stop(server, home.rpc_socket)
        writer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("load", help="50 clients while ingest seals at load")
    lp.add_argument("--clients", type=int, default=50)
    lp.add_argument("--devices", type=int, default=1000)
    lp.add_argument("--seconds", type=float, default=30)
    lt = sub.add_parser("latency", help="p50/p99 on bench.dashboard's year of 10,000 devices")
    lt.add_argument("--home", required=True, help="bench.dashboard's ledger (made here if absent)")
    lt.add_argument("--clients", type=int, default=50)
    lt.add_argument("--runs", type=int, default=50)
    lt.add_argument("--seconds", type=float, default=20)
    args = p.parse_args()
    if args.what == "load":
        out = load(args.devices, args.seconds, args.clients)
    else:
        out = latency(Home(Path(args.home)), args.clients, args.runs, args.seconds)
    out["command"] = "python -m bench.api " + " ".join(sys.argv[1:])
    out["machine"] = city.machine()
    print(json.dumps(out, indent=2))
    if out.get("api", {}).get("wrong_answers"):
        print(f"bench.api: {out['api']['wrong_answers']} wrong answers", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
