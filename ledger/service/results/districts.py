"""What the city of district chains answers (ledger/service/operations/districts.py and the
district part of ledger/service/api.py): districts opened, what the city chain anchored,
and the proofs an auditor checks an anchor with.

The anchor entry itself is the chain's (`HeadEntry`, ledger/chain/anchors.py), and a block
header is the chain's `Header` (ledger/chain/blocks.py).
"""

from __future__ import annotations

from typing_extensions import TypedDict

from ledger.chain.anchors import HeadEntry
from ledger.chain.blocks import Header
from ledger.documents import document


@document
class DistrictAdded(TypedDict):
    """`add_district`: the district's new home and the first key of its chain, sealed in `block`."""

    district: str
    home: str
    ledger_key: str
    block: str


@document
class DistrictChain(TypedDict):
    """One of `districts`: its first key, its home, and the newest head the city chain anchored
    (all three None until the first anchor)."""

    district: str
    ledger_key: str
    added_at: int
    home: str
    anchored_height: int | None
    anchored_block: str | None
    anchored_at: int | None


@document
class Anchors(TypedDict):
    """`anchors`: each district's first key, and every anchor as [district, height, block hash,
    city height], in chain order (what `verify` checks the district chains against)."""

    districts: dict[str, str]
    anchors: list[list[str | int]]


@document
class AnchorProof(TypedDict):
    """`anchor_proof`: the city chain's entry anchoring a district block, the city block that
    holds it (header, signature in base64, the key that signed it), and its Merkle path."""

    entry: HeadEntry
    city_block: Header
    city_block_sig: str
    city_ledger_key: str
    leaf_index: int
    proof: list[str]  # the inclusion path: sibling hashes, hex
