"""A witness's decision on one C2SP `add-checkpoint` request (tlog-witness.md). Pure core.

Why a witness at all: a log can show one history to some readers and another to others
(a split view), and each history on its own looks fine. A witness remembers, per log, the
largest checkpoint it cosigned and cosigns a new one only with a consistency proof from
that one, so two checkpoints that both carry its cosignature can never disagree. Readers
who require cosignatures from witnesses they trust are then safe from a split view.

Why pure: every rule that keeps that promise is in `decide`, a function of the request,
the trusted keys, the stored state, the witness key and a timestamp, so the tests can walk
every response code of the specification without a socket, a file or a clock. What the
decision leaves to the caller (ledger/witnesses/server.py) is the part no pure function
can do: storing the new state durably BEFORE the cosignature leaves the process, and
deciding one request at a time.

The specification's checks, in its order, and the status of each refusal:

- 400: a body that is not `old N`, at most 63 base64 hash lines, a blank line and a signed
  checkpoint note (this project's checkpoints have no extension lines, PROTOCOL.md section
  7, so one with any is malformed here); or an old size above the checkpoint's size.
- 404: the checkpoint's origin is not a log this witness knows.
- 403: no signature of a trusted key for that origin verifies, or one of a trusted key
  fails to verify (signed-note.md: such a note is bad as a whole).
- 409: the old size is not the size this witness last cosigned (0 if never); the body is
  that size and a newline, Content-Type `text/x.tlog.size`, so the log can retry with a
  proof from there.
- 422: a size-0 checkpoint whose root is not the empty tree's; a proof with old size 0; a
  consistency proof that does not verify; the same size as stored with another root.

A checkpoint smaller than the stored one never reaches 422: its old size is either above
its own size (400) or not the stored size (409), which is what the specification says.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import (
    ALG_ED25519,
    MAX_TREE_SIZE,
    Checkpoint,
    Note,
    NoteError,
    Verifier,
    b64_strict,
    cosign,
    decimal_strict,
    parse_checkpoint,
    parse_note,
    signatures_by,
    verify_note_signature,
)
from ledger.errors import Refused

__all__ = [
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "LogState",
    "Known",
    "AddCheckpoint",
    "Cosigned",
    "Refusal",
    "Decision",
    "parse_add_checkpoint",
    "decide",
]

MAX_PROOF_LINES = 63
"""A client MUST NOT send more (tlog-witness.md): 63 hashes prove consistency up to 2^63 leaves."""

SIZE_CONTENT_TYPE = "text/x.tlog.size"
"""The Content-Type of a 409's body, the witness's size (tlog-witness.md)."""

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
"""Of every other body: the signature lines of a 200, the reason of a refusal."""


@dataclass(frozen=True)
class LogState:
    """What the witness holds for one log: the size and root of the latest checkpoint it cosigned."""

    size: int
    root: bytes


@dataclass(frozen=True)
class Known:
    """A log the witness serves: its origin and the log keys (type 0x01) it trusts for it.

    More than one key during a ledger key rotation: a checkpoint signed by any of them counts.
    """

    origin: str
    verifiers: tuple[Verifier, ...]


@dataclass(frozen=True)
class AddCheckpoint:
    """A well-formed `add-checkpoint` body: the old size, the consistency proof and the checkpoint.

    `note` is the signed note as sent (its text is the checkpoint's, signatures unverified),
    `checkpoint` what its text says.
    """

    old_size: int
    proof: tuple[bytes, ...]
    note: Note
    checkpoint: Checkpoint


@dataclass(frozen=True)
class Cosigned:
    """200: cosign. The caller MUST store `new_state` for `origin` durably before sending `body`."""

    origin: str
    new_state: LogState
    signature_line: str

    status = 200
    content_type = TEXT_CONTENT_TYPE

    @property
    def body(self) -> bytes:
        return self.signature_line.encode("utf-8")


@dataclass(frozen=True)
class Refusal:
    """Any other answer: the HTTP status, its body and the body's Content-Type. Nothing is stored."""

    status: int
    body: bytes
    content_type: str = TEXT_CONTENT_TYPE

    @classmethod
    def because(cls, status: int, reason: str) -> Refusal:
        return cls(status, (reason.rstrip("\n") + "\n").encode("utf-8"))


Decision = Cosigned | Refusal


def _bad(reason: str) -> Refusal:
    return Refusal.because(400, reason)


def parse_add_checkpoint(body: bytes) -> AddCheckpoint | Refusal:
    """Read an `add-checkpoint` body strictly; a 400 Refusal saying why for anything else.

    The body is `old N`, then up to 63 lines each the base64 of a 32-byte hash, then an empty
    line, then the signed checkpoint note. The checkpoint's text has no empty line (its origin,
    size and root lines are non-empty), so the first empty line of the body is the separator.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return _bad("the body is not bytes")
    raw = bytes(body)
    head_end = raw.find(b"\n\n")
    if head_end < 0:
        return _bad("no empty line between the old size and proof lines and the checkpoint")
    head, note_bytes = raw[:head_end], raw[head_end + 2 :]
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return _bad("the old size and proof lines are not ASCII")
    word, space, size_text = lines[0].partition(" ")
    if word != "old" or not space:
        return _bad("the body does not start with an `old <size>` line")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        return _bad(f"{len(proof_lines)} consistency proof lines, more than {MAX_PROOF_LINES}")
    try:
        old_size = decimal_strict(size_text, "the old size", MAX_TREE_SIZE)
        proof = tuple(
            b64_strict(line, f"consistency proof line {n}", size=merkle.HASH_SIZE)
            for n, line in enumerate(proof_lines, start=1)
        )
        note = parse_note(note_bytes)
        checkpoint = parse_checkpoint(note.text)
    except NoteError as exc:
        return _bad(str(exc))
    if old_size > checkpoint.size:
        return _bad(f"the old size {old_size} is larger than the checkpoint's size {checkpoint.size}")
    return AddCheckpoint(old_size, proof, note, checkpoint)


def _log_signature_ok(note: Note, verifiers: tuple[Verifier, ...]) -> bool:
    """signed-note.md's rule: at least one trusted key's line, and every trusted key's line verifies.

    Lines of other keys (the log's next key before it is trusted, witnesses' cosignatures) are ignored.
    """
    present = [v for v in verifiers if v.alg == ALG_ED25519 and signatures_by(note, v)]
    return bool(present) and all(verify_note_signature(note, v) for v in present)


def decide(
    request: AddCheckpoint,
    known: Mapping[str, Known],
    state: Mapping[str, LogState],
    name: str,
    key: SigningKey,
    now_s: int,
) -> Decision:
    """The witness's answer to one well-formed request (see the module docstring for the codes).

    `known`: the logs this witness serves, by origin; `state`: what it last cosigned, by
    origin (absent: never, i.e. size 0); `name` and `key`: the witness's own (its cosignature
    is type 0x04 under `name`); `now_s`: the cosignature's timestamp in POSIX seconds, which
    the specification forbids to be zero. Deciding and then storing a `Cosigned`'s new state
    must happen under one lock, or two requests could both pass against the same old state.
    """
    if type(now_s) is not int or now_s < 1:
        raise Refused(f"a cosignature's timestamp must be a positive integer of seconds, not {now_s!r}")
    cp = request.checkpoint
    log = known.get(cp.origin)
    if log is None:
        return Refusal.because(404, f"unknown log origin {cp.origin!r}")
    if not _log_signature_ok(request.note, log.verifiers):
        return Refusal.because(403, f"no valid signature by a trusted key of {cp.origin}")
    stored = state.get(cp.origin)
    stored_size = stored.size if stored is not None else 0
    if request.old_size != stored_size:
        return Refusal(409, f"{stored_size}\n".encode("ascii"), SIZE_CONTENT_TYPE)
    if cp.size == 0 and not hmac.compare_digest(cp.root, merkle.EMPTY_ROOT):
        return Refusal.because(422, "a checkpoint of size 0 must have the empty tree's root")
    if request.old_size == 0:
        if request.proof:
            return Refusal.because(422, "the consistency proof from size 0 must be empty")
    else:
        assert stored is not None  # old_size == stored_size > 0
        if cp.size < stored.size:  # unreachable: old_size <= cp.size (400) and == stored.size (409)
            return Refusal.because(422, f"size {cp.size} is smaller than the cosigned {stored.size}")
        if cp.size == stored.size and not hmac.compare_digest(cp.root, stored.root):
            return Refusal.because(422, f"size {cp.size} with a root other than the one cosigned at that size")
        if not merkle.verify_consistency(stored.size, cp.size, stored.root, cp.root, request.proof):
            return Refusal.because(422, f"the consistency proof from size {stored.size} does not verify")
    signature = cosign(request.note.text, name, key, now_s)
    return Cosigned(cp.origin, LogState(cp.size, cp.root), signature.line())
