"""`cityledger receipt` (the proof that a reading is in the ledger) and `cityledger verify-receipt`
(checking one offline, from the files named only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ledger.cli.common import Subcommands, add, emit, home_of, ledger_api


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(sub, "receipt", cmd_receipt, "print the receipt proving a reading is in the ledger (PROTOCOL.md section 5)")
    p.add_argument("device")
    p.add_argument("seq", type=int)
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument(
        "--anchored",
        action="store_true",
        help="from a district's home: with the city anchor covering it, so that it verifies against the city's key",
    )
    p = add(
        sub,
        "verify-receipt",
        cmd_verify_receipt,
        "check a receipt offline: device signature, inclusion, block "
        "signature (and, for an anchored receipt, the link to the city's anchor)",
        json=True,
    )
    p.add_argument("file", help="receipt JSON file, or - for standard input")
    p.add_argument(
        "--ledger-key", required=True, help="hex ledger public key you trust (the city's, for an anchored receipt)"
    )
    p.add_argument("--key-chain", help="file from `cityledger key-chain`, when the ledger key has rotated since")


def cmd_receipt(args: argparse.Namespace) -> int:
    from ledger.chain.receipts import encode_receipt

    if args.anchored:
        from ledger.service.cityaudit import anchored_receipt

        data = encode_receipt(anchored_receipt(home_of(args), args.device, args.seq))
    else:
        data = encode_receipt(ledger_api(args).receipt(device=args.device, seq=args.seq))
    if args.out:
        Path(args.out).write_bytes(data)
    else:
        sys.stdout.buffer.write(data + (b"\n" if sys.stdout.isatty() else b""))
    return 0


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Offline: reads only the files named, never the home, the database or the network."""
    from ledger.chain.anchored import anchored_ok, is_anchored, verify_anchored
    from ledger.chain.keychain import KeyChainError, key_for_height
    from ledger.chain.receipts import receipt_ok, verify_receipt

    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    trusted = args.ledger_key.lower()
    try:
        anchored = is_anchored(json.loads(data))
    except ValueError:
        anchored = False
    if args.key_chain:
        try:
            receipt = json.loads(data)
            height = receipt["anchor"]["city_block"]["height"] if anchored else receipt["block"]["height"]
            trusted = key_for_height(trusted, json.loads(Path(args.key_chain).read_bytes()), height)
        except (KeyChainError, ValueError, KeyError, TypeError) as exc:
            print(f"key chain refused: {exc}", file=sys.stderr)
            return 1
    checks = verify_anchored(data, trusted) if anchored else verify_receipt(data, trusted)
    ok = anchored_ok(checks) if anchored else receipt_ok(checks)
    if args.json:
        emit({"ok": ok, "checks": [vars(c) for c in checks]})
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<16} {c.detail}")
        print("receipt valid" if ok else "receipt REFUSED")
    return 0 if ok else 1
