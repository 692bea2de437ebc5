"""`cityledger archive`: append the sealed blocks not yet archived to a Parquet archive (`verify
--archive` audits it: ledger/cli/verify.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ledger.cli.common import Subcommands, add, emit, ledger_api


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(
        sub,
        "archive",
        cmd_archive,
        "append sealed blocks not yet in DIR to its Parquet archive (docs/verifying.md)",
        json=True,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="archive directory (created if need be)")
    p.add_argument("--upto-height", type=int, metavar="H", help="archive blocks up to H only (default: all sealed)")


def cmd_archive(args: argparse.Namespace) -> int:
    from ledger.service.progress import ProgressBar

    bar = None if args.json else ProgressBar("archive", stream=sys.stderr)
    result = ledger_api(args).archive(
        out=str(Path(args.out).resolve()), upto_height=args.upto_height, progress=bar.update if bar else None
    )
    if bar:
        bar.close()
    written = result["segments_written"]
    if args.json:
        emit(result)
    elif written:
        print(
            f"archived blocks {result['first_height']}..{result['last_height']} in {written} "
            f"new segment{'s' if written > 1 else ''} ({result['readings']} readings, {result['entries']} "
            f"entries, {result['bytes'] / 1e6:.1f} MB) to {result['archive']} in {result['seconds']:.2f} s"
        )
    else:
        held = f"blocks up to {result['last_height']}" if result["last_height"] is not None else "no blocks"
        print(f"archive up to date: {result['archive']} holds {held}")
    return 0
