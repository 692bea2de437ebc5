"""`cityledger receipt` (the proof that a reading is in the ledger) and `cityledger verify-receipt`
(checking one offline, from the files named only).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.cli.common import Subcommands, add, emit, home_of, ledger_api

if TYPE_CHECKING:
    from ledger.chain.receipts import Check


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(sub, "receipt", cmd_receipt, "print the receipt proving a reading is in the ledger (PROTOCOL.md section 5)")
    p.add_argument("device")
    p.add_argument("seq", type=int)
    p.add_argument("--out", help="write to this file instead of standard output")
    p.add_argument(
        "--format",
        choices=["json", "tlog-proof"],
        default="json",
        help="json: version 1 (PROTOCOL.md section 5); tlog-proof: version 2, a C2SP tlog-proof under the newest "
        "cosigned checkpoint (section 7)",
    )
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
    p.add_argument("file", help="receipt file (JSON, or a .tlog-proof), or - for standard input")
    p.add_argument(
        "--ledger-key",
        required=True,
        help="ledger public key you trust: hex (the city's, for an anchored receipt), or for a .tlog-proof the "
        "log's note verifier key (ORIGIN+ID+KEY) or hex",
    )
    p.add_argument("--key-chain", help="file from `cityledger key-chain`, when the ledger key has rotated since")
    p.add_argument("--device-key", help="for a .tlog-proof: hex public key of the reading's device, as you trust it")
    p.add_argument("--policy", help="for a .tlog-proof: C2SP tlog-policy file naming the witnesses and their quorum")


def cmd_receipt(args: argparse.Namespace) -> int:
    from ledger.chain.receipts import encode_receipt

    if args.format == "tlog-proof":
        if args.anchored:
            print("a tlog-proof is a district's own log's receipt: --anchored goes with --format json", file=sys.stderr)
            return 2
        data = ledger_api(args).tlog_receipt(device=args.device, seq=args.seq).encode()
    elif args.anchored:
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
    if data.startswith(TLOG_PROOF_HEADER):
        return _verify_tlog_proof(args, data)
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
    return _report(args, checks, anchored_ok(checks) if anchored else receipt_ok(checks))


def _report(args: argparse.Namespace, checks: Sequence[Check], ok: bool) -> int:
    """Each step as a line (or JSON), and the exit code: 0 valid, 1 refused."""
    if args.json:
        emit({"ok": ok, "checks": [vars(c) for c in checks]})
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<16} {c.detail}")
        print("receipt valid" if ok else "receipt REFUSED")
    return 0 if ok else 1


TLOG_PROOF_HEADER = b"c2sp.org/tlog-proof@v1\n"


def _verify_tlog_proof(args: argparse.Namespace, data: bytes) -> int:
    """PROTOCOL.md section 7's five steps, from the files and keys named only."""
    from ledger.chain.notes import NoteError, make_verifier, parse_vkey
    from ledger.chain.policy import PolicyError, parse_policy
    from ledger.chain.tlogproof import ProofFormatError, parse_tlog_proof, tlog_proof_ok, verify_tlog_proof

    if not args.device_key:
        print(
            "a tlog-proof names no device key: give the one you trust with --device-key HEX "
            "(the dashboard's proof page and `cityledger devices show` print it)",
            file=sys.stderr,
        )
        return 2
    try:
        policy = parse_policy(Path(args.policy).read_text()) if args.policy else None
        if "+" in args.ledger_key:
            ledger_keys = [parse_vkey(args.ledger_key)]
        else:  # a bare key: named by the checkpoint's own origin, which the signature then binds
            origin = parse_tlog_proof(data).checkpoint_body().origin
            ledger_keys = [make_verifier(origin, bytes.fromhex(args.ledger_key))]
    except (PolicyError, NoteError, ProofFormatError, ValueError, OSError) as exc:
        print(f"cannot check it: {exc}", file=sys.stderr)
        return 1
    checks = verify_tlog_proof(data, device_key=args.device_key.lower(), ledger_keys=ledger_keys, policy=policy)
    return _report(args, checks, tlog_proof_ok(checks))
