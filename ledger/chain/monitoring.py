"""An independent monitor's judgement of a cityledger log (PROTOCOL.md section 7). Pure core.

Why a monitor at all: a witness checks that the log only grows, but not what it grows
with. Anyone holding the ledger's public key can fetch the log's checkpoint and entry
bundles over plain HTTP (C2SP tlog-tiles) and re-check every entry the way the ledger's
own audit does (ledger/chain/audit.py): every reading signed by the key the log's own
registry entries give its device, no reading from a device the log never enrolled or
after it was revoked, no (device, seq) twice, every leaf canonical JSON; and every new
checkpoint consistent with the last one. This module is that judgement, with no I/O:
ledger/witnesses/monitor.py fetches the bytes and keeps the state on disk.

How consistency is proven without a consistency proof: the follower keeps the log's right
edge (`CompactRange`) over every entry it has read. A checkpoint is *confirmed* when the
range, fed the entries up to its size, reproduces its root. Since the range was confirmed
at the previous checkpoint's size and then only appended to, a confirmed new checkpoint
extends the previous one: the two are consistent. A signed checkpoint smaller than one
already seen is a rollback; one of the same size with another root is a split view; an
extension whose entries do not reproduce the signed root is an inconsistent log.

Key validity in log order (the decision that replaces heights). The audit's key spans
(ledger/chain/keyspans.py) start at the *height* of the block that enrolled or rotated a
key in; a log has no heights, only indexes, and a block's leaves are one contiguous range
of them with its registry entries first. So here a key span starts at the *log index* of
its entry (`KeySpan.from_height` holds that index), and a reading at index ``i`` verifies
under the key, among those given by entries at indexes below ``i``, with the greatest
``from_seq`` <= its seq (the later entry on a tie): `keyspans.key_for` over the spans
learned so far. This accepts and refuses exactly what the audit does for every log the
writer can produce (entries precede readings within a block), and is the only rule a
reader of the log alone can apply. A revocation likewise applies to readings at higher
log indexes (the audit: to readings in later blocks; the revoking block holds none).

Which problems are alarms: those that are the log's own doing, provable with what it
signed and served (a bad entry under a signed root, a rollback, a split view, an entry
bundle or hash tile that disagrees with the signed root or with each other). A checkpoint
the monitor cannot authenticate (not a note, not signed by a trusted key, another origin)
proves nothing about the log, since anyone on the path can serve one: it is a *fault*,
retried on the next round, like a network error.

Ledger key rotation: a `ledger_key_rotated` entry naming a trusted `old_key` hands trust
to its `new_key` once a checkpoint signed by a trusted key confirms a range that holds
the entry (the rotating block's checkpoint carries both signatures, PROTOCOL.md section 7).
Keys are added to the trusted set, never removed.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ledger.chain import merkle
from ledger.chain.audit import KeySpans, Ledgered, apply_entry
from ledger.chain.keyspans import KeySpan, key_for
from ledger.chain.notes import (
    ALG_ED25519,
    Checkpoint,
    NoteError,
    Verifier,
    make_verifier,
    parse_checkpoint,
    parse_note,
    signatures_by,
    verify_note_signature,
)
from ledger.chain.protocol import Reading, canonical_json, parse_reading, strict_json
from ledger.chain.sigcheck import Item
from ledger.chain.tlog import CompactRange, TileError
from ledger.errors import Refused

__all__ = [
    "STATE_VERSION",
    "MAX_PENDING",
    "ProblemKind",
    "FAULTS",
    "Problem",
    "SignatureCheck",
    "SignedCheckpoint",
    "Counts",
    "MonitorError",
    "LogFollower",
    "check_checkpoint",
    "checkpoint_origin",
    "verifiers_for",
    "bad_signatures",
]

STATE_VERSION = 1
MAX_PENDING = 64
"""Signed checkpoints kept while the follower has not read up to them (rounds cut short by the
network). Only the largest matters for consistency; the others are checked when reached."""

_ENTRY_MARK = b'"entry":'  # a canonical reading never holds it: its members are fixed, ids have no quotes
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProblemKind(StrEnum):
    """What the monitor found; the values are what it prints and stores."""

    # alarms: the log's own doing
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    DUPLICATE_READING = "duplicate_reading"
    MALFORMED_ENTRY = "malformed_entry"
    ROLLBACK = "rollback"
    SPLIT_VIEW = "split_view"
    INCONSISTENT = "inconsistent"
    TILE_MISMATCH = "tile_mismatch"
    BAD_BUNDLE = "bad_bundle"
    # faults: retried on the next round
    UNVERIFIED_CHECKPOINT = "unverified_checkpoint"
    WRONG_ORIGIN = "wrong_origin"
    UNAVAILABLE = "unavailable"


FAULTS = frozenset({ProblemKind.UNVERIFIED_CHECKPOINT, ProblemKind.WRONG_ORIGIN, ProblemKind.UNAVAILABLE})


@dataclass(frozen=True)
class Problem:
    """One finding: its kind, what it is in words, the log index it concerns (if one), and
    the signed notes that prove it (a rollback's or a split view's two checkpoints)."""

    kind: ProblemKind
    detail: str
    index: int | None = None
    evidence: tuple[str, ...] = ()

    @property
    def alarm(self) -> bool:
        return self.kind not in FAULTS

    def __str__(self) -> str:
        where = f" (log index {self.index})" if self.index is not None else ""
        return f"{self.kind.value}: {self.detail}{where}"


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """A device signature still to verify: the reading's log index and "device#seq", and the
    (public key, signed message, signature) that `sigcheck` verifies."""

    index: int
    label: str
    item: Item

    def problem(self) -> Problem:
        return Problem(
            ProblemKind.BAD_SIGNATURE,
            f"reading {self.label} does not verify under the key the log's entries give its device",
            self.index,
        )


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint whose signature verified, with its signed note (evidence, should it conflict)."""

    checkpoint: Checkpoint
    note: str

    @property
    def size(self) -> int:
        return self.checkpoint.size

    def as_dict(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": self.note}

    @classmethod
    def from_dict(cls, obj: Any) -> SignedCheckpoint:
        if not isinstance(obj, dict) or set(obj) != {"origin", "size", "root", "note"}:
            raise MonitorError("a stored checkpoint has exactly origin, size, root and note")
        try:
            root = base64.b64decode(str(obj["root"]), validate=True)
            cp = Checkpoint(obj["origin"], obj["size"], root)
        except (ValueError, TypeError) as exc:
            raise MonitorError(f"a stored checkpoint is not valid: {exc}") from None
        if not isinstance(obj["note"], str):
            raise MonitorError("a stored checkpoint's note is text")
        return cls(cp, obj["note"])


@dataclass
class Counts:
    """Totals over every entry the follower has taken in."""

    entries: int = 0
    readings: int = 0
    registry: int = 0  # the ledger's own entries (enrolments, rotations, bills, ...)


class MonitorError(Refused):
    """The follower was used wrongly (entries past any signed checkpoint) or its stored state is not valid."""


# ---------------------------------------------------------------- checkpoints


def checkpoint_origin(note: bytes | str) -> str | None:
    """The origin a checkpoint note claims (unauthenticated), or None if it is not a checkpoint note:
    what a verifier for a bare public key is named after."""
    try:
        return parse_checkpoint(parse_note(note).text).origin
    except NoteError:
        return None


def verifiers_for(origin: str, keys: Iterable[tuple[str | None, bytes]]) -> list[Verifier]:
    """Ed25519 note verifiers for the log of `origin`: each (name, public key) named `origin`, and
    each bare key (name None) under `origin`, the log's key name (PROTOCOL.md section 7)."""
    out: list[Verifier] = []
    for name, public_key in keys:
        if name is not None and name != origin:
            continue
        try:
            verifier = make_verifier(origin, public_key)
        except NoteError:
            continue  # an origin that is no key name: no key can be trusted for it
        if verifier not in out:
            out.append(verifier)
    return out


def check_checkpoint(note_bytes: bytes | str, ledger_verifiers: Sequence[Verifier]) -> Checkpoint | Problem:
    """The checkpoint, if the note is a cityledger checkpoint signed by one of the trusted keys
    named after its origin; else the fault that stops it.

    As signed-note.md asks: lines of unknown keys are ignored, and a line of a trusted key that
    does not verify rejects the whole note.
    """
    try:
        note = parse_note(note_bytes)
        cp = parse_checkpoint(note.text)
    except NoteError as exc:
        return Problem(ProblemKind.UNVERIFIED_CHECKPOINT, f"the checkpoint is not a valid checkpoint note: {exc}")
    trusted = [v for v in ledger_verifiers if v.alg == ALG_ED25519 and v.name == cp.origin]
    if not trusted:
        names = sorted({v.name for v in ledger_verifiers}) or ["none"]
        return Problem(
            ProblemKind.WRONG_ORIGIN,
            f"the checkpoint's origin is {cp.origin!r}; the ledger keys given are for {', '.join(names)}",
        )
    signed = False
    for verifier in trusted:
        if not signatures_by(note, verifier):
            continue
        if not verify_note_signature(note, verifier):
            return Problem(
                ProblemKind.UNVERIFIED_CHECKPOINT,
                f"the checkpoint's signature by the trusted key {verifier.vkey()} does not verify",
            )
        signed = True
    if not signed:
        return Problem(
            ProblemKind.UNVERIFIED_CHECKPOINT,
            f"the checkpoint of {cp.origin} (size {cp.size}) carries no signature of a trusted ledger key "
            "(if the ledger key rotated while this monitor was away, give the new key as well)",
        )
    return cp


# ---------------------------------------------------------------- device signatures


def bad_signatures(checks: Sequence[SignatureCheck]) -> list[SignatureCheck]:
    """Every check whose signature does not verify (an unusable public key counts as bad)."""
    keys: dict[bytes, VerifyKey | None] = {}
    bad: list[SignatureCheck] = []
    for check in checks:
        public_key, message, signature = check.item
        if public_key not in keys:
            try:
                keys[public_key] = VerifyKey(public_key)
            except (ValueError, TypeError):
                keys[public_key] = None
        key = keys[public_key]
        if key is None:
            bad.append(check)
            continue
        try:
            key.verify(message, signature)
        except (BadSignatureError, ValueError, TypeError):
            bad.append(check)
    return bad


# ---------------------------------------------------------------- the follower


@dataclass
class LogFollower:
    """What a monitor knows of one log, built from the log alone: see the module docstring.

    Use: `observe` each verified checkpoint (from `check_checkpoint`), then `take` the
    entries from `size` up to `target` in log order, in batches of any length. Signatures
    are verified inline unless deferred (`take(..., defer_signatures=True)`, then
    `take_unverified` and verify them elsewhere, as the HTTP shell does on every core).
    """

    ledger_keys: list[str] = field(default_factory=list)  # hex Ed25519 keys trusted to sign checkpoints
    origin: str | None = None
    range: CompactRange = field(default_factory=CompactRange)
    confirmed: SignedCheckpoint | None = None
    pending: list[SignedCheckpoint] = field(default_factory=list)  # signed, larger than `range.size`, ascending
    device_keys: KeySpans = field(default_factory=dict)  # KeySpan.from_height holds the entry's log index
    revoked: dict[str, int] = field(default_factory=dict)  # device -> log index of its revocation
    ledgered: Ledgered = field(default_factory=Ledgered)
    rotations: list[tuple[int, str]] = field(default_factory=list)  # (log index, new ledger key) not yet confirmed
    counts: Counts = field(default_factory=Counts)
    unverified: list[SignatureCheck] = field(default_factory=list)
    _key_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ where it stands

    @property
    def size(self) -> int:
        """How many entries the follower has taken in (the next one it expects is at this index)."""
        return self.range.size

    @property
    def target(self) -> int:
        """The size of the largest signed checkpoint seen: entries up to it may be taken in."""
        if self.pending:
            return self.pending[-1].size
        return self.confirmed.size if self.confirmed else self.range.size

    @property
    def caught_up(self) -> bool:
        return not self.pending

    def trust(self, public_key: bytes) -> None:
        """Trust an Ed25519 key (the operator's, from the command line) to sign checkpoints."""
        if len(public_key) != 32:
            raise MonitorError("a ledger key is 32 bytes")
        if public_key.hex() not in self.ledger_keys:
            self.ledger_keys.append(public_key.hex())

    def verifiers(self, origin: str) -> list[Verifier]:
        """Note verifiers for every trusted ledger key, named after `origin`."""
        return verifiers_for(origin, ((None, bytes.fromhex(k)) for k in self.ledger_keys))

    # ------------------------------------------------------------ checkpoints

    def observe(self, cp: Checkpoint, note: bytes | str = "") -> list[Problem]:
        """Take in a checkpoint whose signature verified; the alarm it raises, if any.

        A size below the largest signed checkpoint seen is a rollback; the same size with
        another root a split view. A larger one becomes the target to read up to.
        """
        text = note.decode("utf-8", "replace") if isinstance(note, bytes) else note
        if self.origin is None:
            self.origin = cp.origin
        elif cp.origin != self.origin:
            return [
                Problem(ProblemKind.WRONG_ORIGIN, f"checkpoint of {cp.origin!r}, this monitor follows {self.origin!r}")
            ]
        signed = SignedCheckpoint(cp, text)
        known = ([self.confirmed] if self.confirmed else []) + self.pending
        for k in known:
            if k.size == cp.size:
                if k.checkpoint.root != cp.root:
                    return [
                        Problem(
                            ProblemKind.SPLIT_VIEW,
                            f"two checkpoints of size {cp.size} with different roots "
                            f"({_b64(k.checkpoint.root)} before, {_b64(cp.root)} now), both signed by the ledger",
                            evidence=(k.note, text),
                        )
                    ]
                return []
        if known and cp.size < known[-1].size:
            return [
                Problem(
                    ProblemKind.ROLLBACK,
                    f"the log signed size {known[-1].size} before and now signs size {cp.size}",
                    evidence=(known[-1].note, text),
                )
            ]
        if cp.size == self.range.size:  # the very first checkpoint, of the empty log
            return self._reach(signed)
        self.pending.append(signed)
        if len(self.pending) > MAX_PENDING:
            del self.pending[0]  # the smallest: its root goes unchecked, the largest still proves consistency
        return []

    def _reach(self, signed: SignedCheckpoint) -> list[Problem]:
        """The range is at the checkpoint's size: its root must be the signed one."""
        root = self.range.root()
        if root != signed.checkpoint.root:
            before = (
                f" (consistent with the last one confirmed, of size {self.confirmed.size})" if self.confirmed else ""
            )
            return [
                Problem(
                    ProblemKind.INCONSISTENT,
                    f"the log's {signed.size} entries hash to root {_b64(root)}{before}, "
                    f"but its checkpoint of size {signed.size} signs root {_b64(signed.checkpoint.root)}",
                    evidence=(signed.note,),
                )
            ]
        self.confirmed = signed
        for _, new_key in [r for r in self.rotations if r[0] < signed.size]:
            if new_key not in self.ledger_keys:
                self.ledger_keys.append(new_key)
        self.rotations = [r for r in self.rotations if r[0] >= signed.size]
        return []

    # ------------------------------------------------------------ entries

    def take(
        self,
        entries: Sequence[bytes],
        *,
        leaf_hashes: Sequence[bytes] | None = None,
        defer_signatures: bool = False,
    ) -> list[Problem]:
        """Take in the entries at log indexes `size`, `size + 1`, ... (their leaf data); the problems found.

        Never past `target` (MonitorError). `leaf_hashes`, if the caller already has them,
        saves hashing twice. Reaching a signed checkpoint's size checks its root.
        """
        if not entries:
            return []
        start = self.range.size
        if start + len(entries) > self.target:
            raise MonitorError(
                f"entries {start}..{start + len(entries) - 1} go past the largest signed checkpoint ({self.target})"
            )
        hashes = merkle.leaf_hashes(entries) if leaf_hashes is None else list(leaf_hashes)
        if len(hashes) != len(entries):
            raise MonitorError(f"{len(entries)} entries but {len(hashes)} leaf hashes")
        first_check = len(self.unverified)
        problems: list[Problem] = []
        for offset, data in enumerate(entries):
            problem = self._entry(start + offset, bytes(data))
            if problem is not None:
                problems.append(problem)
        self.counts.entries += len(entries)
        pos = 0
        while pos < len(hashes):  # pending is not empty: target > start
            boundary = self.pending[0].size
            step = min(len(hashes) - pos, boundary - self.range.size)
            self.range.append(hashes[pos : pos + step])
            pos += step
            if self.range.size == boundary:
                problems.extend(self._reach(self.pending.pop(0)))
        if not defer_signatures:
            checks = self.unverified[first_check:]
            del self.unverified[first_check:]
            problems.extend(c.problem() for c in bad_signatures(checks))
        return problems

    def take_unverified(self) -> list[SignatureCheck]:
        """The device signatures queued by `take(..., defer_signatures=True)`, to verify; the queue is emptied."""
        out, self.unverified = self.unverified, []
        return out

    def _entry(self, index: int, data: bytes) -> Problem | None:
        detail = ""
        if _ENTRY_MARK not in data:
            reading = parse_reading(data)
            if isinstance(reading, Reading):
                return self._reading(index, reading, data)
            detail = reading.detail
        try:
            obj = strict_json(data)
        except (ValueError, RecursionError) as exc:
            return Problem(ProblemKind.MALFORMED_ENTRY, f"entry is not strict JSON: {str(exc)[:120]}", index)
        if not isinstance(obj, dict):
            return Problem(ProblemKind.MALFORMED_ENTRY, "entry is not a JSON object", index)
        if "entry" not in obj:
            if not detail:
                reading = parse_reading(data)
                if isinstance(reading, Reading):
                    return self._reading(index, reading, data)
                detail = reading.detail
            return Problem(ProblemKind.MALFORMED_ENTRY, f"neither a reading nor a ledger entry: {detail}", index)
        if not isinstance(obj["entry"], str):
            return Problem(ProblemKind.MALFORMED_ENTRY, "a ledger entry's `entry` member is not a string", index)
        if canonical_json(obj) != data:
            return Problem(ProblemKind.MALFORMED_ENTRY, f"{obj['entry']} entry is not in canonical JSON", index)
        self._registry(index, obj)
        return None

    def _reading(self, index: int, reading: Reading, data: bytes) -> Problem | None:
        device, seq = reading.device, reading.seq
        self.counts.readings += 1
        if reading.leaf_data() != data:
            return Problem(ProblemKind.MALFORMED_ENTRY, f"reading {device}#{seq} is not in canonical JSON", index)
        revoked_at = self.revoked.get(device)
        if revoked_at is not None:
            return Problem(
                ProblemKind.REVOKED_DEVICE,
                f"reading {device}#{seq} after the device was revoked (at log index {revoked_at})",
                index,
            )
        spans = self.device_keys.get(device)
        key = key_for(spans, seq) if spans else None
        if key is None:
            what = "a device the log never enrolled" if not spans else "a device with no key for that seq"
            return Problem(ProblemKind.UNKNOWN_DEVICE, f"reading {device}#{seq} from {what}", index)
        if not self.ledgered.add(device, seq):
            return Problem(
                ProblemKind.DUPLICATE_READING,
                f"reading {device}#{seq}: that seq of the device is already in the log",
                index,
            )
        public_key = self._key_bytes.get(key)
        if public_key is None:
            public_key = self._key_bytes[key] = bytes.fromhex(key)
        self.unverified.append(
            SignatureCheck(index, f"{device}#{seq}", (public_key, reading.signed_message(), reading.sig_bytes()))
        )
        return None

    def _registry(self, index: int, entry: dict[str, Any]) -> None:
        """Follow the registry as the audit does (`audit.apply_entry`), with log indexes for heights."""
        self.counts.registry += 1
        apply_entry(self.device_keys, entry, index)
        kind, device = entry["entry"], entry.get("device")
        if kind == "device_revoked" and isinstance(device, str):
            self.revoked.setdefault(device, index)
        elif kind == "ledger_key_rotated":
            old, new = entry.get("old_key"), entry.get("new_key")
            if isinstance(new, str) and _HEX64.fullmatch(new) and old in self.ledger_keys:
                self.rotations.append((index, new))

    # ------------------------------------------------------------ state on disk

    def to_json(self) -> str:
        """The whole state as JSON, to resume from (`from_json`). Refused while signatures are queued:
        a saved state must never claim entries whose signatures nobody checked."""
        if self.unverified:
            raise MonitorError(f"{len(self.unverified)} device signatures are queued unverified")
        state = {
            "version": STATE_VERSION,
            "origin": self.origin,
            "ledger_keys": self.ledger_keys,
            "range": json.loads(self.range.to_json()),
            "confirmed": self.confirmed.as_dict() if self.confirmed else None,
            "pending": [p.as_dict() for p in self.pending],
            "device_keys": {
                d: [[s.public_key, s.from_seq, s.from_height] for s in spans] for d, spans in self.device_keys.items()
            },
            "revoked": self.revoked,
            "ledgered": self.ledgered.ranges,
            "rotations": [list(r) for r in self.rotations],
            "counts": {
                "entries": self.counts.entries,
                "readings": self.counts.readings,
                "registry": self.counts.registry,
            },
        }
        return json.dumps(state, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LogFollower:
        """The inverse of `to_json`; MonitorError for anything it did not write."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise MonitorError(f"monitor state is not JSON: {exc}") from None
        expected = {
            "version",
            "origin",
            "ledger_keys",
            "range",
            "confirmed",
            "pending",
            "device_keys",
            "revoked",
            "ledgered",
            "rotations",
            "counts",
        }
        if not isinstance(obj, dict) or set(obj) != expected:
            raise MonitorError("monitor state must be an object with exactly the members to_json writes")
        if obj["version"] != STATE_VERSION:
            raise MonitorError(f"monitor state version {obj['version']!r}, this monitor reads {STATE_VERSION}")
        try:
            follower = cls(
                ledger_keys=[_hex_key(k) for k in _list(obj["ledger_keys"])],
                origin=_opt_str(obj["origin"]),
                range=CompactRange.from_json(json.dumps(obj["range"])),
                confirmed=SignedCheckpoint.from_dict(obj["confirmed"]) if obj["confirmed"] is not None else None,
                pending=[SignedCheckpoint.from_dict(p) for p in _list(obj["pending"])],
                device_keys={
                    _str(d): tuple(KeySpan(_hex_key(pk), _int(fs), _int(fh)) for pk, fs, fh in _list(spans))
                    for d, spans in _dict(obj["device_keys"]).items()
                },
                revoked={_str(d): _int(i) for d, i in _dict(obj["revoked"]).items()},
                ledgered=Ledgered({_str(d): [_int(s) for s in _list(r)] for d, r in _dict(obj["ledgered"]).items()}),
                rotations=[(_int(i), _hex_key(k)) for i, k in _list(obj["rotations"])],
                counts=Counts(**{k: _int(v) for k, v in _dict(obj["counts"]).items()}),
            )
        except (TileError, TypeError, ValueError) as exc:
            raise MonitorError(f"monitor state is not valid: {exc}") from None
        sizes = [p.size for p in follower.pending]
        if sizes != sorted(set(sizes)) or (sizes and sizes[0] <= follower.range.size):
            raise MonitorError("monitor state's pending checkpoints are not ascending past its size")
        if follower.confirmed and follower.confirmed.size > follower.range.size:
            raise MonitorError("monitor state confirms a checkpoint larger than what it has read")
        return follower


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _list(x: Any) -> list[Any]:
    if not isinstance(x, list):
        raise TypeError("expected a list")
    return x


def _dict(x: Any) -> dict[str, Any]:
    if not isinstance(x, dict):
        raise TypeError("expected an object")
    return x


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError("expected a string")
    return x


def _opt_str(x: Any) -> str | None:
    return None if x is None else _str(x)


def _int(x: Any) -> int:
    if type(x) is not int or x < 0:
        raise TypeError("expected a non-negative integer")
    return x


def _hex_key(x: Any) -> str:
    if not isinstance(x, str) or not _HEX64.fullmatch(x):
        raise TypeError("expected a hex Ed25519 key")
    return x
