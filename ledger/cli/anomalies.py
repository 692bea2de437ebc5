"""`cityledger anomalies ...`: run the detectors (leaks, tampering, dead devices, hostile traffic), list
what they raised, and record what an operator found (ack, resolve, dismiss).
"""

from __future__ import annotations

import argparse
from typing import Any

from ledger.cli.common import Handler, Subcommands, add, emit, group, ledger_api, operator_id, operator_option


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    ansub = group(sub, "anomalies", "leaks, tampering, dead devices, hostile traffic: find and investigate")
    p = add(ansub, "scan", cmd_anomalies_scan, "run every detector now")
    p.add_argument("--days", type=int, default=14, help="how far back the detectors look")
    p = add(ansub, "list", cmd_anomalies_list, "anomalies, most recently changed first", json=True)
    p.add_argument("--status", choices=["open", "acknowledged", "resolved", "dismissed"])
    p.add_argument("--type")
    p.add_argument("--district")
    p = add(ansub, "show", cmd_anomalies_show, "one anomaly with its evidence and history")
    p.add_argument("id")
    for action, status, needs_note in (
        ("ack", "acknowledged", False),
        ("resolve", "resolved", True),
        ("dismiss", "dismissed", True),
    ):
        p = add(ansub, action, cmd_anomalies_act(status), f"mark an anomaly {status}")
        p.add_argument("id")
        p.add_argument("--note", required=needs_note, help="what was found or done")
        operator_option(p)


def cmd_anomalies_scan(args: argparse.Namespace) -> int:
    emit(ledger_api(args).scan_anomalies(lookback_days=args.days))
    return 0


def _anomaly_line(a: dict[str, Any]) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp((a["window_end"] or a["raised_at"]) / 1000, dt.UTC).strftime("%m-%d %H:%M")
    return (
        f"{a['id']:<14} {a['status']:<12} {a['type']:<17} {a['severity'] or '-':<7} {a['device']:<20} "
        f"{a['district']:<6} {when}  {a['detail'] or ''}"
    )


def cmd_anomalies_list(args: argparse.Namespace) -> int:
    rows = ledger_api(args).anomalies(status=args.status, type=args.type, district=args.district)
    if args.json:
        emit(rows)
        return 0
    for a in rows:
        print(_anomaly_line(a))
    print(f"{len(rows)} anomalies")
    return 0


def cmd_anomalies_show(args: argparse.Namespace) -> int:
    emit(ledger_api(args).anomaly(anomaly_id=args.id))
    return 0


def cmd_anomalies_act(status: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        a = ledger_api(args).act_on_anomaly(
            anomaly_id=args.id, status=status, operator=operator_id(args), note=getattr(args, "note", None)
        )
        print(_anomaly_line(a))
        return 0

    return run
