"""`cityledger verify`: the audit, recomputing the chain from its blocks, of the live ledger, of its
Parquet archive (--archive), or of a city and every district chain it anchors (--districts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ledger.cli.common import Subcommands, add, emit, home_of, ledger_api


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(
        sub,
        "verify",
        cmd_verify,
        "recompute leaves, roots, links and signatures; exit 1 at the first failure",
        json=True,
    )
    p.add_argument("--deep", action="store_true", help="also check every device signature")
    p.add_argument("--ledger-key", help="hex first ledger public key to trust (default: the home's first key)")
    p.add_argument("--witness", metavar="DIR", help="also compare with the headers a witness kept in DIR")
    p.add_argument(
        "--archive",
        metavar="DIR",
        help="verify the Parquet archive in DIR instead (files, chain, and its link to the live ledger)",
    )
    p.add_argument(
        "--districts",
        action="store_true",
        help="on a city home: also every district chain, from the keys the city chain names, and the anchors",
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from ledger.service.progress import ProgressBar

    if args.archive:
        return cmd_verify_archive(args)
    if args.districts:
        return cmd_verify_districts(args)
    bar = None if args.json else ProgressBar("verify", stream=sys.stderr)
    report = ledger_api(args).verify(
        deep=args.deep,
        ledger_key=args.ledger_key,
        witness=str(Path(args.witness).resolve()) if args.witness else None,
        progress=bar.update if bar else None,
    )
    if bar:
        bar.close()
    if args.json:
        emit(report)
    else:
        state = "intact" if report["ok"] else "FAILED"
        rate = report["readings"] / report["seconds"] if report["seconds"] else 0
        print(
            f"ledger {state}: {report['blocks']} blocks, {report['readings']} readings, "
            f"{report['entries']} entries in {report['seconds']:.2f} s ({rate:,.0f} readings/s, "
            f"{'deep' if report['deep'] else 'structural'})"
        )
        if "witness_blocks" in report:
            print(f"compared with {report['witness_blocks']} blocks held by the witness")
        _print_registry(report)
        if report["failure"] and (report["failed_block"] is not None or not report.get("disagreements")):
            print(f"first failure: {report['failure']}")
    return 0 if report["ok"] else 1


def _print_registry(report: dict[str, Any]) -> None:
    """--deep: whether the registry tables say what the chain says, and every place they do not."""
    if not report.get("registry_checked"):
        if report.get("deep") and report["failure"]:
            print("registry tables not compared: the chain fails first")
        return
    found = report.get("disagreements_found", 0)
    if not found:
        print("registry tables agree with the chain")
        return
    print(f"registry tables disagree with the chain in {found} place(s):")
    for d in report["disagreements"]:
        print(f"  {d['text']}")
    if found > len(report["disagreements"]):
        print(f"  ... and {found - len(report['disagreements'])} more")


def cmd_verify_districts(args: argparse.Namespace) -> int:
    from ledger.service.cityaudit import verify_city
    from ledger.service.progress import ProgressBar

    bars: dict[str, ProgressBar] = {}

    def progress(chain: str, done: int, total: int) -> None:
        if chain not in bars:
            for bar in bars.values():
                bar.close()
            bars[chain] = ProgressBar(f"verify {chain}", stream=sys.stderr)
        bars[chain].update(done, total)

    report = verify_city(
        home_of(args), deep=args.deep, ledger_key=args.ledger_key, progress=None if args.json else progress
    )
    for bar in bars.values():
        bar.close()
    if args.json:
        emit(report)
        return 0 if report["ok"] else 1
    for name, chain in [("city", report["city"]), *sorted(report["districts"].items())]:
        state = "intact" if chain["ok"] else "FAILED"
        height = chain.get("anchored_height")
        anchored = f", anchored up to height {height}" if height is not None else ""
        print(f"{name:<12} {state}: {chain['blocks']} blocks, {chain['readings']} readings{anchored}")
    print(
        f"anchors: {report['anchors']} district heads in the city chain, "
        + ("all held by their district chains" if report["anchor_failure"] is None else "NOT all held")
    )
    print(
        f"city {'intact' if report['ok'] else 'FAILED'}: {report['blocks']} blocks, {report['readings']} readings "
        f"in {report['seconds']:.2f} s ({'deep' if report['deep'] else 'structural'})"
    )
    if report["failure"]:
        print(f"first failure: {report['failure']}")
    return 0 if report["ok"] else 1


def cmd_verify_archive(args: argparse.Namespace) -> int:
    """`verify --archive DIR`: the audit over the Parquet files, reaching the live ledger only for its link."""
    from ledger.service.progress import ProgressBar
    from ledger.store.archive import verify_archive

    if args.witness:
        print("--witness compares the live ledger; it does not go with --archive", file=sys.stderr)
        return 2
    home = home_of(args)
    first_key = home.trusted_key.read_text().strip() if home.trusted_key.exists() else None
    bar = None if args.json else ProgressBar("verify", stream=sys.stderr)
    report = verify_archive(
        Path(args.archive).resolve(),
        live=ledger_api(args),
        ledger_key=args.ledger_key,
        first_key=first_key,
        deep=args.deep,
        progress=bar.update if bar else None,
    )
    if bar:
        bar.close()
    if args.json:
        emit(report)
    else:
        _print_archive_report(report)
    return 0 if report["ok"] else 1


def _print_archive_report(report: dict[str, Any]) -> None:
    state = "intact" if report["ok"] else "FAILED"
    rate = report["readings"] / report["seconds"] if report["seconds"] else 0
    span = f" (heights {report['first_height']}..{report['last_height']})" if report["last_height"] is not None else ""
    print(
        f"archive {state}: {report['blocks']} blocks{span}, {report['readings']} readings, {report['entries']} "
        f"entries in {report['seconds']:.2f} s ({rate:,.0f} readings/s, "
        f"{'deep' if report['deep'] else 'structural'})"
    )
    print(f"{report['files_checked']} files in {report['segments']} segment(s) checked against the manifest")
    for problem in report["file_failures"]:
        print(f"file failure: {problem}")
    if report["failure"]:
        print(f"first failure: {report['failure']}")
    link = report["link"]
    lead = "linked to the live ledger: " if link["ok"] else "NOT linked to the live ledger: " if link["checked"] else ""
    print(lead + link["detail"])
