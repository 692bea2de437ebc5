"""The dashboard in a real browser (Debian's Chromium), against a real stack: Mosquitto, ingest, dashboard.

A small signed city is written first (tests/support/browser.py `build_city`), then the
stack starts on it exactly as `cityledger up` would start each part, and a person signs
in: a citizen to their bill, an operator to an anomaly, which they acknowledge. Live
readings published over MQTT must appear on the operator's overview without a reload.
Screenshots are kept in tests/artifacts/ (and the README's in docs/screenshots/).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.broker import close_client, publish, wait_for
from tests.support.browser import PASSWORD, DashboardCity, browser, build_city, dashboard, save_screenshot
from tests.support.stack import Stack

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def city_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DashboardCity, Stack, str]]:
    root = tmp_path_factory.mktemp("browser") / "home"
    city = build_city(root)
    with Stack(root) as stack, dashboard(stack) as url:
        yield city, stack, url


@pytest.fixture
def page(city_stack: tuple[DashboardCity, Stack, str]) -> Iterator[Page]:
    with browser() as b:
        p = b.new_page(viewport={"width": 1400, "height": 1300})
        p.set_default_timeout(30_000)
        yield p


def sign_in(page: Page, url: str, role: str, who: str) -> None:
    page.goto(url)
    page.get_by_label("Account id or operator id").wait_for()
    if role == "operator":
        page.get_by_text("a city operator").click()
    page.get_by_label("Account id or operator id").fill(who)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def settle(page: Page) -> None:
    """Wait until Streamlit has finished running the page (its status widget is gone)."""
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=30_000)


def shoot(page: Page, name: str, *, publish: bool = False) -> None:
    """A screenshot of the page from its top (Streamlit scrolls its main area, not the document)."""
    page.get_by_test_id("stMain").evaluate("e => e.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    save_screenshot(page.screenshot(full_page=True), name, publish=publish)


def no_trace(page: Page) -> str:
    body = page.inner_text("body")
    assert "Traceback" not in body and "Error:" not in body
    return body


def test_a_citizen_signs_in_to_their_bill(city_stack: tuple[DashboardCity, Stack, str], page: Page) -> None:
    city, stack, url = city_stack
    page.goto(url)
    page.get_by_label("Account id or operator id").fill("hh-0001")
    page.get_by_label("Password", exact=True).fill("a wrong password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("That id and password do not match").wait_for()

    sign_in(page, url, "citizen", "hh-0001")
    page.get_by_role("heading", name="Usage", exact=True).wait_for()
    page.get_by_role("link", name="Bill").click()
    page.get_by_role("heading", name="Bill", exact=True).wait_for()
    settle(page)
    bill = stack.api.bill(account="hh-0001", month=time.strftime("%Y-%m", time.gmtime(city.now / 1000 + 8 * 3600)))
    total = f"¥{Decimal(bill['total']):,.2f}"
    page.get_by_text(f"Total {total}").wait_for()
    body = no_trace(page)
    assert "as it stands now (not yet issued)" in body
    for line in bill["lines"]:
        assert line["device" if line["type"] != "adjustment" else "reason"] in body
    assert "Water · meter wm-d02-000001" in body and "Parking · space ps-d02-000001" in body
    shoot(page, "dashboard-citizen-bill.png")

    # The issued bill of last month: sealed, with its block; downloadable as CSV.
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name=re.compile("issued")).first.click()
    page.get_by_text("sealed in block").first.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    csv = Path(download.value.path()).read_text()
    assert csv.startswith("account,month,status") and f"hh-0001,{city.issued_month},issued" in csv

    # Usage: the year against the tiers, a year earlier, the district's typical household.
    page.get_by_role("link", name="Usage").click()
    page.get_by_role("heading", name="Usage", exact=True).wait_for()
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name=re.compile("wm-d02-000001")).click()
    page.get_by_role("radio", name="Monthly").click()
    page.get_by_text("This month so far").wait_for()
    settle(page)
    page.get_by_text("This year against the tariff tiers").wait_for()
    body = no_trace(page)
    assert "Typical household in d02" in body and "m³" in body
    shoot(page, "dashboard-citizen-usage.png")
    shoot(page, "dashboard.png", publish=True)  # the README's

    # A citizen typing an operator page's address gets no operator page (a new page load is a new session).
    page.goto(f"{url}/overview")
    page.get_by_label("Account id or operator id").wait_for()
    assert "City overview" not in no_trace(page)


def test_an_operator_works_an_anomaly(city_stack: tuple[DashboardCity, Stack, str], page: Page) -> None:
    city, stack, url = city_stack
    anomaly = city.anomalies["d02"]
    sign_in(page, url, "operator", "op-d02")
    page.get_by_role("heading", name="City overview", exact=True).wait_for()
    page.get_by_role("link", name="Anomalies").click()
    page.get_by_text("1 anomaly. Select one to open it").wait_for()  # d01's is not this operator's
    no_trace(page)
    page.get_by_test_id("stSelectbox").filter(has_text="Open anomaly").click()
    assert page.get_by_role("option").all_inner_texts() == [anomaly]
    page.get_by_role("option", name=anomaly).click()
    page.get_by_role("button", name="Open this anomaly").click()
    page.get_by_role("heading", name=f"Anomaly {anomaly}: leak").wait_for()
    page.get_by_text("Readings around it").wait_for()
    settle(page)
    expect(page.locator("canvas, svg.marks").first).to_be_visible()  # the chart of the device's readings
    body = no_trace(page)
    assert "night flow never below 8 L/h" in body and "Evidence" in body and "History of this anomaly" in body
    page.get_by_text("Acknowledge", exact=True).click()
    page.get_by_label("Note (required to resolve or dismiss)").fill("plumber booked for Thursday")
    page.get_by_role("button", name="Record").click()
    page.get_by_text(f"Recorded: {anomaly} is now acknowledged.").wait_for()
    settle(page)
    shoot(page, "dashboard-operator-anomaly.png")
    assert stack.api.anomaly(anomaly_id=anomaly)["status"] == "acknowledged"


def test_the_overview_follows_live_readings_without_a_reload(
    city_stack: tuple[DashboardCity, Stack, str], page: Page
) -> None:
    city, stack, url = city_stack
    sign_in(page, url, "operator", "op-all")
    page.get_by_role("heading", name="City overview", exact=True).wait_for()
    page.evaluate("window.__same_page = true")  # gone if the page reloads
    settle(page)

    def blocks_shown() -> int:
        metric = page.get_by_test_id("stMetric").filter(has_text="Blocks sealed").inner_text()
        return int([x for x in metric.split("\n") if x.strip()][1].replace(",", ""))

    before = blocks_shown()
    dev = stack.enroll("wm-d03-000042", kind="water", district="d03")
    client = stack.connect(dev)
    now = int(time.time() * 1000)
    for n in range(30):
        publish(client, dev.topic, dev.reading(value=1000 + 10 * n, ts=now - (30 - n) * 1000).payload())
    close_client(client)
    # The enrolment seals a block of its own: wait for the district's readings too, not only a new block.
    wait_for(
        lambda: blocks_shown() > before and "d03" in no_trace(page),
        30,
        "the overview to show the new blocks and district d03",
    )
    assert page.evaluate("window.__same_page") is True
    assert "Per district" in no_trace(page)
    settle(page)
    shoot(page, "dashboard-operator-overview.png")
    assert page.get_by_role("link", name="Usage").count() == 0  # an operator has no citizen pages
