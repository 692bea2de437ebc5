"""What a city that configures nothing gets.

The city's time zone is configuration: the tariff book's `timezone` (sealed in the chain
with the tariffs, so bills, the month-end close, anomaly days and the dashboard all read
the same one). This is its default, used by a ledger that has no tariffs yet and by pure
functions called without one. `CITYLEDGER_TIMEZONE` sets it for a command run where no
ledger is at hand (parsing `--from 2026-03-01` before asking the ledger anything).
"""

from __future__ import annotations

import os

DEFAULT_TIMEZONE = "Asia/Shanghai"  # Beijing's


def configured_timezone() -> str:
    """The time zone named by CITYLEDGER_TIMEZONE, else the default."""
    return os.environ.get("CITYLEDGER_TIMEZONE") or DEFAULT_TIMEZONE
