"""Block headers of PROTOCOL.md section 4: hashing, signing, checking. Pure.

A header commits to its leaves through the Merkle root and to its past through
`prev`; the ledger key's signature over the canonical header is what an auditor
checks against a key it already trusts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ledger.chain import merkle
from ledger.chain.protocol import canonical_json

BLOCK_CONTEXT = b"cityledger/block/v1\n"
GENESIS_PREV = "0" * 64

Header = dict[str, Any]


def block_hash(header: Header) -> str:
    """Hex SHA-256 of the header's canonical JSON: the block's name and the next `prev`."""
    return hashlib.sha256(canonical_json(header)).hexdigest()


def header_message(header: Header) -> bytes:
    return BLOCK_CONTEXT + canonical_json(header)


def make_header(*, height: int, prev: str, leaf_hashes: Sequence[bytes], sealed_at: int, **extra: Any) -> Header:
    """Build the header for a block of already-hashed leaves, in ledger order."""
    if not leaf_hashes:
        raise ValueError("an empty block is never sealed")
    return {
        "height": height,
        "prev": prev,
        "root": merkle.root(leaf_hashes).hex(),
        "size": len(leaf_hashes),
        "sealed_at": sealed_at,
        **extra,
    }


def sign_header(key: SigningKey, header: Header) -> bytes:
    return key.sign(header_message(header)).signature


def verify_header(key: VerifyKey, header: Header, signature: bytes) -> bool:
    """True when `signature` is the ledger key's signature over `header`."""
    try:
        key.verify(header_message(header), signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
