"""How far behind ingest is: what operators watch, and what silence is judged against.

A device is silent when the ledger has not heard from it for a while. While ingest
is behind (a flood, a burst after an outage, a heavy job), readings wait in the
broker's queue or ingest's inbox and the ledger hears from every device late,
though none of them stopped talking. So silence is judged against ingest's own
lag: the time by which the ledger is behind the devices' clocks, plus the time
since the last seal while messages are waiting.

Plain functions over plain values; `IngestHealth` is the one mutable holder, kept
by the ingest service and read by the API in the same process. It also keeps the two
histograms Prometheus scrapes (issue 19: seal time, ack latency), fed once per block.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger.service.results.chain import IngestState
from ledger.service.results.metrics import HistogramDoc

# Upper bounds in seconds. A block of 5,000 readings commits in tens of milliseconds; an ack
# normally follows its reading by about the block interval (1 s), minutes only in a backlog.
SEAL_BOUNDS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ACK_BOUNDS_S: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


def block_lag_ms(sealed_at: int, readings: Sequence[tuple[str, int]]) -> int:
    """Median age, over the block's devices, of each one's newest reading when the block was
    sealed (device clock to seal), never negative.

    The median, not the oldest: one device re-sending a day's backlog after an outage is not
    a sign that ingest is behind; most devices being late is. Per device, not per reading:
    one device whose clock reset to 1970 and that fills most of a quiet block would
    otherwise make the whole city's lag decades long, and silence detection with it (issue 15).
    """
    newest: dict[str, int] = {}
    for device, ts in readings:
        if ts > newest.get(device, ts - 1):
            newest[device] = ts
    if not newest:
        return 0
    ordered = sorted(newest.values())
    return max(0, sealed_at - ordered[len(ordered) // 2])


def silence_margin_ms(lag_ms: int, last_seal_at: int | None, pending: int, now: int) -> int:
    """How much later than usual the ledger may hear from a device that is still talking.

    The newest block's lag, and, while messages wait unsealed, the time since the last seal
    (a stalled ingest seals nothing, so its newest block alone would look on time).
    """
    stalled = now - last_seal_at if pending and last_seal_at is not None else 0
    return max(0, lag_ms) + max(0, stalled)


class Histogram:
    """Prometheus's histogram in plain numbers (cumulative counts at fixed bounds, a sum, a count),
    so that ingest needs no metrics library, and a block's thousands of observations cost one
    sort of nearly sorted times and a bisection per bound rather than work per reading."""

    __slots__ = ("le", "counts", "sum", "count", "_le_ms")

    def __init__(self, le: Sequence[float]) -> None:
        self.le = tuple(le)
        self._le_ms = tuple(round(b * 1000) for b in self.le)
        self.counts = [0] * len(self.le)  # cumulative: observations <= le[i]
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        for i in range(bisect_left(self.le, seconds), len(self.le)):
            self.counts[i] += 1
        self.sum += seconds
        self.count += 1

    def observe_since(self, at_ms: int, since_ms: Sequence[int]) -> None:
        """One observation per time in `since_ms`: the seconds from it to `at_ms` (one after `at_ms`, a
        clock stepped back, lands in the lowest bucket, and the sum never drops below zero)."""
        n = len(since_ms)
        if not n:
            return
        ordered = sorted(since_ms)  # arrival order, nearly sorted already: about linear
        for i, bound in enumerate(self._le_ms):  # waited <= bound  <=>  since >= at - bound
            self.counts[i] += n - bisect_left(ordered, at_ms - bound)
        self.sum += max(0, n * at_ms - sum(ordered)) / 1000
        self.count += n

    def doc(self) -> HistogramDoc:
        return {"le": list(self.le), "counts": list(self.counts), "sum": self.sum, "count": self.count}


@dataclass
class IngestHealth:
    """Ingest's view of itself, updated as blocks seal (the writer's `on_sealed`)."""

    workers: int
    started_at: int
    pending: Callable[[], int] = lambda: 0  # messages received and not yet sealed
    lag_ms: int = 0
    last_seal_at: int | None = None
    blocks: int = 0
    readings: int = 0
    seal_seconds: Histogram = field(default_factory=lambda: Histogram(SEAL_BOUNDS_S))
    ack_latency: Histogram = field(default_factory=lambda: Histogram(ACK_BOUNDS_S))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sealed(self, sealed_at: int, readings: Sequence[tuple[str, int]], seconds: float | None = None) -> None:
        """A block sealed with these (device, ts) readings, its commit having taken `seconds`
        (None: not a batch of ingest's, e.g. an operator's entry sealed through the API)."""
        with self._lock:
            self.last_seal_at = sealed_at
            self.blocks += 1
            if readings:
                self.readings += len(readings)
                self.lag_ms = block_lag_ms(sealed_at, readings)
            if seconds is not None:
                self.seal_seconds.observe(seconds)

    def acked(self, at_ms: int, received_at: Sequence[int]) -> None:
        """The acks of a block went out at `at_ms`; its readings were received at `received_at`."""
        with self._lock:
            self.ack_latency.observe_since(at_ms, received_at)

    def histograms(self) -> tuple[HistogramDoc, HistogramDoc]:
        """Seal time and ack latency, as Prometheus reads them (one consistent copy)."""
        with self._lock:
            return self.seal_seconds.doc(), self.ack_latency.doc()

    def snapshot(self, now: int) -> IngestState:
        with self._lock:
            pending = self.pending()
            return {
                "running": True,
                "workers": self.workers,
                "started_at": self.started_at,
                "lag_ms": self.lag_ms,
                "last_seal_at": self.last_seal_at,
                "pending": pending,
                "silence_margin_ms": silence_margin_ms(self.lag_ms, self.last_seal_at, pending, now),
                "blocks_sealed": self.blocks,
                "readings_sealed": self.readings,
            }
