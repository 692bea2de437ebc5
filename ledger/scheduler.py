"""Periodic jobs (APScheduler 3, the stable line): today the chain audit.

The scheduler is its own process and reaches the ledger only through its API,
so a slow job never holds the database away from ingest.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from apscheduler.schedulers.background import BackgroundScheduler

from ledger.home import Home
from ledger.rpc import open_ledger

log = logging.getLogger("cityledger.scheduler")


def audit_job(home: Home) -> dict:
    """Run a structural audit and keep its result where the dashboard reads it."""
    report = open_ledger(home).verify()
    report["finished_at"] = int(time.time() * 1000)
    tmp = home.last_audit.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    tmp.replace(home.last_audit)
    level = logging.INFO if report["ok"] else logging.ERROR
    log.log(level, "audit: %s, %d blocks, %d readings", "intact" if report["ok"] else report["failure"],
            report["blocks"], report["readings"])
    return report


def run_scheduler(home: Home, *, audit_minutes: float, stop: threading.Event) -> None:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(audit_job, "interval", args=[home], minutes=audit_minutes, id="audit",
                      max_instances=1, coalesce=True, next_run_time=None)
    scheduler.start()
    log.info("scheduler running: audit every %.1f min", audit_minutes)
    try:
        # First audit shortly after start, once ingest has had time to come up.
        if not stop.wait(5):
            scheduler.modify_job("audit", next_run_time=_now())
        stop.wait()
    finally:
        scheduler.shutdown(wait=False)


def _now():  # noqa: ANN202 - APScheduler wants an aware datetime
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
