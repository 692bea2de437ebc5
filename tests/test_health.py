"""Ingest's lag (ledger.health) and the background jobs' records (ledger.jobs): pure parts, then a real ingest."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

from ledger.home import Home
from ledger.service import jobs
from ledger.service.health import IngestHealth, block_lag_ms, silence_margin_ms
from ledger.service.homes import initialize
from ledger.service.scheduler import JobLog
from tests.support.stack import Stack


def test_a_blocks_lag_is_the_median_age_of_its_readings_so_one_backlog_does_not_count() -> None:
    assert block_lag_ms(10_000, []) == 0
    assert block_lag_ms(10_000, [("a", 9_000), ("b", 9_500), ("c", 9_900)]) == 500
    backlog = [("d", 10_000 - 86_400_000 + n) for n in range(100)]
    assert block_lag_ms(10_000, [("a", 9_000), ("b", 9_500), ("c", 9_900), *backlog]) == 500  # a day's backlog
    assert block_lag_ms(10_000, [("c", 12_000)]) == 0, "a clock ahead is not negative lag"


def test_one_device_with_a_reset_clock_does_not_make_the_city_late() -> None:
    # It fills most of a quiet block with readings stamped 1970: one device, one vote.
    reset = [("broken", n) for n in range(1_000)]
    assert block_lag_ms(10_000, [*reset, ("a", 9_800), ("b", 9_900)]) == 200


def test_the_silence_margin_adds_the_time_since_the_last_seal_only_while_messages_wait() -> None:
    assert silence_margin_ms(2_000, last_seal_at=50_000, pending=0, now=110_000) == 2_000
    assert silence_margin_ms(2_000, last_seal_at=50_000, pending=7, now=110_000) == 62_000
    assert silence_margin_ms(0, last_seal_at=None, pending=7, now=110_000) == 0


def test_ingest_health_follows_the_seals() -> None:
    waiting = [0]
    health = IngestHealth(workers=2, started_at=1, pending=lambda: waiting[0])
    health.sealed(20_000, [("a", 19_000), ("b", 18_000), ("c", 19_500)])
    health.sealed(21_000, [])  # a registry block: a seal, but no readings to judge lag by
    waiting[0] = 3
    snap = health.snapshot(now=31_000)
    assert snap["lag_ms"] == 1_000 and snap["last_seal_at"] == 21_000 and snap["pending"] == 3
    assert snap["silence_margin_ms"] == 1_000 + 10_000
    assert snap["blocks_sealed"] == 2 and snap["readings_sealed"] == 3 and snap["workers"] == 2


def test_a_job_record_counts_failures_in_a_row_and_clears_on_success() -> None:
    r = jobs.started(None, "roll-up", 1_000)
    r = jobs.finished(r, 3_500, RuntimeError("database is locked"))
    assert r.failing and r.failures == 1 and r.runs == 1 and r.last_seconds == 2.5
    assert r.last_error == "RuntimeError: database is locked" and r.last_ok_at is None
    r = jobs.finished(jobs.started(r, "roll-up", 4_000), 4_100, ValueError("x" * 1000))
    assert r.failures == 2 and r.failures_total == 2 and len(r.last_error or "") == jobs.ERROR_CHARS
    r = jobs.finished(jobs.started(r, "roll-up", 5_000), 5_200, None)
    assert not r.failing and r.failures_total == 2 and r.last_ok_at == 5_200 and r.last_error is None


def test_the_scheduler_records_a_failing_job_in_the_home_and_status_shows_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    initialize(home)
    log = JobLog(home)

    def broken() -> None:
        raise ConnectionError("the ledger's socket did not answer")

    threads = [threading.Thread(target=lambda: _swallow(log.run, "anomaly-scan", broken)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.run("roll-up", lambda: {"readings": 0})
    assert stat.S_IMODE(home.jobs.stat().st_mode) == 0o600
    records = json.loads(home.jobs.read_text())
    assert records["anomaly-scan"]["failures"] == 4 and records["roll-up"]["failures"] == 0

    from ledger.service.api import local_api

    status = local_api(home).status()
    assert status["jobs"]["anomaly-scan"]["failing"] is True
    assert "ConnectionError" in status["jobs"]["anomaly-scan"]["last_error"]
    assert status["jobs"]["roll-up"]["failing"] is False
    assert status["ingest"] == {"running": False}


def _swallow(run: object, *args: object) -> None:
    try:
        run(*args)  # type: ignore[operator]
    except ConnectionError:
        pass


def test_status_of_a_running_ingest_shows_its_lag_and_last_seal(stack: Stack) -> None:
    stack.ledger_readings(stack.enroll("wm-d01-000001"), 5)
    ingest = stack.cli_json("status", "--json")["ingest"]
    assert ingest["running"] is True and ingest["workers"] == 0 and ingest["pending"] == 0
    assert ingest["last_seal_at"] is not None and ingest["readings_sealed"] == 5
    assert 0 <= ingest["lag_ms"] < 60_000
    plain = stack.cli("status", check=True).stdout
    assert "ingest: lag" in plain
