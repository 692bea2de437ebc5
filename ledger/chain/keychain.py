"""Following ledger key rotations from the one key a verifier already trusts.

A rotation is a block header, signed by the key in force, that names the next
key (`next_key`). Given the first key and those headers in order, the key for
any height is determined; a header that does not verify breaks the chain.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from nacl.signing import VerifyKey

from ledger.chain.blocks import block_hash, verify_header
from ledger.errors import Refused


class KeyChainError(Refused):
    """A rotation header that the key in force did not sign, or is malformed."""


def follow(first_key: str, rotations: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """[(first height signed by key, key hex)], starting with (0, first_key)."""
    chain = [(0, first_key)]
    last_height = -1
    for item in rotations:
        header, current = item.get("header"), chain[-1][1]
        if not isinstance(header, dict) or not isinstance(header.get("next_key"), str):
            raise KeyChainError("a key-chain item is not a header naming next_key")
        height = header.get("height")
        if type(height) is not int or height <= last_height:
            raise KeyChainError("key-chain headers must be in height order")
        try:
            sig = base64.b64decode(item["sig"], validate=True)
            next_key = VerifyKey(bytes.fromhex(header["next_key"])).encode().hex()
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise KeyChainError(f"malformed key-chain item at height {height}") from exc
        if item.get("hash") not in (None, block_hash(header)):
            raise KeyChainError(f"hash of the rotation at height {height} does not match its header")
        if not verify_header(VerifyKey(bytes.fromhex(current)), header, sig):
            raise KeyChainError(f"rotation at height {height} is not signed by the key then in force")
        chain.append((height + 1, next_key))
        last_height = height
    return chain


def key_for_height(first_key: str, rotations: Sequence[Mapping[str, Any]], height: int) -> str:
    """The ledger key that must have signed block `height`."""
    key = first_key
    for start, k in follow(first_key, rotations):
        if start <= height:
            key = k
    return key
