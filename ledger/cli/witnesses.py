"""`cityledger witnesses ...` (the logins of outside parties that follow the ledger's headers, and what
they reported) and `cityledger witness ...`, which runs a witness.

`cityledger witness` is a group because a witness now comes in two kinds: `serve`, a C2SP
tlog-witness that logs ask over HTTP for cosignatures (PROTOCOL.md section 7; with `init`,
`key` and `trust` to set up its store), and `follow`, the original follower of the header
stream over MQTT, unchanged but for its name.
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
    w = group(sub, "witness", "run a witness: a C2SP tlog-witness (serve), or a follower of the header stream (follow)")
    p = add(
        w, "init", cmd_witness_init, "make a witness store and its key (never replaces one); print its verifier key"
    )
    p.add_argument("--store", required=True, help="the witness's directory (made 0700)")
    p.add_argument("--name", required=True, help="the witness's key name, a schema-less URL such as witness.example/w1")
    p = add(w, "key", cmd_witness_key, "print the witness's verifier key (what a log's witness policy names)")
    p.add_argument("--store", required=True, help="the witness's directory")
    p = add(w, "trust", cmd_witness_trust, "serve a log: add its verifier key (type 0x01; its name is the origin)")
    p.add_argument("--store", required=True, help="the witness's directory")
    p.add_argument("vkey", help="the log's verifier key, <origin>+<key id>+<base64 key>")
    p = add(w, "serve", cmd_witness_serve, "answer C2SP add-checkpoint requests over HTTP with cosignatures")
    p.add_argument("--store", required=True, help="the witness's directory (see `witness init`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7380, help="port to listen on; 0 picks a free one (default 7380)")
    p.add_argument("--prefix", default="", help="URL prefix of add-checkpoint and status, e.g. /witness (default none)")
    p.add_argument(
        "--alarm-after",
        type=float,
        default=300.0,
        help="alarm when a log that submitted before sends nothing for this many seconds (default 300)",
    )
    p = add(
        w, "follow", cmd_witness, "follow the ledger's headers, keep them, alarm on fork, rollback or bad signature"
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


def _problem(message: str) -> int:
    print(f"cityledger witness: {message}", file=sys.stderr)
    return 2


def cmd_witness_init(args: argparse.Namespace) -> int:
    from ledger.witnesses.server import WitnessProblem, init_store

    made = init_store(Path(args.store), args.name)
    if isinstance(made, WitnessProblem):
        return _problem(made.message)
    print(made.vkey())
    return 0


def cmd_witness_key(args: argparse.Namespace) -> int:
    from ledger.witnesses.server import WitnessProblem, read_identity

    identity = read_identity(Path(args.store))
    if isinstance(identity, WitnessProblem):
        return _problem(identity.message)
    print(identity.verifier.vkey())
    return 0


def cmd_witness_trust(args: argparse.Namespace) -> int:
    from ledger.witnesses.server import WitnessProblem, trust_log

    trusted = trust_log(Path(args.store), args.vkey)
    if isinstance(trusted, WitnessProblem):
        return _problem(trusted.message)
    print(f"trusting log {trusted.name} ({trusted.vkey()})")
    return 0


def cmd_witness_serve(args: argparse.Namespace) -> int:
    from ledger.witnesses.server import WitnessProblem, serve

    def listening(host: str, port: int) -> None:
        print(f"witness listening on http://{host}:{port}{args.prefix}/add-checkpoint", flush=True)

    problem = serve(
        Path(args.store),
        host=args.host,
        port=args.port,
        stop=stop_on_signals(),
        alarm_after_s=args.alarm_after,
        prefix=args.prefix,
        on_listening=listening,
    )
    if isinstance(problem, WitnessProblem):
        return _problem(problem.message)
    return 0
