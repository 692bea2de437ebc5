"""Golden files for cityledger's own formats: a format change is a visible diff.

PROTOCOL.md's vectors (tests/vectors.py) pin what the specification fixes. These pin
the bytes cityledger itself writes beyond them, from fixed keys and times: a signed
reading as published, an ack (plain and with a write-off), the checkpoint (a signed
header), a receipt, and an archive manifest. Each is compared byte for byte with its
file in tests/golden/.

A change that is meant: run `CITYLEDGER_UPDATE_GOLDEN=1 pytest tests/test_golden.py`,
then read `git diff tests/golden` before committing it. Nobody downstream gets to read
our code, only these bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.blocks import GENESIS_PREV, block_hash, make_header, sign_header
from ledger.chain.protocol import Reading, ack_payload, sign_reading, signed_header_payload
from ledger.chain.receipts import build_receipt, encode_receipt, receipt_ok, verify_receipt
from ledger.keys import public_hex
from ledger.store.archive import FileEntry, Manifest, Segment, manifest_bytes, parse_manifest

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CITYLEDGER_UPDATE_GOLDEN") == "1"

LEDGER_KEY = SigningKey(bytes(range(32)))
DEVICE_KEY = SigningKey(bytes(range(32, 64)))
SEALED_AT = 1_764_000_000_000  # 2025-11-24 16:00:00 UTC


def readings() -> list[Reading]:
    return [
        sign_reading(
            DEVICE_KEY,
            device="wm-d01-000001",
            kind="water",
            seq=seq,
            ts=SEALED_AT - 60_000 * (4 - seq),
            value=1_000 + 7 * seq,
        )
        for seq in (1, 2, 3)
    ]


def block() -> tuple[dict[str, object], bytes, list[bytes]]:
    leaves = [merkle.leaf_hash(r.leaf_data()) for r in readings()]
    header = make_header(height=1, prev=GENESIS_PREV, leaf_hashes=leaves, sealed_at=SEALED_AT)
    return header, sign_header(LEDGER_KEY, header), leaves


def made() -> dict[str, bytes]:
    header, sig, leaves = block()
    receipt = build_receipt(
        readings()[1], public_hex(DEVICE_KEY.verify_key), header, sig, public_hex(LEDGER_KEY.verify_key), leaves, 1
    )
    files = {
        "blocks": FileEntry("blocks-000000.parquet", 2, 4_096, "ab" * 32),
        "readings": FileEntry("readings-000000.parquet", 3, 8_192, "cd" * 32),
        "entries": FileEntry("entries-000000.parquet", 1, 2_048, "ef" * 32),
    }
    manifest = Manifest([Segment(0, 0, 1, GENESIS_PREV.replace("0", "1"), block_hash(header), files)])
    return {
        "reading.json": readings()[0].payload() + b"\n",
        "ack.json": ack_payload(3, block_hash(header)) + b"\n",
        "ack-written-off.json": ack_payload(5, block_hash(header), (4, 5)) + b"\n",
        "checkpoint.json": signed_header_payload(block_hash(header), header, sig) + b"\n",
        "receipt.json": encode_receipt(receipt) + b"\n",
        "manifest.json": manifest_bytes(manifest),
    }


@pytest.mark.parametrize("name", sorted(made()))
def test_the_format_is_byte_for_byte_the_golden_file(name: str) -> None:
    data = made()[name]
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing: run with CITYLEDGER_UPDATE_GOLDEN=1 to write it"
    assert data == path.read_bytes(), (
        f"{name} changed; if that is meant, run CITYLEDGER_UPDATE_GOLDEN=1 and "
        f"review git diff tests/golden:\nnow:    {data!r}\ngolden: {path.read_bytes()!r}"
    )


def test_the_golden_receipt_verifies_and_the_golden_manifest_parses() -> None:
    """The golden files are real ones: what an outside verifier and the archive reader accept."""
    checks = verify_receipt((GOLDEN / "receipt.json").read_bytes().rstrip(b"\n"), public_hex(LEDGER_KEY.verify_key))
    assert receipt_ok(checks), checks
    assert parse_manifest(json.loads((GOLDEN / "manifest.json").read_bytes())).last_height == 1
