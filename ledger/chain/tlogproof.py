"""Receipts, version 2 (PROTOCOL.md section 7): a C2SP tlog-proof of a reading. Pure core.

Why a second receipt format: the version-1 receipt (ledger/chain/receipts.py) is ours
alone; a `.tlog-proof` is the transparency-log world's offline proof of logging
(shared/specs/c2sp/tlog-proof.md), so a reading's receipt can be checked with generic
tools plus the one step only we define, the device's signature. Its parts:

    c2sp.org/tlog-proof@v1
    extra <base64 of the entry's leaf data: the reading, sig included, canonical JSON>
    index <log index>
    <inclusion path, one base64 hash a line, leaf's sibling first>
    <blank line>
    <the signed checkpoint, with its cosignatures>

Checking needs no database and no network, and never raises: `verify_tlog_proof` returns
the steps of PROTOCOL.md section 7 in order, stopping at the first that fails and saying
why. Every part has one spelling (canonical base64, decimal without leading zeros, no
checkpoint extension lines), so a proof altered in any byte is refused, never read as the
same proof.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nacl.signing import VerifyKey

from ledger.chain import merkle
from ledger.chain.notes import (
    ALG_ED25519,
    MAX_NOTE_BYTES,
    Checkpoint,
    Note,
    NoteError,
    Verifier,
    b64,
    b64_strict,
    decimal_strict,
    parse_checkpoint,
    parse_note,
    signatures_by,
    verify_note_signature,
)
from ledger.chain.policy import Policy, quorum_of
from ledger.chain.protocol import Reading, Rejected, parse_reading, verify_reading
from ledger.chain.receipts import Check
from ledger.errors import Refused

__all__ = [
    "HEADER",
    "STEPS",
    "MAX_EXTRA_BYTES",
    "MAX_INDEX",
    "MAX_PROOF_HASHES",
    "ProofFormatError",
    "TlogProof",
    "encode_tlog_proof",
    "parse_tlog_proof",
    "build_tlog_proof",
    "verify_tlog_proof",
    "tlog_proof_ok",
]

HEADER = "c2sp.org/tlog-proof@v1"

STEPS: tuple[str, ...] = ("format", "device_signature", "leaf_hash", "inclusion", "log_signature", "cosignatures")
"""The names of the checks `verify_tlog_proof` makes, in order: reading the file, then the five
steps of PROTOCOL.md section 7."""

MAX_INDEX = 2**63 - 1
MAX_PROOF_HASHES = 63
"""An inclusion path in a tree of at most 2^63 - 1 leaves has at most 63 hashes."""

MAX_EXTRA_BYTES = 64 * 1024
"""The format's extra data is opaque; ours is a reading (at most 1024 bytes). The cap keeps a
hostile file from being decoded at any size."""

MAX_PROOF_BYTES = len(HEADER) + MAX_EXTRA_BYTES * 4 // 3 + 4096 + MAX_NOTE_BYTES

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_T = TypeVar("_T")


class ProofFormatError(Refused):
    """A tlog-proof that does not follow tlog-proof.md (or holds a checkpoint we cannot read)."""


@dataclass(frozen=True)
class TlogProof:
    """A parsed tlog-proof. `extra` is b"" when the proof has no extra line."""

    extra: bytes
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: Note

    def __post_init__(self) -> None:
        if not isinstance(self.extra, bytes) or len(self.extra) > MAX_EXTRA_BYTES:
            raise ProofFormatError(f"extra is bytes, at most {MAX_EXTRA_BYTES}")
        if type(self.index) is not int or not 0 <= self.index <= MAX_INDEX:
            raise ProofFormatError(f"the index is an integer from 0 to {MAX_INDEX}")
        if not isinstance(self.hashes, tuple) or len(self.hashes) > MAX_PROOF_HASHES:
            raise ProofFormatError(f"an inclusion path is a tuple of at most {MAX_PROOF_HASHES} hashes")
        if not all(isinstance(h, bytes) and len(h) == merkle.HASH_SIZE for h in self.hashes):
            raise ProofFormatError(f"every hash of the inclusion path is {merkle.HASH_SIZE} bytes")
        if not isinstance(self.checkpoint, Note) or not self.checkpoint.signatures:
            raise ProofFormatError("the checkpoint is a signed note")
        try:
            parse_checkpoint(self.checkpoint.text)
        except NoteError as exc:
            raise ProofFormatError(f"the checkpoint: {exc}") from exc

    def checkpoint_body(self) -> Checkpoint:
        """The origin, size and root the checkpoint note states (checked when the proof was made)."""
        return parse_checkpoint(self.checkpoint.text)


def encode_tlog_proof(p: TlogProof) -> bytes:
    """The proof as a `.tlog-proof` file. No extra line when `extra` is empty."""
    head = [HEADER]
    if p.extra:
        head.append(f"extra {b64(p.extra)}")
    head.append(f"index {p.index}")
    head.extend(b64(h) for h in p.hashes)
    return ("".join(line + "\n" for line in head) + "\n").encode("ascii") + p.checkpoint.encode()


def build_tlog_proof(leaf_data: bytes, index: int, hashes: Sequence[bytes], checkpoint: Note) -> bytes:
    """The version-2 receipt of the log entry `leaf_data` at `index`: its inclusion path to the
    checkpoint's tree and the checkpoint, signed and cosigned."""
    return encode_tlog_proof(TlogProof(bytes(leaf_data), index, tuple(bytes(h) for h in hashes), checkpoint))


def parse_tlog_proof(data: bytes | str) -> TlogProof:
    """Read a tlog-proof exactly as tlog-proof.md lays it out; ProofFormatError for anything else.

    The header line; an optional `extra <base64>` (non-empty: empty extra data is written by
    leaving the line out); `index <decimal>`; zero or more lines of one base64 SHA-256 hash;
    a blank line; then the signed checkpoint note, which must itself be a valid note holding a
    cityledger checkpoint (no extension lines). Every line ends with a newline.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProofFormatError(f"a tlog-proof is bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > MAX_PROOF_BYTES:
        raise ProofFormatError(f"the proof is larger than {MAX_PROOF_BYTES} bytes")
    lines = _Lines(raw)
    if lines.next("the header line") != HEADER:
        raise ProofFormatError(f"the first line must be {HEADER}")
    line = lines.next("the index line")
    extra = b""
    if line.startswith("extra "):
        extra = _field(lambda: b64_strict(line[6:], "extra"))
        if not extra:
            raise ProofFormatError("an extra line with no data (leave the line out instead)")
        line = lines.next("the index line")
    if not line.startswith("index "):
        raise ProofFormatError("expected the line index <n>" + ("" if extra else " (or extra <base64>)"))
    index = _field(lambda: decimal_strict(line[6:], "the index", MAX_INDEX))
    hashes: list[bytes] = []
    while (line := lines.next("the blank line before the checkpoint")) != "":
        if len(hashes) == MAX_PROOF_HASHES:
            raise ProofFormatError(f"more than {MAX_PROOF_HASHES} hashes in the inclusion path")
        hashes.append(_field(lambda: b64_strict(line, f"hash {len(hashes) + 1}", size=merkle.HASH_SIZE)))
    try:
        note = parse_note(lines.rest())
    except NoteError as exc:
        raise ProofFormatError(f"the checkpoint note: {exc}") from exc
    return TlogProof(extra, index, tuple(hashes), note)


class _Lines:
    """The proof's head, one ASCII line at a time, then the rest as bytes."""

    def __init__(self, raw: bytes) -> None:
        self._raw, self._at = raw, 0

    def next(self, what: str) -> str:
        end = self._raw.find(b"\n", self._at)
        if end < 0:
            raise ProofFormatError(f"the proof ends before {what}")
        line = self._raw[self._at : end]
        self._at = end + 1
        if not line.isascii():
            raise ProofFormatError(f"non-ASCII bytes where {what} or a line before it should be")
        return line.decode("ascii")

    def rest(self) -> bytes:
        return self._raw[self._at :]


def _field(read: Callable[[], _T]) -> _T:
    try:
        return read()
    except NoteError as exc:
        raise ProofFormatError(str(exc)) from exc


# ---------------------------------------------------------------- verifying


def verify_tlog_proof(
    data: bytes | str,
    *,
    device_key: str,
    ledger_keys: Sequence[Verifier],
    policy: Policy | None,
) -> list[Check]:
    """Check a version-2 receipt against the keys and policy the verifier trusts; never raises.

    `device_key`: hex of the Ed25519 key the verifier trusts for the reading's device.
    `ledger_keys`: the log keys it trusts (type 0x01, each named by its log's origin); a
    holder of a tlog-policy passes `policy.log_keys()`. `policy`: the witness policy, or
    None to check no cosignature (the last step says so).

    Returns the checks made, in the order of STEPS, stopping at the first that fails; the
    proof is good when `tlog_proof_ok` says so.
    """
    checks: list[Check] = []
    step = "format"
    try:
        proof = parse_tlog_proof(data)
        cp = proof.checkpoint_body()
        checks.append(
            Check(
                step,
                True,
                f"a C2SP tlog-proof of entry {proof.index} in {cp.origin} at size {cp.size}, "
                f"{_count(len(proof.hashes), 'hash', 'hashes')}, "
                f"{_count(len(proof.checkpoint.signatures), 'signature line', 'signature lines')}",
            )
        )
        step = "device_signature"
        reading = _device_signature(proof.extra, device_key)
        checks.append(Check(step, True, f"{reading.device} #{reading.seq} signed by {device_key[:16]}…"))
        step = "leaf_hash"
        leaf = merkle.leaf_hash(proof.extra)
        checks.append(Check(step, True, f"SHA-256(0x00 || extra) = {leaf.hex()}"))
        step = "inclusion"
        _inclusion(proof, cp, leaf)
        checks.append(Check(step, True, f"entry {proof.index} of {cp.size} leads to root {cp.root.hex()[:16]}…"))
        step = "log_signature"
        signers = _log_signature(proof.checkpoint, cp, ledger_keys)
        checks.append(Check(step, True, f"checkpoint of {cp.origin} signed by the trusted key {', '.join(signers)}"))
        step = "cosignatures"
        checks.append(Check(step, True, _cosignatures(proof.checkpoint, policy)))
    except ProofFormatError as exc:
        checks.append(Check("format", False, f"malformed tlog-proof: {exc}"[:300]))
    except _Fail as fail:
        checks.append(Check(step, False, fail.detail))
    except (ValueError, TypeError, RecursionError) as exc:  # a bug or a hostile input we did not foresee: not a proof
        checks.append(Check(step, False, f"could not check: {exc}"[:300]))
    return checks


def tlog_proof_ok(checks: Sequence[Check]) -> bool:
    """True iff every step of PROTOCOL.md section 7 was made and passed."""
    return [c.name for c in checks] == list(STEPS) and all(c.ok for c in checks)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class _Fail(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _device_signature(extra: bytes, device_key: str) -> Reading:
    """Step 1: the extra is a reading, in its canonical JSON, signed by the device key given."""
    if not isinstance(device_key, str) or not _HEX64.fullmatch(device_key):
        raise _Fail("the device key given is not 64 lowercase hex digits")
    if not extra:
        raise _Fail("the proof has no extra line: there is no reading to check")
    reading = parse_reading(extra)
    if isinstance(reading, Rejected):
        raise _Fail(f"the extra data is not a reading ({reading.reason.value}: {reading.detail})")
    if reading.leaf_data() != extra:
        raise _Fail("the extra data is a reading, but not in its canonical JSON (PROTOCOL.md section 4)")
    try:
        key = VerifyKey(bytes.fromhex(device_key))
    except (ValueError, TypeError) as exc:
        raise _Fail(f"the device key given is not an Ed25519 key: {exc}") from exc
    if not verify_reading(key, reading):
        raise _Fail("the device's signature over the reading does not verify under the device key given")
    return reading


def _inclusion(proof: TlogProof, cp: Checkpoint, leaf: bytes) -> None:
    """Step 3: the path leads from the leaf at the index to the checkpoint's root."""
    try:
        root = merkle.root_from_inclusion_proof(proof.index, cp.size, leaf, proof.hashes)
    except merkle.ProofError as exc:
        raise _Fail(f"the inclusion path does not fit the checkpoint: {exc}") from exc
    if not merkle.verify_inclusion(proof.index, cp.size, leaf, proof.hashes, cp.root):
        raise _Fail(f"the inclusion path leads to {root.hex()[:16]}…, not the checkpoint's root {cp.root.hex()[:16]}…")


def _log_signature(note: Note, cp: Checkpoint, ledger_keys: Sequence[Verifier]) -> list[str]:
    """Step 4: signed by a trusted ledger key named as the origin; any trusted key's line that is
    there must verify (signed-note.md: a failing known signature SHOULD reject the note)."""
    trusted = [v for v in ledger_keys if isinstance(v, Verifier) and v.alg == ALG_ED25519 and v.name == cp.origin]
    if not trusted:
        raise _Fail(f"you trust no ledger key (type 0x01) for the origin {cp.origin[:80]!r}")
    present = [v for v in trusted if signatures_by(note, v)]
    if not present:
        raise _Fail(f"the checkpoint carries no signature by a ledger key you trust for {cp.origin[:80]}")
    for v in present:
        if not verify_note_signature(note, v):
            raise _Fail(f"the checkpoint's signature by {v.name}+{v.key_id.hex()} does not verify")
    return [f"{v.name}+{v.key_id.hex()}" for v in present]


def _cosignatures(note: Note, policy: Policy | None) -> str:
    """Step 5: the witnesses that cosigned meet the policy's quorum; a known witness's line that
    does not verify refuses the proof. Returns what the passing check says."""
    if policy is None:
        return "no witness policy given: cosignatures not checked"
    if not policy.requires_cosignatures():
        return "the witness policy requires no cosignature (quorum none): cosignatures not checked"
    for w in policy.witnesses:
        if signatures_by(note, w.verifier) and not verify_note_signature(note, w.verifier):
            raise _Fail(f"the cosignature of witness {w.name} does not verify")
    cosigners = policy.cosigners(note)
    named = ", ".join(sorted(cosigners)) or "no witness of the policy"
    if not policy.satisfied(cosigners):
        raise _Fail(f"cosigned by {named}; the policy requires {quorum_of(policy)}")
    return f"cosigned by {named}: the quorum {quorum_of(policy)} is met"
