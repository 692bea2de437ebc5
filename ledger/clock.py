"""The one clock: Unix epoch milliseconds.

Every `at` in an entry, every `received_at`, every time a job or a part records is in
these units from this function, so a test that needs to move time patches one name
(`now_ms` where it is imported) and nothing drifts between modules that each kept
their own copy.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, by the wall clock."""
    return time.time_ns() // 1_000_000
