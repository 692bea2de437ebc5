"""Prometheus metrics at /metrics (issue 19): what a city's operations team scrapes.

Against the real stack (Mosquitto, ingest, the API server): readings ledgered through the broker
move the counters, a forged reading shows under its quarantine reason, a request shows in the
API's latency histogram under its route's template, and only an operator's token may scrape.
The pure parts (the histogram kept per block, the database's figures without ingest) beside.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ledger.chain.records import Batch
from ledger.home import Home
from ledger.service.api import local_api
from ledger.service.health import Histogram, IngestHealth
from ledger.service.homes import initialize
from ledger.service.writer import LedgerWriter
from tests.support.api import ApiCity
from tests.support.broker import close_client, publish, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def scrape(api_city: ApiCity, who: str | None = "op-all") -> httpx.Response:
    """GET /metrics (beside /v1, where Prometheus looks) as `who`."""
    with api_city.client(who) as client:
        return client.get(api_city.url.removesuffix("/v1") + "/metrics")


def samples(api_city: ApiCity) -> Samples:
    """Every sample of a scrape, by name and labels."""
    r = scrape(api_city)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not seen yet (a reason nothing was refused for)."""
    return found.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------- against the real stack


def test_only_an_operators_token_may_scrape_and_the_endpoint_is_not_in_the_api_document(api_city: ApiCity) -> None:
    anonymous = scrape(api_city, None)
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    agency = scrape(api_city, api_city.agency("metrics-agency", "d01:readings"))
    assert agency.status_code == 403 and agency.json()["status"] == 403
    assert scrape(api_city, "op-d01").status_code == 200  # any operator: the figures are the city's, not a district's
    with api_city.client("op-all") as op:
        paths = op.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if "metrics" in p]


def test_readings_ledgered_through_the_broker_move_the_counters_and_the_histograms(api_city: ApiCity) -> None:
    stack = api_city.stack
    before = samples(api_city)
    assert value(before, "cityledger_ingest_running") == 1
    assert ("cityledger_ingest_queue_depth", frozenset()) in before
    dev = stack.enroll("wm-d01-900001", kind="water", district="d01")
    n = 7
    stack.ledger_readings(dev, n)

    def acked() -> Samples | None:
        found = samples(api_city)
        grown = value(found, "cityledger_ack_latency_seconds_count") - value(
            before, "cityledger_ack_latency_seconds_count"
        )
        return found if grown >= n else None

    after = wait_for(acked, 10, f"the acks of {n} readings in the ack latency histogram")
    grew = value(after, "cityledger_readings_sealed_total") - value(before, "cityledger_readings_sealed_total")
    assert grew == n
    assert value(after, "cityledger_blocks_sealed_total") > value(before, "cityledger_blocks_sealed_total")
    assert value(after, "cityledger_seal_seconds_count") > value(before, "cityledger_seal_seconds_count")
    assert value(after, "cityledger_seal_seconds_sum") > value(before, "cityledger_seal_seconds_sum")
    # Cumulative buckets: +Inf is the count; an ack takes less than a few minutes on a quiet machine.
    count = value(after, "cityledger_ack_latency_seconds_count")
    assert value(after, "cityledger_ack_latency_seconds_bucket", le="+Inf") == count
    assert value(after, "cityledger_ack_latency_seconds_bucket", le="300.0") == count
    assert 0 <= value(after, "cityledger_last_seal_age_seconds") < 60
    assert value(after, "cityledger_ingest_queue_depth") >= 0


def test_a_forged_reading_shows_under_its_quarantine_reason(api_city: ApiCity) -> None:
    stack = api_city.stack
    before = samples(api_city)
    dev = stack.enroll("wm-d01-900002", kind="water", district="d01")
    forged = dev.reading(value=10, ts=now_ms()).model_copy(update={"value": 11})  # signed for 10, says 11
    client = stack.connect(dev)
    try:
        publish(client, dev.topic, forged.payload())
        wait_for(
            lambda: (
                value(samples(api_city), "cityledger_quarantined_total", reason="bad_signature")
                == value(before, "cityledger_quarantined_total", reason="bad_signature") + 1
            ),
            10,
            "the forged reading counted under bad_signature",
        )
    finally:
        close_client(client)
    after = samples(api_city)
    assert value(after, "cityledger_readings_sealed_total") == value(before, "cityledger_readings_sealed_total")
    assert value(after, "cityledger_quarantine_stored") == value(before, "cityledger_quarantine_stored") + 1


def test_a_request_shows_in_the_api_latency_histogram_under_its_route_template(api_city: ApiCity) -> None:
    with api_city.client("op-all") as op:
        paths = op.get("/openapi.json").json()["paths"]
        # A route with a parameter: the label must be its template, never the path with the value in it.
        template = next(p for p, ops in sorted(paths.items()) if "{" in p and "get" in ops)
        probe = "zz-metrics-probe"
        assert op.get("/status").status_code == 200
        answered = op.get(re.sub(r"\{[^}]+\}", probe, template).removeprefix("/v1")).status_code
    found = samples(api_city)
    status = value(found, "cityledger_api_request_seconds_count", method="GET", route="/v1/status", status="200")
    assert status >= 1
    with_param = value(
        found, "cityledger_api_request_seconds_count", method="GET", route=template, status=str(answered)
    )
    assert with_param >= 1, template
    assert not [labels for _, labels in found if any(probe in v for _, v in labels)], "a raw path became a label"
    assert (
        value(found, "cityledger_api_request_seconds_bucket", method="GET", route="/v1/status", status="200", le="+Inf")
        == status
    )


# ---------------------------------------------------------------- the pure parts


def test_a_blocks_ack_latencies_land_in_the_buckets_one_at_a_time_would() -> None:
    rng = random.Random(19)
    bounds = (0.05, 0.1, 1.0, 10.0)
    batch, one_by_one = Histogram(bounds), Histogram(bounds)
    for _ in range(50):
        acked_at = rng.randrange(10**12, 10**12 + 10**6)
        received = sorted(acked_at - rng.randrange(0, 20_000) for _ in range(rng.randrange(0, 40)))
        head = received[: len(received) // 3]
        rng.shuffle(head)  # arrival order is nearly sorted, not quite
        received[: len(head)] = head
        batch.observe_since(acked_at, received)
        for r in received:
            one_by_one.observe((acked_at - r) / 1000)
    assert batch.counts == one_by_one.counts and batch.count == one_by_one.count > 0
    assert abs(batch.sum - one_by_one.sum) < 1e-6 * one_by_one.sum
    stepped = Histogram(bounds)
    stepped.observe_since(1_000, [1_500])  # received "after" its ack: the clock stepped back
    assert stepped.counts == [1, 1, 1, 1] and stepped.sum == 0


def test_ingest_health_keeps_seal_times_only_for_its_own_batches() -> None:
    health = IngestHealth(workers=0, started_at=1)
    health.sealed(10_000, [("a", 9_000)], seconds=0.02)
    health.sealed(11_000, [])  # an operator's entry sealed through the API: not a batch of ingest's
    health.acked(10_500, [9_900, 10_000, 10_400])
    seal, ack = health.histograms()
    assert seal["count"] == 1 and seal["sum"] == 0.02 and seal["counts"][seal["le"].index(0.025)] == 1
    assert ack["count"] == 3 and round(ack["sum"], 3) == 1.2
    assert ack["counts"][ack["le"].index(0.1)] == 1 and ack["counts"][ack["le"].index(0.5)] == 2
    assert ack["counts"][-1] == 3


def test_without_ingest_the_figures_are_the_databases_and_survive_a_restart(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    try:
        minute = now_ms() // 60_000
        writer.commit(Batch(rejects={("wm-d01-000001", minute, "bad_signature"): 3, ("?", minute, "malformed"): 1}))
    finally:
        writer.close()
    m = local_api(home).metrics()  # the file opened for the call, as with no ingest running
    assert m["ingest_running"] is False and m["queue_depth"] is None and m["ingest_started_at"] is None
    assert m["rejected"] == {"bad_signature": 3, "malformed": 1}
    assert m["blocks_sealed"] >= 1 and m["last_seal_at"] is not None
    assert m["seal_seconds"]["count"] == 0 and m["ack_latency_seconds"]["count"] == 0
