"""Periodic jobs (APScheduler 3, the stable line): audit, anomaly scan, roll-up, month-end close.

The scheduler is its own process and reaches the ledger only through its API,
so a slow job never holds the database away from ingest.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from ledger.clock import now_ms
from ledger.home import Home
from ledger.service import jobs
from ledger.service.cityaudit import verify_city
from ledger.service.results.anomalies import ScanSummary
from ledger.service.results.billing import RolledUp
from ledger.service.rpc import open_ledger

log = logging.getLogger("cityledger.scheduler")


class JobLog:
    """Records each run of each job in HOME/jobs.json, so a failure is seen, not only logged."""

    def __init__(self, home: Home) -> None:
        self.path = home.jobs
        self.lock = threading.Lock()
        self.records = jobs.load(self.path)

    def run(self, name: str, job: Callable[..., Any], *args: Any) -> Any:
        """Run `job(*args)` as the job `name`; its failure is recorded, then raised for APScheduler to log."""
        self._update(name, lambda r: jobs.started(r, name, now_ms()))
        try:
            result = job(*args)
        except Exception as exc:
            failure = exc  # `exc` itself is unbound when the block ends
            self._update(name, lambda r: jobs.finished(r or jobs.JobRecord(name), now_ms(), failure))
            log.error("job %s failed: %s", name, exc)
            raise
        self._update(name, lambda r: jobs.finished(r or jobs.JobRecord(name), now_ms(), None))
        return result

    def _update(self, name: str, change: Callable[[jobs.JobRecord | None], jobs.JobRecord]) -> None:
        with self.lock:
            self.records[name] = change(self.records.get(name))
            try:
                jobs.save(self.path, self.records)
            except OSError as exc:  # a full disk must not stop the jobs themselves
                log.warning("could not record job %s: %s", name, exc)


def audit_job(home: Home) -> dict[str, Any]:
    """Run a structural audit and keep its result where the dashboard reads it.

    On a city of district chains: the city chain, every district chain and every anchor.
    """
    ledger = open_ledger(home)
    report: dict[str, Any] = (
        verify_city(home) if home.district is None and ledger.districts() else dict(ledger.verify())
    )
    report["finished_at"] = now_ms()
    tmp = home.last_audit.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(home.last_audit)
    level = logging.INFO if report["ok"] else logging.ERROR
    log.log(
        level,
        "audit: %s, %d blocks, %d readings",
        "intact" if report["ok"] else report["failure"],
        report["blocks"],
        report["readings"],
    )
    return report


def previous_month(today: datetime.date) -> str:
    first = today.replace(day=1)
    last_month = first - datetime.timedelta(days=1)
    return last_month.strftime("%Y-%m")


def close_job(home: Home, clock: Callable[[], int] = now_ms) -> dict[str, Any]:
    """On the 1st: issue last month's bills (idempotent, so a re-run after a failure is safe).

    "Last month" is in the city's time zone, the tariff book's, as the bills' own boundaries are.
    """
    ledger = open_ledger(home)
    today = datetime.datetime.fromtimestamp(clock() / 1000, ZoneInfo(ledger.timezone())).date()
    month = previous_month(today)
    result = {**ledger.close_month(month=month), "month": month}
    log.info(
        "month-end close %s: %d bills issued, %d already issued", month, result["issued"], result["already_issued"]
    )
    return result


def scan_job(home: Home) -> ScanSummary:
    result = open_ledger(home).scan_anomalies()
    log.info(
        "anomaly scan: %d raised, %d updated over %d devices", result["raised"], result["updated"], result["devices"]
    )
    return result


def roll_up_job(home: Home) -> RolledUp:
    """Keep the per-device daily summaries near the head, so a bill reads a day of readings, not a year."""
    result = open_ledger(home).roll_up()
    if result["readings"]:
        log.info("roll-up: %d readings summarised, up to block %d", result["readings"], result["height"])
    return result


def run_scheduler(home: Home, *, audit_minutes: float, stop: threading.Event, scan_minutes: float = 5.0) -> None:
    """Run the periodic jobs until `stop`. The month-end close fires at 01:00 on the 1st in the
    city's time zone, read from the ledger when the scheduler starts (ledger/defaults.py): a
    tariff file that changes the zone takes effect for the trigger on the next start."""
    timezone = _city_timezone(home, stop)
    if timezone is None:
        return
    scheduler = BackgroundScheduler(timezone="UTC")
    record = JobLog(home).run
    scheduler.add_job(
        record,
        "interval",
        args=["audit", audit_job, home],
        minutes=audit_minutes,
        id="audit",
        max_instances=1,
        coalesce=True,
        next_run_time=None,
    )
    scheduler.add_job(
        record,
        "interval",
        args=["anomaly-scan", scan_job, home],
        minutes=scan_minutes,
        id="anomaly-scan",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        record, "interval", args=["roll-up", roll_up_job, home], minutes=1, id="roll-up", max_instances=1, coalesce=True
    )
    scheduler.add_job(
        record,
        CronTrigger(day=1, hour=1, minute=0, timezone=ZoneInfo(timezone)),
        args=["month-end-close", close_job, home],
        id="month-end-close",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=24 * 3600,
    )
    scheduler.start()
    log.info(
        "scheduler running: audit every %.1f min, month-end close at 01:00 on the 1st in %s", audit_minutes, timezone
    )
    try:
        # First audit shortly after start, once ingest has had time to come up.
        if not stop.wait(5):
            scheduler.modify_job("audit", next_run_time=_now())
        stop.wait()
    finally:
        scheduler.shutdown(wait=False)


def _city_timezone(home: Home, stop: threading.Event) -> str | None:
    """The ledger's time zone, asked until the ledger answers (ingest may still be starting);
    None when `stop` is set first."""
    while True:
        try:
            return open_ledger(home).timezone()
        except Exception as exc:  # a ledger not up yet, busy, or locked by a starting ingest
            log.warning("waiting for the ledger to learn the city's time zone: %s", exc)
        if stop.wait(2):
            return None


def _now():
    from datetime import datetime

    return datetime.now(UTC)
