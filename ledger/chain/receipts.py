"""Receipts (PROTOCOL.md section 5): build one from the ledger, check one offline.

Checking needs no database and no network: only the receipt and a ledger key
the verifier already trusts. It is written to be ported: four steps, each a
few lines, using SHA-256, Ed25519 and the RFC 9162 inclusion algorithm.

Every field has exactly one accepted spelling (lowercase hex, padded base64,
no duplicate or extra members), so a receipt altered in any byte is refused,
never silently read as the same receipt.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nacl.signing import VerifyKey
from typing_extensions import TypedDict

from ledger.chain import merkle
from ledger.chain.blocks import Header, block_hash, verify_header
from ledger.chain.protocol import Reading, canonical_json, strict_json, verify_reading
from ledger.documents import document

RECEIPT_MEMBERS = frozenset({"reading", "device_key", "block", "block_sig", "ledger_key", "leaf_index", "proof"})
_HEX32 = re.compile(r"^[0-9a-f]{64}$")


@document
class Receipt(TypedDict):
    """A receipt (PROTOCOL.md section 5), as `build_receipt` makes it: exactly `RECEIPT_MEMBERS`."""

    reading: dict[str, Any]  # the signed reading's members (`Reading.as_dict`, ledger/chain/protocol.py)
    device_key: str
    block: Header
    block_sig: str  # base64
    ledger_key: str
    leaf_index: int
    proof: list[str]  # hex, leaf to root


@dataclass(frozen=True)
class Check:
    """One step of the verification, in the order a person would do it by hand."""

    name: str
    ok: bool
    detail: str


class _Bad(ValueError):
    pass


def build_receipt(
    reading: Reading,
    device_key: str,
    header: dict[str, Any],
    block_sig: bytes,
    ledger_key: str,
    leaf_hashes: list[bytes],
    leaf_index: int,
) -> Receipt:
    """Assemble a receipt for the reading at `leaf_index` of a block whose leaves are given."""
    if merkle.leaf_hash(reading.leaf_data()) != leaf_hashes[leaf_index]:
        raise ValueError("the reading is not the leaf at that index")
    return {
        "reading": reading.as_dict(),
        "device_key": device_key,
        "block": header,
        "block_sig": base64.b64encode(block_sig).decode(),
        "ledger_key": ledger_key,
        "leaf_index": leaf_index,
        "proof": [h.hex() for h in merkle.inclusion_proof(leaf_hashes, leaf_index)],
    }


def encode_receipt(receipt: Mapping[str, Any]) -> bytes:
    """The receipt as a file: canonical JSON with no whitespace at all, so that it
    has one byte form and every single-byte change of it changes what it says."""
    return canonical_json(receipt)


def verify_receipt(data: bytes | str | Mapping[str, Any], trusted_ledger_key: str) -> list[Check]:
    """Check a receipt against the ledger key the verifier trusts; never raises.

    Returns the checks made, in order, stopping at the first that fails.
    """
    checks: list[Check] = []
    try:
        receipt = _parse(data)
        checks.append(Check("format", True, "receipt has exactly the members of PROTOCOL.md section 5"))
        reading, device_key = _reading(receipt)
        if not verify_reading(device_key, reading):
            raise _Fail("device_signature", "the device's signature over the reading does not verify")
        checks.append(
            Check("device_signature", True, f"{reading.device} #{reading.seq} signed by {receipt['device_key'][:16]}…")
        )
        header = receipt["block"]
        root = _inclusion_root(reading, receipt, header)
        if root.hex() != header.get("root"):
            raise _Fail("inclusion", "the inclusion path does not lead to the block's Merkle root")
        checks.append(
            Check(
                "inclusion", True, f"leaf {receipt['leaf_index']} of {header['size']} leads to root {root.hex()[:16]}…"
            )
        )
        if receipt["ledger_key"] != trusted_ledger_key:
            raise _Fail("block_signature", "the receipt names a ledger key other than the one you trust")
        signature = _b64(receipt["block_sig"], 64, "block_sig")
        if not verify_header(VerifyKey(bytes.fromhex(trusted_ledger_key)), header, signature):
            raise _Fail("block_signature", "the block header's signature does not verify under the trusted ledger key")
        checks.append(
            Check(
                "block_signature",
                True,
                f"block {header['height']} ({block_hash(header)[:16]}…) signed by the trusted key",
            )
        )
    except _Fail as fail:
        checks.append(Check(fail.step, False, fail.detail))
    except (_Bad, ValueError, TypeError, KeyError, RecursionError) as exc:
        step = "format" if not checks else "device_signature"
        checks.append(Check(step, False, f"malformed receipt: {exc}"[:300]))
    return checks


def receipt_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks) and checks[-1].name == "block_signature"


class _Fail(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(detail)
        self.step, self.detail = step, detail


def _parse(data: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(data, Mapping):
        data = json.dumps(dict(data))
    obj = strict_json(data)
    if not isinstance(obj, dict) or set(obj) != RECEIPT_MEMBERS:
        raise _Bad(f"members must be exactly {sorted(RECEIPT_MEMBERS)}")
    for name in ("device_key", "ledger_key"):
        if not isinstance(obj[name], str) or not _HEX32.match(obj[name]):
            raise _Bad(f"{name} must be 64 lowercase hex digits")
    if type(obj["leaf_index"]) is not int or obj["leaf_index"] < 0:
        raise _Bad("leaf_index must be a non-negative integer")
    if not isinstance(obj["proof"], list) or not all(isinstance(h, str) and _HEX32.match(h) for h in obj["proof"]):
        raise _Bad("proof must be a list of 64-lowercase-hex-digit hashes")
    header = obj["block"]
    if not isinstance(header, dict) or type(header.get("size")) is not int or type(header.get("height")) is not int:
        raise _Bad("block must be a header with integer height and size")
    if not isinstance(header.get("root"), str) or not _HEX32.match(header["root"]):
        raise _Bad("block.root must be 64 lowercase hex digits")
    if not isinstance(obj["block_sig"], str):
        raise _Bad("block_sig must be base64")
    return obj


def _reading(receipt: dict[str, Any]) -> tuple[Reading, VerifyKey]:
    if not isinstance(receipt["reading"], dict):
        raise _Bad("reading must be an object")
    try:
        reading = Reading.model_validate(receipt["reading"])
    except ValueError as exc:
        raise _Fail("device_signature", f"the reading is not a valid reading: {str(exc).splitlines()[0]}") from exc
    return reading, VerifyKey(bytes.fromhex(receipt["device_key"]))


def _inclusion_root(reading: Reading, receipt: dict[str, Any], header: dict[str, Any]) -> bytes:
    try:
        return merkle.root_from_inclusion_proof(
            receipt["leaf_index"],
            header["size"],
            merkle.leaf_hash(reading.leaf_data()),
            [bytes.fromhex(h) for h in receipt["proof"]],
        )
    except merkle.ProofError as exc:
        raise _Fail("inclusion", f"the inclusion path does not fit the block: {exc}") from exc


def _b64(text: str, length: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fail("block_signature", f"{what} is not base64") from exc
    if len(raw) != length or base64.b64encode(raw).decode() != text:
        raise _Fail("block_signature", f"{what} must be the padded base64 of {length} bytes")
    return raw
