"""`cityledger`: the console command. Thin: parse flags, call a module, print.

This module only assembles the command line and runs it (`main`). Each group of commands
lives in a module of its own, which declares its subcommands (`register`) and holds their
handlers; ledger/cli/common.py holds what they share (options, the ledger, printing JSON):

    city.py       init, broker, ingest, anchor, districts, fleet, dashboard, scheduler,
                  up, systemd-units, bench
    devices.py    devices
    witnesses.py  witnesses, witness
    people.py     accounts, operators
    billing.py    tariffs, parking, meters, adjust, adjustments, bill, billing
    anomalies.py  anomalies
    status.py     status, quarantine
    verify.py     verify (also --archive, --districts)
    archive.py    archive
    receipts.py   receipt, verify-receipt
    tlog.py       serve, tlog
    monitor.py    monitor
    keys.py       key-chain, rotate-ledger-key
    api.py        api, agencies, sharing

`cityledger --help` lists the commands in the order of GROUPS, each group's in its own order.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from ledger.cli import (
    anomalies,
    api,
    archive,
    billing,
    city,
    devices,
    keys,
    monitor,
    people,
    receipts,
    status,
    tlog,
    verify,
    witnesses,
)
from ledger.cli.common import common_options

GROUPS: tuple[ModuleType, ...] = (
    city,
    devices,
    witnesses,
    people,
    billing,
    anomalies,
    status,
    verify,
    archive,
    receipts,
    tlog,
    monitor,
    keys,
    api,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityledger", description=__doc__.splitlines()[0], parents=[common_options()])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever a command or a library creates (DuckDB's file and WAL, SQLite outboxes, logs,
    # the broker's files, since its process inherits this) is its owner's alone.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from ledger.errors import LedgerError

    try:
        return int(args.handler(args))
    except (LedgerError, FileNotFoundError, ValueError, KeyError, LookupError) as exc:
        print(f"cityledger: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
