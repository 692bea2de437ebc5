"""Many Ed25519 verifications across processes: a deep audit is bound by them.

PyNaCl holds the GIL while it verifies, so threads would not help; a pool of
processes (spawned, so that a threaded parent such as the ingest is safe to fork
from) uses every core.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

Item = tuple[bytes, bytes, bytes]  # public key, message, signature
CHUNK = 2048
NICENESS = 10
"""The checkers' lower priority: a deep audit inside ingest leaves the cores to sealing first
(issue 14, `cityledger bench --job deep-audit`); on an idle machine they still take every core."""


def first_bad(items: Sequence[Item]) -> int:
    """Index of the first item whose signature does not verify, or -1."""
    keys: dict[bytes, VerifyKey] = {}
    for i, (pk, msg, sig) in enumerate(items):
        key = keys.get(pk)
        if key is None:
            try:
                key = keys[pk] = VerifyKey(pk)
            except (ValueError, TypeError):
                return i
        try:
            key.verify(msg, sig)
        except (BadSignatureError, ValueError, TypeError):
            return i
    return -1


class ParallelVerifier:
    """`first_bad` over a process pool, one worker per core.

    `submit` hands a chunk to the pool and returns at once, so the caller keeps
    reading the database while the workers verify; `failures` yields results
    strictly in submission order, so "first" still means first in the chain.
    """

    def __init__(self, workers: int | None = None, max_in_flight: int = 16) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.max_in_flight = max_in_flight
        self._pool: ProcessPoolExecutor | None = None
        self._in_flight: deque[tuple[Future[int] | int, object]] = deque()

    def __enter__(self) -> ParallelVerifier:
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice, initargs=(NICENESS,)
            )
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._pool:
            self._pool.shutdown(cancel_futures=True)

    def submit(self, items: Sequence[Item], tag: object) -> None:
        """Queue a chunk; `tag` comes back with its result."""
        result: Future[int] | int = self._pool.submit(first_bad, items) if self._pool else first_bad(items)
        self._in_flight.append((result, tag))

    def ready(self, wait: bool = False) -> list[tuple[int, object]]:
        """Results in submission order: all of them with `wait`, else those done (and
        enough to bring the number in flight under the limit)."""
        out = []
        while self._in_flight:
            result, tag = self._in_flight[0]
            must = wait or len(self._in_flight) > self.max_in_flight
            if isinstance(result, Future) and not result.done() and not must:
                break
            self._in_flight.popleft()
            out.append((result.result() if isinstance(result, Future) else result, tag))
        return out

    def first_bad(self, items: Sequence[Item]) -> int:
        if self._pool is None or len(items) <= CHUNK:
            return first_bad(items)
        chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
        for n, bad in enumerate(self._pool.map(first_bad, chunks)):
            if bad >= 0:
                return n * CHUNK + bad
        return -1
