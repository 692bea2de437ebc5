"""`cityledger monitor`: an independent auditor of any cityledger log, over HTTP alone.

The command is a thin door to ledger/witnesses/monitor.py, which declares the options too,
so `python -m ledger.witnesses.monitor` (for an auditor who installs nothing else) takes
the very same ones.
"""

from __future__ import annotations

import argparse

from ledger.cli.common import Subcommands, add, stop_on_signals


def register(sub: Subcommands) -> None:
    """Declare `monitor` under `sub`, the top-level subcommands."""
    from ledger.witnesses.monitor import add_arguments

    p = add(
        sub,
        "monitor",
        cmd_monitor,
        "follow a log over HTTP (C2SP tiles), re-check every entry and checkpoint; alarm (exit 3) on any problem",
    )
    add_arguments(p)


def cmd_monitor(args: argparse.Namespace) -> int:
    from ledger.witnesses.monitor import run_from_args

    return run_from_args(args, stop_on_signals())
