"""The city's time zone is configuration: the tariff book's `timezone` (issue 16).

The month-end close used its own default (Beijing) whatever the tariffs said; a city
elsewhere would have closed the wrong month in the hours around midnight. Real DuckDB
files; the clock is passed in, so the month boundary is exact.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

from ledger.billing.tariffs import DEFAULT_FILE
from ledger.defaults import DEFAULT_TIMEZONE
from ledger.home import Home
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.scheduler import _city_timezone, close_job

# 2026-03-01 00:30 UTC: March in Berlin (01:30), still February in New York (19:30 on the 28th).
INSTANT_MS = int(dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.UTC).timestamp() * 1000)


def city_in(tmp_path: Path, zone: str) -> Home:
    home = Home(tmp_path / "home")
    initialize(home)
    source = DEFAULT_FILE.read_text().replace(f'timezone = "{DEFAULT_TIMEZONE}"', f'timezone = "{zone}"')
    assert f'timezone = "{zone}"' in source
    local_api(home).load_tariffs(source, operator="op-test")
    return home


def test_a_new_ledger_is_in_the_default_zone_until_its_tariffs_name_another(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    initialize(home)
    assert local_api(home).timezone() == DEFAULT_TIMEZONE
    assert local_api(city_in(tmp_path / "other", "America/New_York")).timezone() == "America/New_York"


def test_the_month_end_close_closes_the_month_that_ended_in_the_citys_zone(tmp_path: Path) -> None:
    new_york = city_in(tmp_path / "ny", "America/New_York")
    berlin = city_in(tmp_path / "berlin", "Europe/Berlin")
    assert close_job(new_york, clock=lambda: INSTANT_MS)["month"] == "2026-01"  # its February is not over
    assert close_job(berlin, clock=lambda: INSTANT_MS)["month"] == "2026-02"


def test_the_scheduler_reads_the_zone_from_the_ledger_and_gives_up_only_when_stopped(tmp_path: Path) -> None:
    assert _city_timezone(city_in(tmp_path, "Europe/Berlin"), threading.Event()) == "Europe/Berlin"
    stop = threading.Event()
    stop.set()  # no ledger in this home: it would wait for one, but it is told to stop
    assert _city_timezone(Home(tmp_path / "nowhere"), stop) is None
