"""Recompute the whole chain from what is stored and say where it first breaks.

Structural checks (leaves, roots, links, header signatures) always run. A root
mismatch only says "this block"; to name the reading we then check that block's
device signatures, since any edit of a signed member breaks its signature.
Device keys come from the enrolment entries in the chain itself, never from the
registry table, so a key swapped in the database cannot vouch for a reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from nacl.signing import VerifyKey

from ledger import merkle
from ledger.blocks import GENESIS_PREV, block_hash, verify_header
from ledger.protocol import Reading, verify_reading

Leaf = tuple[int, Reading | dict[str, Any] | None, bytes | None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Failure:
    height: int
    what: str
    reading: str | None = None  # "device#seq" or "leaf N" when one leaf is to blame

    def __str__(self) -> str:
        where = f"block {self.height}" + (f", reading {self.reading}" if self.reading else "")
        return f"{where}: {self.what}"


@dataclass(frozen=True)
class Report:
    ok: bool
    blocks: int
    readings: int
    entries: int
    seconds: float
    deep: bool
    failure: Failure | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failure"] = str(self.failure) if self.failure else None
        out["failed_block"] = self.failure.height if self.failure else None
        out["failed_reading"] = self.failure.reading if self.failure else None
        return out


def audit(
    blocks: Iterable[dict[str, Any]],
    leaves_of: Callable[[int], list[Leaf]],
    ledger_key: VerifyKey,
    *,
    deep: bool = False,
    total: int = 0,
    progress: Progress | None = None,
) -> Report:
    """Check every block in height order; stop at the first failure."""
    started = time.perf_counter()
    expected_prev, expected_height = GENESIS_PREV, 0
    n_blocks = n_readings = n_entries = 0
    failure: Failure | None = None
    device_keys: dict[str, VerifyKey] = {}
    for block in blocks:
        header, height = block["header"], block["height"]
        leaves = leaves_of(height)
        failure = _check_block(block, leaves, expected_height, expected_prev, ledger_key, device_keys, deep)
        if failure:
            break
        n_blocks += 1
        n_entries += sum(1 for _, obj, raw in leaves if raw is not None)
        n_readings += sum(1 for _, obj, raw in leaves if raw is None)
        for _, obj, raw in leaves:
            if raw is not None:
                apply_entry(device_keys, obj)  # type: ignore[arg-type]
        expected_prev, expected_height = block_hash(header), height + 1
        if progress and (n_blocks % 100 == 0):
            progress(n_blocks, total)
    if progress:
        progress(n_blocks, total)
    return Report(failure is None, n_blocks, n_readings, n_entries, time.perf_counter() - started, deep, failure)


def _check_block(
    block: dict[str, Any], leaves: list[Leaf], expected_height: int, expected_prev: str,
    ledger_key: VerifyKey, device_keys: dict[str, VerifyKey], deep: bool,
) -> Failure | None:
    header, height = block["header"], block["height"]
    if height != expected_height or header.get("height") != height:
        return Failure(height, f"height out of sequence (expected {expected_height})")
    if header.get("prev") != expected_prev:
        return Failure(height, "prev does not link to the previous block's hash")
    if not verify_header(ledger_key, header, block["sig"]):
        return Failure(height, "header signature does not verify under the ledger key")
    for position, (idx, obj, _) in enumerate(leaves):
        if idx != position:
            return Failure(height, f"leaf {position} is missing", f"leaf {position}")
        if obj is None:
            return Failure(height, "stored reading is not a valid reading", f"leaf {idx}")
    if len(leaves) != header.get("size"):
        return Failure(height, f"block holds {len(leaves)} leaves, header says {header.get('size')}")
    hashes = [merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in leaves]  # type: ignore[union-attr]
    root_ok = merkle.root(hashes).hex() == header.get("root")
    if deep or not root_ok:
        bad = _first_bad_signature(leaves, device_keys)
        if bad:
            return Failure(height, "device signature does not verify", bad)
    if not root_ok:
        return Failure(height, "Merkle root of the stored leaves differs from the header (leaves altered or reordered)")
    return None


def apply_entry(device_keys: dict[str, VerifyKey], entry: dict[str, Any]) -> None:
    """Follow the chain's registry: which key speaks for which device from here on."""
    if entry.get("entry") in ("device_enrolled", "device_key_rotated"):
        try:
            device_keys[entry["device"]] = VerifyKey(bytes.fromhex(entry["public_key"]))
        except (KeyError, TypeError, ValueError):
            pass  # a malformed entry leaves the device without a key: its readings fail


def _first_bad_signature(leaves: list[Leaf], device_keys: dict[str, VerifyKey]) -> str | None:
    keys = dict(device_keys)
    for idx, obj, raw in leaves:
        if raw is not None:
            apply_entry(keys, obj)  # type: ignore[arg-type]
            continue
        if not isinstance(obj, Reading):
            continue
        key = keys.get(obj.device)
        if key is None or not verify_reading(key, obj):
            return f"{obj.device}#{obj.seq}"
    return None
