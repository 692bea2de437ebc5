"""What `metrics` answers: the ledger's figures for Prometheus (ledger/http/metrics.py turns them
into metric families at scrape time).

A typed snapshot rather than Prometheus text: the ingest process keeps no metrics library and
no registry of its own; it counts per block (ledger/service/health.py), the database holds the
totals, and the API process, which scrapes them over the socket, owns the exposition format.
"""

from __future__ import annotations

from typing_extensions import TypedDict

from ledger.documents import document


@document
class HistogramDoc(TypedDict):
    """A histogram as Prometheus keeps one: at each upper bound `le` (seconds), how many observations
    were at most that (cumulative); `count` is the +Inf bucket."""

    le: list[float]
    counts: list[int]
    sum: float
    count: int


@document
class JobMetrics(TypedDict):
    """One background job of the scheduler (ledger/service/jobs.py)."""

    runs: int
    failures_total: int
    failures_in_a_row: int
    last_ok_at: int | None
    last_seconds: float | None


@document
class LedgerMetrics(TypedDict):
    """`metrics`: the database's totals (right after a restart too), and, while ingest runs, its
    view of itself since it started (`ingest_running`; else the ingest fields are empty)."""

    at: int  # the ledger's clock when this was taken (ms)
    ingest_running: bool
    ingest_started_at: int | None
    readings_sealed: int  # readings in the ledger
    blocks_sealed: int  # blocks in the chain
    duplicates: int  # re-sent readings counted as duplicates
    rejected: dict[str, int]  # reason -> messages refused (stored in quarantine or only counted)
    quarantine_stored: int  # quarantine rows kept (the rest were over the per-device cap)
    last_seal_at: int | None
    queue_depth: int | None  # messages ingest holds and has not sealed; None without ingest
    lag_ms: int | None  # the newest block's lag behind the devices' clocks (ledger/service/health.py)
    seal_seconds: HistogramDoc
    ack_latency_seconds: HistogramDoc
    jobs: dict[str, JobMetrics]
