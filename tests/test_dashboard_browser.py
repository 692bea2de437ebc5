"""The dashboard in a real browser (Debian's Chromium), against a real stack."""

from __future__ import annotations

import time

import pytest

from tests.support.broker import close_client, publish, wait_for
from tests.support.browser import browser, dashboard, save_screenshot
from tests.support.stack import Stack

pytestmark = pytest.mark.browser


def test_status_page_shows_the_live_ledger(stack: Stack) -> None:
    devices = [stack.enroll(f"{p}-d0{i % 3 + 1}-{i:06d}", kind=k, district=f"d0{i % 3 + 1}")
               for i, (p, k) in enumerate([("wm", "water"), ("gm", "gas"), ("em", "electricity"),
                                           ("ps", "parking"), ("wm", "water"), ("em", "electricity")])]
    now = int(time.time() * 1000)
    for dev in devices:
        client = stack.connect(dev)
        for n in range(5):
            value = n % 2 if dev.kind == "parking" else 1000 + 37 * n
            publish(client, dev.topic, dev.reading(value=value, ts=now - (5 - n) * 60_000).payload())
        close_client(client)
    wait_for(lambda: stack.status()["readings"] == 30, 20, "30 readings ledgered")
    head = stack.status()["height"]

    with dashboard(stack) as url, browser() as b:
        page = b.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Readings ledgered").wait_for(timeout=30_000)
        page.get_by_text("30", exact=True).first.wait_for(timeout=15_000)
        page.get_by_text(f"Head block {head}").wait_for(timeout=15_000)
        page.get_by_text("Recent blocks").wait_for()
        page.get_by_text(f"/ {len(devices)}").first.wait_for(timeout=15_000)  # "online / enrolled"
        body = page.inner_text("body")
        assert "Traceback" not in body
        save_screenshot(page.screenshot(full_page=True), "dashboard.png", publish=True)
