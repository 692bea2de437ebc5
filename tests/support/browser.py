"""Headless Debian Chromium driven by Playwright, plus a dashboard process to point it at.

Nothing here downloads a browser: Playwright is told to use /usr/bin/chromium,
with the flags this offline machine needs (no background networking).
"""

from __future__ import annotations

import datetime as dt
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from nacl.signing import SigningKey
from playwright.sync_api import Browser, sync_playwright

from ledger.anomalies.detectors import Finding
from ledger.city.up import port_open
from ledger.home import Home
from ledger.processes import STDOUT, start
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import parking as parking_ops
from ledger.service.operations import people as people_ops
from tests.support.broker import free_port, wait_for
from tests.support.stack import Stack

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise AssertionError("Debian's chromium is not installed: run `bash .ci/setup --dev`")
    return path


@contextmanager
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def dashboard(stack: Stack) -> Iterator[str]:
    """`cityledger dashboard` on a free port of this stack; yields its URL."""
    port = free_port()
    log = stack.home.logs / "dashboard.log"
    proc = start(
        [sys.executable, "-m", "ledger.cli", "dashboard", "--port", str(port)], env=stack.env, stdout=log, stderr=STDOUT
    )
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, 60, "the dashboard's port")
        assert proc.poll() is None, f"dashboard exited:\n{log.read_text()}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop(timeout=15)


def save_screenshot(png: bytes, name: str, *, publish: bool = False) -> Path:
    """Keep a screenshot as a test artefact; `publish` also refreshes the README's copy."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(png)
    if publish:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / name).write_bytes(png)
    return path


# ---------------------------------------------------------------- a small city for the dashboard's tests

PASSWORD = "correct horse battery staple"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass
class DashboardCity:
    """What `build_city` made: ids the tests sign in with and look for."""

    home: Home
    now: int
    issued_month: str
    anomalies: dict[str, str] = field(default_factory=dict)  # name -> anomaly id
    disputes: dict[str, str] = field(default_factory=dict)
    keys: dict[str, SigningKey] = field(default_factory=dict)


def build_city(root: Path, now: int | None = None) -> DashboardCity:
    """Three districts of signed readings, written through the real writer (no broker).

    d02: household hh-0001 (Li Na) with a water meter read hourly for 400 days, an electricity
    meter and a leased parking space; five more d02 households with water meters (so the district
    has a typical household). d01: household hh-0003 (Zhang Wei) with one water meter and a dispute.
    Operators: op-d02 (d02), op-d01 (d01), op-all (the whole city); every password is PASSWORD.
    Last month is issued (month-end close). One anomaly in each of d01 and d02, quarantined
    messages (one with markup in its payload), a witness report.
    """
    from ledger.anomalies.investigations import record_findings
    from ledger.chain.protocol import sign_reading
    from ledger.chain.records import Batch, LedgeredReading, QuarantineRow
    from ledger.service.api import local_api
    from ledger.service.homes import initialize
    from ledger.service.writer import LedgerWriter

    now = now or int(time.time() * 1000)
    now -= now % 60_000
    home = Home(root)
    initialize(home)
    w = LedgerWriter.open(home)
    tz = ZoneInfo("Asia/Shanghai")
    today = dt.datetime.fromtimestamp(now / 1000, tz).date().replace(day=1)
    issued_month = (today - dt.timedelta(days=1)).strftime("%Y-%m")
    city = DashboardCity(home, now, issued_month)
    seqs: dict[str, int] = {}

    def device(name: str, kind: str, district: str, account: str | None) -> None:
        key = SigningKey.generate()
        w.enroll_device(name, kind, district, key.verify_key.encode().hex(), account)
        city.keys[name], seqs[name] = key, 0

    def readings(name: str, kind: str, points: list[tuple[int, int]]) -> None:
        rows = []
        for ts, value in points:
            seqs[name] += 1
            r = sign_reading(city.keys[name], device=name, kind=kind, seq=seqs[name], ts=ts, value=value)
            rows.append(LedgeredReading(r, ts + 500))
        for i in range(0, len(rows), 5000):
            w.commit(Batch(readings=rows[i : i + 5000]))

    def hourly(days: int, per_hour: Callable[[int], int], start_value: int = 1_000_000) -> list[tuple[int, int]]:
        t0 = now - days * DAY_MS
        t0 -= t0 % HOUR_MS
        value, out = start_value, []
        for t in range(t0, now, HOUR_MS):
            out.append((t, value))
            value += per_hour(dt.datetime.fromtimestamp(t / 1000, tz).hour)
        return out

    try:
        billing_ops.add_account(w, "hh-0001", "Li Na", "residential")
        billing_ops.add_account(w, "hh-0003", "Zhang Wei", "residential")
        for n in (2, 4, 5, 6, 7):
            billing_ops.add_account(w, f"hh-000{n}", f"Household {n}", "residential")
        for op, name, districts in (
            ("op-d02", "Chen Jie", "d02"),
            ("op-d01", "Wang Fang", "d01"),
            ("op-all", "Sun Li", "all"),
        ):
            people_ops.add_operator(w, op, name, districts)
            people_ops.set_password(w, "operator", op, PASSWORD)
        for account in ("hh-0001", "hh-0003"):
            people_ops.set_password(w, "citizen", account, PASSWORD)

        device("wm-d02-000001", "water", "d02", "hh-0001")
        readings("wm-d02-000001", "water", hourly(400, lambda h: 40 if 7 <= h < 23 else 8))
        device("em-d02-000001", "electricity", "d02", "hh-0001")
        readings("em-d02-000001", "electricity", hourly(40, lambda h: 450 if 7 <= h < 23 else 120, 0))
        for i, n in enumerate((2, 4, 5, 6, 7), 2):
            device(f"wm-d02-00000{i}", "water", "d02", f"hh-000{n}")
            readings(f"wm-d02-00000{i}", "water", hourly(40, lambda h, i=i: (20 + 4 * i) if 7 <= h < 23 else 5))
        device("wm-d01-000001", "water", "d01", "hh-0003")
        readings("wm-d01-000001", "water", hourly(40, lambda h: 30 if 7 <= h < 23 else 6))
        device("wm-d03-000001", "water", "d03", None)
        readings("wm-d03-000001", "water", hourly(3, lambda h: 10))

        device("ps-d02-000001", "parking", "d02", None)
        parking_ops.lease(w, "ps-d02-000001", "hh-0001", now - 80 * DAY_MS, "op-test")
        stays = []
        for d in range(70, 0, -1):  # 08:00 to 09:40 every morning
            day = dt.datetime.fromtimestamp((now - d * DAY_MS) / 1000, tz).date()
            start = int(dt.datetime(day.year, day.month, day.day, 8, 0, tzinfo=tz).timestamp() * 1000)
            stays += [(start, 1), (start + 100 * 60_000, 0)]
        readings("ps-d02-000001", "parking", stays)

        api = local_api(home, w)
        api.close_month(month=issued_month)

        with w.lock:
            findings = [
                Finding(
                    "leak",
                    "wm-d02-000001",
                    "hh-0001",
                    "d02",
                    now - 3 * DAY_MS,
                    now - DAY_MS,
                    "medium",
                    (("wm-d02-000001", seqs["wm-d02-000001"] - 48), ("wm-d02-000001", seqs["wm-d02-000001"] - 30)),
                    "night flow never below 8 L/h for 2 nights",
                    "leak:wm-d02-000001",
                ),
                Finding(
                    "tamper",
                    "wm-d01-000001",
                    "hh-0003",
                    "d01",
                    now - 2 * DAY_MS,
                    now - DAY_MS,
                    "high",
                    (("wm-d01-000001", seqs["wm-d01-000001"] - 30),),
                    "register went backwards",
                    "tamper:wm-d01-000001",
                ),
            ]
            record_findings(w.store, findings, now - HOUR_MS)
            for aid, dev in w.store.con.execute("SELECT id, device FROM anomalies").fetchall():
                city.anomalies[dev.split("-")[1]] = aid

        w.commit(
            Batch(
                quarantine=[
                    QuarantineRow(
                        now - 600_000,
                        "city/d01/water/wm-d01-000001/reading",
                        "malformed",
                        "wm-d01-000001",
                        "not JSON",
                        b"<script>alert('x')</script><b>bold</b>",
                    ),
                    QuarantineRow(
                        now - 500_000,
                        "city/d02/water/wm-d02-000002/reading",
                        "bad_signature",
                        "wm-d02-000002",
                        "signature does not verify",
                        b'{"v":1,"device":"wm-d02-000002"}\xff',
                    ),
                ],
                rejects={
                    ("wm-d01-000001", (now - 600_000) // 60_000, "malformed"): 1,
                    ("wm-d02-000002", (now - 500_000) // 60_000, "bad_signature"): 1,
                },
                statuses=[("wm-d02-000001", "online", now - HOUR_MS), ("wm-d01-000001", "offline", now - HOUR_MS)],
                witness_reports=[("witness-a", "head", '{"height": 1}', now - 120_000)],
            )
        )
        city.disputes["d01"] = people_ops.dispute(
            w, None, "hh-0003", "hh-0003", "open", "My meter reads twice what I use.", "Meter wm-d01-000001"
        )["id"]
    finally:
        w.close()
    return city
