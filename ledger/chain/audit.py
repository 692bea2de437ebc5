"""Recompute the whole chain from what is stored and say where it first breaks.

Structural checks (leaves, roots, links, header signatures) always run. A root
mismatch only says "this block"; to name the reading we then check that block's
device signatures, since any edit of a signed member breaks its signature.
Device keys come from the enrolment and rotation entries in the chain itself, never
from the registry table, so a key swapped in the database cannot vouch for a reading;
which of a device's keys signs which reading is `keyspans.key_for` (by seq and height).
The ledger key is followed the same way: a header naming `next_key`, signed by
the current key, hands signing to the next one.

Each (device, seq) is ledgered at most once (PROTOCOL.md section 3): a second reading
of it fails the audit at the block holding it, even when it is a copy, properly
signed, sealed by the ledger key's holder. What the audit remembers for that is a
set of seq ranges per device (`Ledgered`), not every (device, seq): its size grows
with the gaps in devices' seqs, not with the readings.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired

from nacl.signing import VerifyKey
from typing_extensions import TypedDict

from ledger.chain import merkle
from ledger.chain.blocks import GENESIS_PREV, block_hash, verify_header
from ledger.chain.keyspans import KeySpan, key_for
from ledger.chain.protocol import Reading, verify_reading
from ledger.chain.registry_audit import Disagreement, DisagreementDoc
from ledger.chain.sigcheck import CHUNK, ParallelVerifier
from ledger.chain.tlog import CompactRange
from ledger.documents import document

Leaf = tuple[int, Reading | dict[str, Any] | None, bytes | None]
Progress = Callable[[int, int], None]
KeySpans = dict[str, tuple[KeySpan, ...]]  # device -> every key the chain gave it, in chain order

DUPLICATE = "reading ledgered twice (this device's seq is already in the chain)"
"""The one wording of a second reading of a (device, seq): both audit paths report it so."""


@dataclass(frozen=True)
class Failure:
    height: int
    what: str
    reading: str | None = None  # "device#seq" or "leaf N" when one leaf is to blame

    def __str__(self) -> str:
        where = f"block {self.height}" + (f", reading {self.reading}" if self.reading else "")
        return f"{where}: {self.what}"


@document
class VerifyReport(TypedDict):
    """A `Report` as `verify` answers it (`Report.as_dict`): `failure` says why it is not ok, in words,
    `failed_block` and `failed_reading` where the chain first breaks (None when it holds)."""

    ok: bool
    blocks: int
    readings: int
    entries: int
    seconds: float
    deep: bool
    failure: str | None
    disagreements: list[DisagreementDoc]
    disagreements_found: int
    registry_checked: bool
    failed_block: int | None
    failed_reading: str | None
    witness_blocks: NotRequired[int]  # blocks of the witness's copy compared (`verify --witness`)


@dataclass(frozen=True)
class Report:
    ok: bool
    blocks: int
    readings: int
    entries: int
    seconds: float
    deep: bool
    failure: Failure | None
    # --deep on a live ledger: where its registry tables disagree with the chain (registry_audit.py),
    # the first MAX_KEPT of `disagreements_found`; `registry_checked` is False when no comparison ran.
    disagreements: tuple[Disagreement, ...] = ()
    disagreements_found: int = 0
    registry_checked: bool = False

    def as_dict(self) -> VerifyReport:
        return {
            "ok": self.ok,
            "blocks": self.blocks,
            "readings": self.readings,
            "entries": self.entries,
            "seconds": self.seconds,
            "deep": self.deep,
            "failure": str(self.failure) if self.failure else _registry_failure(self),
            "disagreements": [d.as_dict() for d in self.disagreements],
            "disagreements_found": self.disagreements_found,
            "registry_checked": self.registry_checked,
            "failed_block": self.failure.height if self.failure else None,
            "failed_reading": self.failure.reading if self.failure else None,
        }


def _registry_failure(report: Report) -> str | None:
    """Why a report whose chain holds is not ok: every caller reads `failure` for the reason."""
    if not report.disagreements_found:
        return None
    return (
        f"registry tables disagree with the chain in {report.disagreements_found} place(s), "
        f"first: {report.disagreements[0]}"
    )


@dataclass
class Chain:
    """What the audit has learned from the chain so far."""

    ledger_key: VerifyKey
    device_keys: KeySpans = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    pending: list[tuple[int, str, tuple[bytes, bytes, bytes]]] = field(default_factory=list)
    # The log of every leaf so far (PROTOCOL.md section 7); None when the audit starts after
    # genesis (an archive's later part), where the leaves before it are not at hand.
    log: CompactRange | None = field(default_factory=CompactRange)
    log_named: bool = False  # a header named the log: every later one must


def check_log(chain: Chain, header: dict[str, Any], height: int, leaf_hashes: Iterable[bytes]) -> Failure | None:
    """Take a block's leaves into the log and check what its header says of the log after it.

    Headers sealed before the ledger had the log name none; from the first that does, every
    header must, with the size and root of the log of every leaf from genesis to its own.
    """
    if chain.log is None:
        return None
    chain.log.append(leaf_hashes)
    named = "log_size" in header or "log_root" in header
    if not named:
        return (
            Failure(height, "header does not name the log, though an earlier header did") if chain.log_named else None
        )
    chain.log_named = True
    if header.get("log_size") != chain.log.size:
        return Failure(
            height, f"header's log_size is {header.get('log_size')!r}, the log holds {chain.log.size} leaves"
        )
    if header.get("log_root") != chain.log.root().hex():
        return Failure(height, "header's log_root differs from the log of every leaf up to this block")
    return None


@dataclass
class Ledgered:
    """Which seqs of each device the chain holds a reading of, to find one ledgered twice.

    Kept as sorted, disjoint ranges per device, flat `[lo0, hi0, lo1, hi1, ...]`, never as a
    set of every (device, seq): a device's seqs arrive nearly in order, so a device holds a
    range or a few, and memory grows with devices and gaps (a written-off gap stays one),
    not with readings: 10M readings from 100,000 meters take about 18 MB (device ids
    included), where a set of every (device, seq) would take over a GB.
    """

    ranges: dict[str, list[int]] = field(default_factory=dict)

    def add(self, device: str, seq: int) -> bool:
        """Take in a reading of `seq`; False if the device already has one."""
        r = self.ranges.get(device)
        if r is None:
            self.ranges[device] = [seq, seq]
            return True
        if seq == r[-1] + 1:  # the next one: nearly every reading
            r[-1] = seq
            return True
        i = bisect_right(r, seq)
        if i % 2 or (i and r[i - 1] == seq):
            return False  # inside a range (or on its last seq)
        joins_left, joins_right = i > 0 and r[i - 1] == seq - 1, i < len(r) and r[i] == seq + 1
        if joins_left and joins_right:
            del r[i - 1 : i + 1]
        elif joins_left:
            r[i - 1] = seq
        elif joins_right:
            r[i] = seq
        else:
            r[i:i] = [seq, seq]
        return True


def check_unique(height: int, leaves: list[Leaf], seen: Ledgered) -> Failure | None:
    """The first reading of a block whose (device, seq) the chain already holds, in leaf order."""
    for _, obj, _ in leaves:
        if isinstance(obj, Reading) and not seen.add(obj.device, obj.seq):
            return Failure(height, DUPLICATE, f"{obj.device}#{obj.seq}")
    return None


def audit(
    blocks: Iterable[dict[str, Any]],
    leaves_of: Callable[[int], list[Leaf]],
    ledger_key: VerifyKey,
    *,
    deep: bool = False,
    total: int = 0,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Report:
    """Check every block in height order; stop at the first failure."""
    started = time.perf_counter()
    chain, seen = Chain(ledger_key), Ledgered()
    expected_prev, expected_height = GENESIS_PREV, 0
    counts = [0, 0, 0]  # blocks, readings, entries
    failure: Failure | None = None
    with ParallelVerifier(workers if deep else 1) as verifier:
        for block in blocks:
            header, height = block["header"], block["height"]
            leaves = leaves_of(height)
            failure = _check_block(block, leaves, expected_height, expected_prev, chain, deep) or check_unique(
                height, leaves, seen
            )
            if deep and (failure or len(chain.pending) >= CHUNK):
                # A structural failure here still loses to a bad signature in an earlier block.
                failure = _flush(chain, verifier, wait=failure is not None) or failure
            if failure:
                break
            learn(chain, header, leaves, height)
            counts[0] += 1
            counts[1] += sum(1 for _, _, raw in leaves if raw is None)
            counts[2] += sum(1 for _, _, raw in leaves if raw is not None)
            expected_prev, expected_height = block_hash(header), height + 1
            if progress and counts[0] % 100 == 0:
                progress(counts[0], total)
        if deep and not failure:
            failure = _flush(chain, verifier, wait=True)
    if progress:
        progress(counts[0], total)
    blocks_ok = counts[0] if failure is None else min(counts[0], failure.height)
    return Report(failure is None, blocks_ok, counts[1], counts[2], time.perf_counter() - started, deep, failure)


def _check_block(
    block: dict[str, Any], leaves: list[Leaf], expected_height: int, expected_prev: str, chain: Chain, deep: bool
) -> Failure | None:
    failure = check_header(block, expected_height, expected_prev, chain)
    if failure is None:
        failure = check_leaves(block, leaves, chain, deep)
    return failure


def check_header(block: dict[str, Any], expected_height: int, expected_prev: str, chain: Chain) -> Failure | None:
    """Height sequence, prev link and signature: what a block owes the chain before its leaves count.

    Shared with the SQL audit (ledger/store/sqlaudit.py) so both are equally strict.
    """
    header, height = block["header"], block["height"]
    if not isinstance(header, dict):
        return Failure(height, "stored header is not a JSON object")
    if height != expected_height or header.get("height") != height:
        return Failure(height, f"height out of sequence (expected {expected_height})")
    if header.get("prev") != expected_prev:
        return Failure(height, "prev does not link to the previous block's hash")
    if not verify_header(chain.ledger_key, header, block["sig"]):
        return Failure(height, "header signature does not verify under the ledger key")
    return None


def check_leaves(block: dict[str, Any], leaves: list[Leaf], chain: Chain, deep: bool) -> Failure | None:
    """Leaf positions, validity, revocations, size and root, naming the leaf to blame.

    The SQL audit falls back to this for any block it cannot clear itself, so the
    failure it reports is the one this path has always reported.
    """
    header, height = block["header"], block["height"]
    for position, (idx, obj, raw) in enumerate(leaves):
        if idx != position:
            return Failure(height, f"leaf {position} is missing", f"leaf {position}")
        if obj is None:
            what = "stored entry is not a JSON object" if raw is not None else "stored reading is not a valid reading"
            return Failure(height, what, f"leaf {idx}")
        if isinstance(obj, Reading) and obj.device in chain.revoked:
            return Failure(height, "reading ledgered after its device was revoked", f"{obj.device}#{obj.seq}")
    if len(leaves) != header.get("size"):
        return Failure(height, f"block holds {len(leaves)} leaves, header says {header.get('size')}")
    hashes = [merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in leaves]  # type: ignore[union-attr]
    if merkle.root(hashes).hex() != header.get("root"):
        bad = _first_bad_signature(leaves, chain.device_keys, height)
        if bad:
            return Failure(height, "device signature does not verify", bad)
        return Failure(height, "Merkle root of the stored leaves differs from the header (leaves altered or reordered)")
    failure = check_log(chain, header, height, hashes)
    if failure:  # a block re-rooted and re-signed after the fact: name the reading, where one was changed
        bad = _first_bad_signature(leaves, chain.device_keys, height)
        return Failure(height, "device signature does not verify", bad) if bad else failure
    if deep:
        return _queue_signatures(height, leaves, chain)
    return None


def _queue_signatures(height: int, leaves: list[Leaf], chain: Chain) -> Failure | None:
    keys = dict(chain.device_keys)
    for _, obj, raw in leaves:
        if raw is not None:
            apply_entry(keys, obj, height)  # type: ignore[arg-type]
        elif isinstance(obj, Reading):
            key = key_for(keys.get(obj.device, ()), obj.seq, height)
            if key is None:
                return Failure(height, "reading from a device the chain never enrolled", f"{obj.device}#{obj.seq}")
            chain.pending.append(
                (height, f"{obj.device}#{obj.seq}", (bytes.fromhex(key), obj.signed_message(), obj.sig_bytes()))
            )
    return None


def _flush(chain: Chain, verifier: ParallelVerifier, wait: bool = False) -> Failure | None:
    """Hand queued signatures to the pool in chunks; report the first bad one seen so far."""
    pending, chain.pending = chain.pending, []
    for start in range(0, len(pending), CHUNK):
        chunk = pending[start : start + CHUNK]
        verifier.submit([item for _, _, item in chunk], [(h, label) for h, label, _ in chunk])
    for bad, tags in verifier.ready(wait=wait):
        if bad >= 0:
            height, label = tags[bad]  # type: ignore[index]
            return Failure(height, "device signature does not verify", label)
    return None


def learn(chain: Chain, header: dict[str, Any], leaves: list[Leaf], height: int) -> None:
    """Take in a verified block's registry entries and any ledger key hand-over; readings are ignored."""
    for _, obj, raw in leaves:
        if raw is not None:
            apply_entry(chain.device_keys, obj, height)  # type: ignore[arg-type]
            if obj.get("entry") == "device_revoked":  # type: ignore[union-attr]
                chain.revoked.add(obj["device"])  # type: ignore[index]
    if "next_key" in header:
        chain.ledger_key = VerifyKey(bytes.fromhex(header["next_key"]))


def key_span(entry: dict[str, Any], height: int) -> KeySpan | None:
    """The key an enrolment or rotation sealed at `height` gives its device, and the seqs it signs from.

    A rotation without `from_seq` (sealed before rotations named one) signs from seq 0, as an
    enrolment does. A malformed entry gives no key: the device keeps the one it had (none,
    for an enrolment), so the readings it signed with the malformed key fail.
    """
    kind = entry.get("entry")
    if kind not in ("device_enrolled", "device_key_rotated"):
        return None
    public_key, from_seq = entry.get("public_key"), entry.get("from_seq", 0) if kind == "device_key_rotated" else 0
    if not isinstance(public_key, str) or type(from_seq) is not int or from_seq < 0:
        return None
    try:
        VerifyKey(bytes.fromhex(public_key))
    except (TypeError, ValueError):
        return None
    return KeySpan(public_key, from_seq, height)


def apply_entry(device_keys: KeySpans, entry: dict[str, Any], height: int) -> None:
    """Follow the chain's registry: the keys each device has been given, and from which seq and height.

    Never edits a device's spans in place (a new tuple each time), so a copy of the
    dict taken for one block's readings stays as it was.
    """
    span = key_span(entry, height)
    if span is not None and isinstance(device := entry.get("device"), str):
        device_keys[device] = (*device_keys.get(device, ()), span)


def _first_bad_signature(leaves: list[Leaf], device_keys: KeySpans, height: int) -> str | None:
    keys = dict(device_keys)
    verifiers: dict[str, VerifyKey] = {}
    for _idx, obj, raw in leaves:
        if raw is not None:
            apply_entry(keys, obj, height)  # type: ignore[arg-type]
            continue
        if not isinstance(obj, Reading):
            continue
        key = key_for(keys.get(obj.device, ()), obj.seq, height)
        if key is not None and key not in verifiers:
            verifiers[key] = VerifyKey(bytes.fromhex(key))
        if key is None or not verify_reading(verifiers[key], obj):
            return f"{obj.device}#{obj.seq}"
    return None


def compare_with_witness(ours: Mapping[int, str], witness: Mapping[int, str]) -> Failure | None:
    """The first height at which a witness's copy and the database disagree.

    `ours` and `witness` map height to block hash. A block the witness holds and
    we lack means truncation or a rollback; a different hash means a rewrite.
    """
    for height in sorted(witness):
        if height not in ours:
            return Failure(height, "block missing from the database but held by the witness (truncated or rolled back)")
        if ours[height] != witness[height]:
            return Failure(height, "block differs from the witness's copy (rewritten)")
    return None
