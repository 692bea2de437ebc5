"""Prometheus metrics at /metrics: what a city's operations team scrapes (issue 19).

Two sources. The ledger's figures (readings and blocks sealed, refusals by reason, queue
depth, seal time, ack latency, background jobs) are asked of the ledger at each scrape
(`LedgerAPI.metrics`, over the ingest's socket) and turned into metric families by
`LedgerCollector`: nothing is cached here, so a scrape says what the ledger says now, and
the ingest keeps no metrics library of its own. The API's latency is kept in this process
by `RouteTimer`, labelled by the route's path template, never the raw path (which would
make a time series per device and account).

Each app has its own registry rather than prometheus-client's global one: tests make
several apps in one process, and this process's Python internals are not the city's
business. /metrics sits beside /v1, where Prometheus looks, out of the OpenAPI document,
and answers an operator's token only (Prometheus sends it as `authorization: bearer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.errors import NotAllowed
from ledger.http.deps import ApiState, CtxDep
from ledger.service.api import LedgerAPI
from ledger.service.results.metrics import HistogramDoc, LedgerMetrics

log = logging.getLogger("cityledger.http")
PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of a request no route took (a 404): never its raw path
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The API's answers: tens of milliseconds for a page, seconds for a large download.
API_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def install(app: FastAPI) -> None:
    """Add /metrics and the per-route latency middleware to `app`."""
    disable_created_metrics()  # no `_created` series beside each counter: noise to the operations team
    registry = CollectorRegistry()
    requests = Histogram(
        "cityledger_api_request_seconds",
        "Seconds the API took to answer a request, by method, route (its path template) and status.",
        ["method", "route", "status"],
        buckets=API_BUCKETS_S,
        registry=registry,
    )
    registry.register(LedgerCollector(lambda: ledger_of(app)))
    app.state.metrics = registry
    app.add_middleware(RouteTimer, requests=requests)

    @app.get(PATH, include_in_schema=False)
    def metrics(c: CtxDep) -> Response:
        """The ledger's and the API's metrics in Prometheus's text format, for an operator's token."""
        if not c.is_operator:
            log.warning("refused %s to token %s (%s): not an operator's", PATH, c.caller.token.id, c.principal)
            raise NotAllowed("the metrics are for operators: scrape with an operator's token")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def ledger_of(app: FastAPI) -> LedgerAPI:
    """The app's ledger now (the ingest's socket while it runs): read at each scrape, not at install."""
    state: ApiState = app.state.api
    return state.ledger()


class RouteTimer:
    """ASGI middleware: each HTTP request's seconds into `requests`, labelled by the route that took it.

    The route is known only after routing, so it is read from the scope once the app has answered
    (Starlette's router records the matched route there); the status from the response's start."""

    def __init__(self, app: ASGIApp, requests: Histogram) -> None:
        self.app, self.requests = app, requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app says otherwise: an error nothing answered

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.requests.labels(method, route_template(scope), str(status)).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that took the request, e.g. /v1/devices/{device}/readings.

    The router leaves the route in the scope, but a route included with a prefix may name its path
    without it (FastAPI keeps the router's own route): the prefix is then the leading segments of
    the request's path that the template does not cover. A parameter never spans a `/`, so the
    segments line up (a `{name:path}` parameter could: such a route is labelled by its own path).
    A plain route (the OpenAPI document) may leave only its endpoint: with no parameters, the path
    the request took is its template.
    """
    path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str) or not path.startswith("/"):
        return str(scope["path"]) if "endpoint" in scope and not scope.get("path_params") else UNMATCHED
    if ":path}" in path:
        return path
    segments = str(scope["path"]).split("/")
    covered = path.count("/")
    return "/".join(segments[: len(segments) - covered]) + path


class LedgerCollector:
    """The ledger's figures as metric families, asked of the ledger at each scrape."""

    def __init__(self, ledger: Callable[[], LedgerAPI]) -> None:
        self.ledger = ledger

    def describe(self) -> list[Metric]:
        return []  # the registry must not ask the ledger when the collector is registered

    def collect(self) -> Iterator[Metric]:
        yield from families(self.ledger().metrics())


def families(m: LedgerMetrics) -> Iterator[Metric]:
    """The metric families of one `metrics` snapshot (pure, for the tests)."""
    yield _counter("cityledger_readings_sealed", "Readings sealed into the ledger.", m["readings_sealed"])
    yield _counter("cityledger_blocks_sealed", "Blocks in the chain.", m["blocks_sealed"])
    yield _counter("cityledger_duplicates", "Re-sent readings settled as duplicates.", m["duplicates"])
    refused = CounterMetricFamily(
        "cityledger_quarantined",
        "Messages refused, by reason: stored in quarantine, or only counted (over the per-device cap, over budget).",
        labels=["reason"],
    )
    for reason, count in sorted(m["rejected"].items()):
        refused.add_metric([reason], count)
    yield refused
    yield GaugeMetricFamily(
        "cityledger_quarantine_stored", "Quarantine entries kept (rows, with their payloads).", m["quarantine_stored"]
    )
    yield GaugeMetricFamily(
        "cityledger_ingest_running",
        "1 while ingest runs; 0: the figures are the database's alone.",
        int(m["ingest_running"]),
    )
    if m["ingest_started_at"] is not None:
        yield GaugeMetricFamily(
            "cityledger_ingest_started_timestamp_seconds",
            "When the running ingest started (its histograms count from then).",
            m["ingest_started_at"] / 1000,
        )
    if m["queue_depth"] is not None:
        yield GaugeMetricFamily(
            "cityledger_ingest_queue_depth",
            "Messages ingest has received and not yet sealed (not those the broker still queues).",
            m["queue_depth"],
        )
    if m["lag_ms"] is not None:
        yield GaugeMetricFamily(
            "cityledger_ingest_lag_seconds",
            "How far the newest block is behind its devices' clocks (the median device's).",
            m["lag_ms"] / 1000,
        )
    if m["last_seal_at"] is not None:
        yield GaugeMetricFamily(
            "cityledger_last_seal_timestamp_seconds", "When the newest block was sealed.", m["last_seal_at"] / 1000
        )
        yield GaugeMetricFamily(
            "cityledger_last_seal_age_seconds",
            "Seconds since the newest block was sealed, by the ledger's clock.",
            max(0, m["at"] - m["last_seal_at"]) / 1000,
        )
    yield _histogram(
        "cityledger_seal_seconds",
        "Seconds from a batch's commit starting to its block being sealed (ingest's batches, since it started).",
        m["seal_seconds"],
    )
    yield _histogram(
        "cityledger_ack_latency_seconds",
        "Seconds from ingest receiving a reading to publishing the acks of the block that sealed it.",
        m["ack_latency_seconds"],
    )
    runs = CounterMetricFamily("cityledger_job_runs", "Runs of each background job.", labels=["job"])
    failures = CounterMetricFamily("cityledger_job_failures", "Failed runs of each background job.", labels=["job"])
    failing = GaugeMetricFamily(
        "cityledger_job_failing",
        "Failures in a row of each background job, up to its last run (0: ok).",
        labels=["job"],
    )
    last_ok = GaugeMetricFamily(
        "cityledger_job_last_success_timestamp_seconds", "When each job last succeeded.", labels=["job"]
    )
    last_seconds = GaugeMetricFamily(
        "cityledger_job_last_duration_seconds", "How long each job's last run took.", labels=["job"]
    )
    for job, j in sorted(m["jobs"].items()):
        runs.add_metric([job], j["runs"])
        failures.add_metric([job], j["failures_total"])
        failing.add_metric([job], j["failures_in_a_row"])
        if j["last_ok_at"] is not None:
            last_ok.add_metric([job], j["last_ok_at"] / 1000)
        if j["last_seconds"] is not None:
            last_seconds.add_metric([job], j["last_seconds"])
    yield from (runs, failures, failing, last_ok, last_seconds)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value)


def _histogram(name: str, documentation: str, h: HistogramDoc) -> HistogramMetricFamily:
    buckets = [(floatToGoString(le), float(n)) for le, n in zip(h["le"], h["counts"])]
    return HistogramMetricFamily(
        name, documentation, buckets=[*buckets, ("+Inf", float(h["count"]))], sum_value=h["sum"]
    )
