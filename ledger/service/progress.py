"""A progress line for long jobs, rewritten in place on a terminal, sparse otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """`update(done, total)` as often as you like; it redraws at most 10 times a second."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream, width
        self.started = time.monotonic()
        self._last = 0.0
        self._tty = stream.isatty()
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        interval = 0.1 if self._tty else 5.0
        if now - self._last < interval and done != total:
            return
        self._last = now
        frac = min(done / total, 1.0) if total else 0.0
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        text = f"{self.label} [{bar}] {done}/{total or '?'} {now - self.started:.1f}s"
        self.stream.write(("\r" + text) if self._tty else (text + "\n"))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn and self._tty:
            self.stream.write("\n")
            self.stream.flush()
