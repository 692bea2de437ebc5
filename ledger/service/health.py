"""How far behind ingest is: what operators watch, and what silence is judged against.

A device is silent when the ledger has not heard from it for a while. While ingest
is behind (a flood, a burst after an outage, a heavy job), readings wait in the
broker's queue or ingest's inbox and the ledger hears from every device late,
though none of them stopped talking. So silence is judged against ingest's own
lag: the time by which the ledger is behind the devices' clocks, plus the time
since the last seal while messages are waiting.

Plain functions over plain values; `IngestHealth` is the one mutable holder, kept
by the ingest service and read by the API in the same process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger.service.results.chain import IngestState


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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sealed(self, sealed_at: int, readings: Sequence[tuple[str, int]]) -> None:
        """A block sealed with these (device, ts) readings."""
        with self._lock:
            self.last_seal_at = sealed_at
            self.blocks += 1
            if readings:
                self.readings += len(readings)
                self.lag_ms = block_lag_ms(sealed_at, readings)

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
