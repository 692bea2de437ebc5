"""Anchored receipts: a district's reading proven to someone who trusts only the city's key. Pure.

A district receipt (PROTOCOL.md section 5) is signed by the district's ledger key.
An auditor who trusts only the city's key needs three more things, all in the
`anchor` member: the district headers from the receipt's block up to a block the
city chain anchored (their `prev` links pin the receipt's block to it, whoever
signed them), the city chain's `district_head` entry naming that block, and the
entry's inclusion path in a city block signed by the city's key. Like
ledger/chain/receipts.py, it takes no database and no network, and every member has
one accepted spelling.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from nacl.signing import VerifyKey

from ledger.chain import merkle
from ledger.chain.anchors import HEAD_ENTRY
from ledger.chain.blocks import block_hash, verify_header
from ledger.chain.protocol import canonical_json, strict_json
from ledger.chain.receipts import RECEIPT_MEMBERS, Check, verify_receipt

ANCHORED_MEMBERS = frozenset({"receipt", "anchor"})
ANCHOR_MEMBERS = frozenset(
    {"headers", "entry", "city_block", "city_block_sig", "city_ledger_key", "leaf_index", "proof"}
)
MAX_LINK_HEADERS = 100_000


def is_anchored(obj: Any) -> bool:
    return isinstance(obj, dict) and set(obj) == ANCHORED_MEMBERS


def build_anchored(
    receipt: Mapping[str, Any], headers: Sequence[Mapping[str, Any]], proof: Mapping[str, Any]
) -> dict[str, Any]:
    """Join a district receipt, the district headers after its block, and the city's proof of the anchor."""
    return {"receipt": receipt, "anchor": {"headers": headers, **proof}}


def verify_anchored(data: bytes | str | dict[str, Any], trusted_city_key: str) -> list[Check]:
    """Check an anchored receipt against the city key the verifier trusts; never raises.

    The district receipt's own steps come first (its block signature checked under
    the district key it names, which the link then makes irrelevant to trust), then
    the link, the anchor's inclusion and the city's signature.
    """
    try:
        obj = strict_json(json.dumps(data) if isinstance(data, dict) else data)
        if (
            not is_anchored(obj)
            or not isinstance(obj["anchor"], dict)
            or set(obj["anchor"]) != ANCHOR_MEMBERS
            or not isinstance(obj["receipt"], dict)
            or set(obj["receipt"]) != RECEIPT_MEMBERS
        ):
            raise ValueError(
                f"members must be exactly {sorted(ANCHORED_MEMBERS)}, the anchor's {sorted(ANCHOR_MEMBERS)}"
            )
    except (ValueError, TypeError, RecursionError) as exc:
        return [Check("format", False, f"malformed anchored receipt: {exc}"[:300])]
    receipt, anchor = obj["receipt"], obj["anchor"]
    checks = verify_receipt(receipt, receipt["ledger_key"])
    if not all(c.ok for c in checks):
        return checks
    checks[-1] = Check(
        "block_signature",
        True,
        "signed by the district key the receipt names; what makes it trusted is the link to the city's anchor, below",
    )
    for step in (_link, _anchor_inclusion, _city_signature):
        try:
            checks.append(step(receipt, anchor, trusted_city_key))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            checks.append(Check(step.__name__.strip("_"), False, f"malformed anchor: {exc}"[:300]))
        if not checks[-1].ok:
            break
    return checks


def anchored_ok(checks: list[Check]) -> bool:
    return bool(checks) and all(c.ok for c in checks) and checks[-1].name == "city_signature"


def _link(receipt: dict[str, Any], anchor: dict[str, Any], _: str) -> Check:
    block, headers, entry = receipt["block"], anchor["headers"], anchor["entry"]
    district = block.get("chain")
    if not isinstance(district, str):
        return Check("link", False, "the receipt's block names no district chain")
    if not isinstance(headers, list) or len(headers) > MAX_LINK_HEADERS:
        return Check("link", False, "headers must be a list of district headers")
    height, digest = block["height"], block_hash(block)
    for header in headers:
        if (
            not isinstance(header, dict)
            or header.get("prev") != digest
            or header.get("height") != height + 1
            or header.get("chain") != district
        ):
            return Check("link", False, f"the district header after height {height} does not link to block {digest}")
        height, digest = height + 1, block_hash(header)
    expected = {"entry": HEAD_ENTRY, "district": district, "height": height, "block": digest}
    if not isinstance(entry, dict) or {k: entry.get(k) for k in expected} != expected:
        return Check("link", False, f"the anchor entry does not name {district} block {height} ({digest})")
    return Check(
        "link",
        True,
        f"{len(headers)} district header(s) link block {block['height']} to the anchored "
        f"block {height} ({digest[:16]}…)",
    )


def _anchor_inclusion(receipt: dict[str, Any], anchor: dict[str, Any], _: str) -> Check:
    city = anchor["city_block"]
    index, proof = anchor["leaf_index"], anchor["proof"]
    if type(index) is not int or not isinstance(proof, list) or not isinstance(city, dict):
        return Check("anchor_inclusion", False, "leaf_index, proof and city_block are malformed")
    try:
        root = merkle.root_from_inclusion_proof(
            index, city["size"], merkle.leaf_hash(canonical_json(anchor["entry"])), [bytes.fromhex(h) for h in proof]
        )
    except merkle.ProofError as exc:
        return Check("anchor_inclusion", False, f"the anchor's inclusion path does not fit the city block: {exc}")
    if root.hex() != city.get("root"):
        return Check("anchor_inclusion", False, "the anchor's inclusion path does not lead to the city block's root")
    return Check("anchor_inclusion", True, f"entry {index} of city block {city['height']} anchors it")


def _city_signature(receipt: dict[str, Any], anchor: dict[str, Any], trusted: str) -> Check:
    if anchor["city_ledger_key"] != trusted:
        return Check("city_signature", False, "the anchor names a city ledger key other than the one you trust")
    sig = base64.b64decode(anchor["city_block_sig"], validate=True)
    if len(sig) != 64 or not verify_header(VerifyKey(bytes.fromhex(trusted)), anchor["city_block"], sig):
        return Check("city_signature", False, "the city block's signature does not verify under the trusted city key")
    return Check("city_signature", True, f"city block {anchor['city_block']['height']} signed by the trusted city key")
