"""`cityledger serve` (the transparency log's files over HTTP) and `cityledger tlog ...` (its verifier
key, its newest checkpoint, and the witness policy its checkpoints must meet): PROTOCOL.md section 7.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ledger.cli.common import Subcommands, add, emit, group, home_of, ledger_api, opt, stop_on_signals


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(
        sub, "serve", cmd_serve, "serve the transparency log (checkpoint, tiles, entry bundles) read-only over HTTP"
    )
    opt(p, "--host", "127.0.0.1", "address to listen on")
    opt(p, "--port", 8470, "port to listen on (0: any free one)")
    tsub = group(sub, "tlog", "the transparency log: its key, its checkpoint, its witness policy")
    add(tsub, "vkey", cmd_vkey, "print the log's note verifier key: what witnesses and verifiers trust")
    add(tsub, "checkpoint", cmd_checkpoint, "print the newest published checkpoint, with its cosignatures")
    p = add(tsub, "policy", cmd_policy, "show the witness policy, or set it from a C2SP tlog-policy file", json=True)
    p.add_argument("--set", metavar="FILE", help="the new policy (checked before it replaces the old one)")
    p.add_argument("--remove", action="store_true", help="publish checkpoints without cosignatures again")


def cmd_serve(args: argparse.Namespace) -> int:
    from ledger.service.tile_server import serve

    home = home_of(args)
    if not home.tlog.is_dir():
        print(f"no transparency log in {home.root} yet: run `cityledger init` and seal a block", file=sys.stderr)
        return 2
    return serve(home.tlog, args.host, args.port, stop_on_signals())


def cmd_vkey(args: argparse.Namespace) -> int:
    print(ledger_api(args).log_vkey())
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    path = home_of(args).tlog / "checkpoint"
    if not path.exists():
        print("no checkpoint published yet", file=sys.stderr)
        return 1
    sys.stdout.write(path.read_text())
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from ledger.chain.policy import format_policy, parse_policy, quorum_of
    from ledger.home import write_private

    home = home_of(args)
    if args.set and args.remove:
        print("--set or --remove, not both", file=sys.stderr)
        return 2
    if args.set:
        policy = parse_policy(Path(args.set).read_text())  # a PolicyError names the line
        missing = [w.name for w in policy.witnesses if not w.url]
        if policy.requires_cosignatures() and missing:
            print(f"witnesses without a URL cannot be asked to cosign: {', '.join(missing)}", file=sys.stderr)
            return 2
        write_private(home.witness_policy, format_policy(policy))
    elif args.remove:
        home.witness_policy.unlink(missing_ok=True)
    if not home.witness_policy.exists():
        text, quorum = "", "none"
    else:
        text = home.witness_policy.read_text()
        quorum = quorum_of(parse_policy(text))
    if args.json:
        emit({"policy": text, "quorum": quorum})
    else:
        sys.stdout.write(text or "# no witness policy: checkpoints carry the log's signature only\n")
        print(f"# quorum: {quorum}")
    return 0
