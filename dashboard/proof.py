"""A receipt checked on the spot, step by step, for people. Pure.

The trusted ledger key is always the one the city published (the home's
`keys/first-ledger-key.pub`, with rotations followed), never the key written in
the receipt: anyone can write any key into a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger.chain.receipts import encode_receipt, verify_receipt

STEPS = (
    ("format", "Receipt format", "The receipt has exactly the members of the protocol, each spelt one way."),
    ("device_signature", "Device signature", "The meter's own Ed25519 key signed this reading."),
    (
        "inclusion",
        "Inclusion path",
        "The reading's hash and the path of sibling hashes lead to the block's Merkle root.",
    ),
    ("block_signature", "Block signature", "The city's ledger key, as published, signed the block's header."),
)


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    explains: str
    state: str  # "ok" | "failed" | "not checked"
    detail: str


def check(
    receipt: Mapping[str, Any], trusted_key: str, key_chain: Sequence[Mapping[str, Any]] | None = None
) -> list[Step]:
    """The four steps in order; steps after a failure are `not checked`.

    With a key chain (the ledger's key rotations), the key for the receipt's block is
    followed from `trusted_key`; a chain that does not verify fails the block signature step.
    """
    from ledger.chain.keychain import KeyChainError, key_for_height
    from ledger.chain.receipts import Check

    key, chain_failure = trusted_key, None
    if key_chain:
        try:
            key = key_for_height(trusted_key, key_chain, int(receipt["block"]["height"]))
        except (KeyChainError, KeyError, TypeError, ValueError) as exc:
            chain_failure = Check("block_signature", False, f"the ledger's key rotations do not verify: {exc}")
    checks = verify_receipt(receipt, key)
    if chain_failure is not None:
        checks = [c for c in checks if c.name != "block_signature"]
        if all(c.ok for c in checks):
            checks.append(chain_failure)
    by_name = {c.name: c for c in checks}
    out: list[Step] = []
    failed = False
    for name, title, explains in STEPS:
        c = by_name.get(name)
        if c is None:
            out.append(Step(name, title, explains, "not checked", "an earlier step failed" if failed else ""))
            continue
        failed = failed or not c.ok
        out.append(Step(name, title, explains, "ok" if c.ok else "failed", c.detail))
    return out


def valid(steps: list[Step]) -> bool:
    return bool(steps) and all(s.state == "ok" for s in steps)


def receipt_file(receipt: Mapping[str, Any]) -> bytes:
    """The receipt exactly as `cityledger receipt` writes it (canonical JSON)."""
    return encode_receipt(receipt)


def pretty(receipt: Mapping[str, Any]) -> str:
    return json.dumps(receipt, indent=2, sort_keys=True)
