"""`cityledger key-chain` and `cityledger rotate-ledger-key`: the ledger's signing key and its rotations
(a device's own key is under `devices`: ledger/cli/devices.py).
"""

from __future__ import annotations

import argparse

from ledger.cli.common import Subcommands, add, emit, ledger_api, operator_id, operator_option


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    add(sub, "key-chain", cmd_key_chain, "the signed headers that rotate the ledger key, oldest first")
    p = add(
        sub,
        "rotate-ledger-key",
        cmd_rotate_ledger_key,
        "hand block signing to a new ledger key, announced by the old one",
    )
    operator_option(p)


def cmd_key_chain(args: argparse.Namespace) -> int:
    emit(ledger_api(args).key_chain())
    return 0


def cmd_rotate_ledger_key(args: argparse.Namespace) -> int:
    emit(ledger_api(args).rotate_ledger_key(operator=operator_id(args)))
    return 0
