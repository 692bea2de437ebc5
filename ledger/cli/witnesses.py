"""`cityledger witnesses ...` (the logins of outside parties that follow the ledger's headers, and what
they reported) and `cityledger witness`, which runs a witness.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ledger.cli.common import Subcommands, add, emit, group, ledger_api, mqtt_tls, opt, stop_on_signals


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    wsub = group(sub, "witnesses", "logins for outside parties that follow the header stream")
    p = add(wsub, "add", cmd_witnesses_add, "create a witness login (password shown once)")
    p.add_argument("name")
    p = add(
        wsub, "reports", cmd_witnesses_reports, "what witnesses reported: alarms and the heads they hold", json=True
    )
    p.add_argument("--kind", choices=["alarm", "head"])
    p = add(
        sub, "witness", cmd_witness, "follow the ledger's headers, keep them, alarm on fork, rollback or bad signature"
    )
    p.add_argument("--store", required=True, help="directory where this witness keeps what it accepted")
    opt(p, "--name", "witness", "this witness's broker login")
    p.add_argument("--password-file", help="file holding the witness's broker password")
    p.add_argument("--ledger-key", help="hex ledger key to trust (required on first run)")
    p.add_argument(
        "--district",
        help="follow this district's chain instead of the city's (its first key: `cityledger districts list`)",
    )


def cmd_witnesses_add(args: argparse.Namespace) -> int:
    emit(ledger_api(args).add_witness(name=args.name))
    return 0


def cmd_witnesses_reports(args: argparse.Namespace) -> int:
    rows = ledger_api(args).witness_reports(kind=args.kind)
    if args.json:
        emit(rows)
    else:
        for r in rows:
            print(f"{r['received_at']}  {r['witness']:<16} {r['kind']:<6} {r['body']}")
        print(f"{len(rows)} reports")
    return 0


def cmd_witness(args: argparse.Namespace) -> int:
    from ledger.witnesses.follower import run_witness

    password = (
        open(args.password_file).read().strip()
        if args.password_file
        else os.environ.get("CITYLEDGER_WITNESS_PASSWORD", "")
    )
    if not password:
        print(
            "a witness needs its broker password: --password-file FILE or CITYLEDGER_WITNESS_PASSWORD", file=sys.stderr
        )
        return 2
    from ledger.chain.protocol import ChainTopics

    return run_witness(
        Path(args.store),
        host=args.mqtt_host,
        port=args.mqtt_port,
        name=args.name,
        password=password,
        ledger_key=args.ledger_key,
        stop=stop_on_signals(),
        tls=mqtt_tls(args),
        chain=ChainTopics(args.district),
    )
