"""C2SP signed notes, verifier keys, checkpoints and cosignatures (PROTOCOL.md section 7). Pure core.

Why these formats and not our own JSON: the transparency-log world (Go's sumdb/note,
the witnesses of the tlog-witness network, litewitness, sigsum, ...) already reads and
writes them, so a checkpoint the ledger signs here can be checked and cosigned by tools
that know nothing about cityledger. The specifications are copied in
shared/specs/c2sp/ (signed-note.md, tlog-checkpoint.md, tlog-cosignature.md).

Why so strict: a signed note is a signature over bytes, and whoever reads one must
agree with us on which bytes were signed. So every value has exactly one accepted
spelling (canonical padded base64, lowercase hex, decimal without leading zeros), and
anything the specifications do not allow is refused with `NoteError`, never repaired.
Where the specification leaves a choice to the implementation (limits, duplicates) the
choice is the stricter one and is named at the constant or function that makes it.

Nothing here reads a clock: a cosignature's timestamp is a parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from ledger.errors import Refused

__all__ = [
    "ALG_ED25519",
    "ALG_COSIGNATURE",
    "COSIGNATURE_HEADER",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "MAX_TIMESTAMP",
    "MAX_TREE_SIZE",
    "ROOT_SIZE",
    "NoteError",
    "b64",
    "b64_strict",
    "decimal_strict",
    "check_key_name",
    "Signature",
    "Note",
    "parse_note",
    "key_id",
    "Verifier",
    "parse_vkey",
    "verifier_key",
    "make_verifier",
    "sign_note",
    "signatures_by",
    "verify_note_signature",
    "Checkpoint",
    "checkpoint_text",
    "parse_checkpoint",
    "cosignature_message",
    "cosign",
    "verify_cosignature",
    "signed_checkpoint",
]

ALG_ED25519 = 0x01
"""Signature type of a plain Ed25519 note signature (signed-note.md): the ledger's, on its checkpoints."""

ALG_COSIGNATURE = 0x04
"""Signature type of a timestamped Ed25519 checkpoint cosignature (tlog-cosignature.md): a witness's."""

COSIGNATURE_HEADER = "cosignature/v1"
"""The first line of the message a witness signs (tlog-cosignature.md, "Ed25519 signed message")."""

MAX_SIGNATURES = 100
"""The most signature lines a note may carry. The spec asks for at least 16; 100 is what Go's
golang.org/x/mod/sumdb/note accepts, so any note it reads we read too."""

MAX_NOTE_BYTES = 1 << 20
"""The largest note read at all: far above any checkpoint (100 post-quantum signatures fit)."""

MAX_TIMESTAMP = 2**63 - 1
"""A cosignature's timestamp MUST NOT exceed it (tlog-cosignature.md)."""

MAX_TREE_SIZE = 2**63 - 1
"""The largest tree size a checkpoint may state: what every other implementation holds in an int64."""

ROOT_SIZE = 32
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

_EM_DASH_PREFIX = "\u2014 "
_KNOWN_ALGS = {ALG_ED25519: "Ed25519", ALG_COSIGNATURE: "timestamped Ed25519 cosignature"}
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every ASCII control character but the newline
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?", re.ASCII)
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


class NoteError(Refused):
    """A signed note, verifier key, checkpoint or cosignature that the C2SP formats do not allow."""


# ---------------------------------------------------------------- small strict pieces


def b64_strict(text: str, what: str, *, size: int | None = None) -> bytes:
    """The bytes of standard padded base64 (RFC 4648 section 4) in its one canonical spelling.

    Python's decoder alone would accept non-zero padding bits (two spellings of one value),
    so the result is encoded again and compared. `size`: the exact number of bytes required.
    """
    if not _B64.fullmatch(text):
        raise NoteError(f"{what} is not standard padded base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the pattern admits only valid base64
        raise NoteError(f"{what} is not standard padded base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64 (non-zero padding bits)")
    if size is not None and len(raw) != size:
        raise NoteError(f"{what} must be the base64 of {size} bytes, not {len(raw)}")
    return raw


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decimal_strict(text: str, what: str, maximum: int) -> int:
    """An ASCII decimal with no leading zeros (unless it is 0), at most `maximum`.

    Python's int() would also take "+1", " 1", "1_000" and non-ASCII digits: all refused here.
    """
    if not _DECIMAL.fullmatch(text):
        raise NoteError(f"{what} must be an ASCII decimal without leading zeros, not {text[:24]!r}")
    if len(text) > len(str(maximum)) or int(text) > maximum:
        raise NoteError(f"{what} {text[:24]} is larger than {maximum}")
    return int(text)


def _is_space(ch: str) -> bool:
    # Unicode spaces as Go's unicode.IsSpace sees them (White_Space): Python's isspace() plus
    # the separator categories, to be sure nothing Go would call a space slips through.
    return ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NoteError(f"{what} is not valid UTF-8 (a lone surrogate at {exc.start})") from exc


def check_key_name(name: str) -> str:
    """A key name as signed-note.md allows it: non-empty, no Unicode space, no '+', and (since it
    appears in a note) valid UTF-8 without control characters. Returns it; raises NoteError."""
    if not isinstance(name, str) or not name:
        raise NoteError("a key name must be a non-empty string")
    _utf8(name, "the key name")
    if "+" in name:
        raise NoteError(f"the key name {name[:64]!r} contains '+'")
    if any(_is_space(ch) for ch in name):
        raise NoteError(f"the key name {name[:64]!r} contains a space")
    if _CONTROL.search(name):
        raise NoteError(f"the key name {name[:64]!r} contains a control character")
    return name


def _check_text(text: str) -> None:
    """A note text: non-empty, ends with a newline, UTF-8 with no control character but newline."""
    if not isinstance(text, str) or not text:
        raise NoteError("a note text must be a non-empty string")
    if not text.endswith("\n"):
        raise NoteError("the note text does not end with a newline")
    bad = _CONTROL.search(text)
    if bad:
        raise NoteError(f"the note text contains the control character {bad.group()!r} at {bad.start()}")
    if len(_utf8(text, "the note text")) > MAX_NOTE_BYTES:
        raise NoteError(f"the note text is larger than {MAX_NOTE_BYTES} bytes")


# ---------------------------------------------------------------- notes


@dataclass(frozen=True)
class Signature:
    """One signature line: `— <name> base64(key_id || signature)`.

    `signature` is what follows the 4-byte key id: 64 bytes for Ed25519, 72 (an 8-byte
    timestamp, then 64) for a cosignature; any length of at least one byte for types we
    do not verify, which a note may carry and a verifier must ignore.
    """

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.key_id, bytes) or len(self.key_id) != 4:
            raise NoteError("a key id is exactly 4 bytes")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise NoteError("a signature line must carry at least one byte after the key id")

    def line(self) -> str:
        """The line as it appears in a note, newline included."""
        return f"{_EM_DASH_PREFIX}{self.name} {b64(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A note text (final newline included) and its signatures, in the order they appear.

    Two signatures with the same key name and key id are refused: Go's reader would
    silently keep only the first, so such a note could mean different things to two
    readers. A note with no signature can be built (to sign it), not encoded.
    """

    text: str
    signatures: tuple[Signature, ...] = ()

    def __post_init__(self) -> None:
        _check_text(self.text)
        if not isinstance(self.signatures, tuple) or not all(isinstance(s, Signature) for s in self.signatures):
            raise NoteError("a note's signatures must be a tuple of Signature")
        if len(self.signatures) > MAX_SIGNATURES:
            raise NoteError(f"a note carries at most {MAX_SIGNATURES} signatures")
        seen: set[tuple[str, bytes]] = set()
        for s in self.signatures:
            if (s.name, s.key_id) in seen:
                raise NoteError(f"two signatures by the key {s.name}+{s.key_id.hex()}")
            seen.add((s.name, s.key_id))

    def encode(self) -> bytes:
        """The signed note: text, a blank line, then one line per signature."""
        if not self.signatures:
            raise NoteError("a signed note needs at least one signature")
        out = (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode("utf-8")
        if len(out) > MAX_NOTE_BYTES:
            raise NoteError(f"the note is larger than {MAX_NOTE_BYTES} bytes")
        return out

    def with_signatures(self, *signatures: Signature) -> Note:
        """The same text with these signatures added after the ones it has (a witness's, say)."""
        return Note(self.text, self.signatures + tuple(signatures))


def parse_note(data: bytes | str) -> Note:
    """Read a signed note exactly as signed-note.md defines it; NoteError for anything else.

    Checks: valid UTF-8, no control character but newline, a text ending in a newline, then
    a blank line, then one or more lines `— <name> <base64>` each ending in a newline, where
    the name is a valid key name and the base64 is canonical and holds a 4-byte key id and at
    least one signature byte. The text is everything up to the last blank line, so the text
    itself may contain blank lines. Signatures are parsed, not verified: see
    `verify_note_signature`.
    """
    if isinstance(data, str):
        raw = _utf8(data, "the note")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise NoteError(f"a note is bytes or str, not {type(data).__name__}")
    if len(raw) > MAX_NOTE_BYTES:
        raise NoteError(f"the note is larger than {MAX_NOTE_BYTES} bytes")
    try:
        whole = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError(f"the note is not valid UTF-8 (byte {exc.start})") from exc
    bad = _CONTROL.search(whole)
    if bad:
        raise NoteError(f"the note contains the control character {bad.group()!r} at {bad.start()}")
    split = whole.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no blank line before its signatures")
    text, block = whole[: split + 1], whole[split + 2 :]
    if not block:
        raise NoteError("the note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("the last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has {len(lines)} signature lines, more than {MAX_SIGNATURES}")
    signatures = tuple(_signature_line(line, n) for n, line in enumerate(lines, start=1))
    return Note(text, signatures)


def _signature_line(line: str, n: int) -> Signature:
    if not line.startswith(_EM_DASH_PREFIX):
        raise NoteError(f"signature line {n} does not start with an em dash and a space")
    name, space, encoded = line[len(_EM_DASH_PREFIX) :].partition(" ")
    if not space:
        raise NoteError(f"signature line {n} has no space between the key name and the signature")
    try:
        check_key_name(name)
        raw = b64_strict(encoded, f"the signature on line {n}")
    except NoteError as exc:
        raise NoteError(f"signature line {n}: {exc}") from exc
    if len(raw) < 5:
        raise NoteError(f"signature line {n}: a signature is a 4-byte key id and at least one more byte")
    return Signature(name, raw[:4], raw[4:])


# ---------------------------------------------------------------- verifier keys


def key_id(name: str, alg: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || alg || public key)[:4], the key id of signed-note.md.

    For alg 0x04 the tlog-cosignature spec makes this a MUST; for 0x01 it is the RECOMMENDED
    id, and the only one this project writes or accepts.
    """
    if not 0 <= alg <= 0xFF:
        raise NoteError(f"a signature type is one byte, not {alg}")
    return hashlib.sha256(_utf8(check_key_name(name), "the key name") + b"\n" + bytes([alg]) + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A public key as a note verifier: name, key id, signature type and key material.

    Only the two types this project uses can be built (0x01 and 0x04, both 32-byte Ed25519
    keys), and the key id must be the one `key_id` computes: a verifier whose id does not
    follow from its key would match signature lines it cannot have made.
    """

    name: str
    key_id: bytes
    alg: int
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.alg not in _KNOWN_ALGS:
            raise NoteError(f"unsupported signature type 0x{self.alg:02x} (only 0x01 and 0x04)")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != ED25519_KEY_SIZE:
            raise NoteError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")
        if self.key_id != key_id(self.name, self.alg, self.public_key):
            raise NoteError(f"the key id of {self.name} does not match its key")

    def vkey(self) -> str:
        """`<name>+<hex key id>+<base64(type || key)>`, the verifier key of signed-note.md."""
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([self.alg]) + self.public_key)}"

    def __str__(self) -> str:
        return self.vkey()


def make_verifier(name: str, public_key: bytes, alg: int = ALG_ED25519) -> Verifier:
    """The verifier for a key under a name, its key id computed."""
    if not isinstance(public_key, bytes):
        raise NoteError("a public key is bytes")
    return Verifier(name, key_id(name, alg, public_key), alg, public_key)


def verifier_key(name: str, public_key: bytes, alg: int = ALG_ED25519) -> str:
    """The vkey string for a key under a name (alg 0x01 for a log, 0x04 for a witness)."""
    return make_verifier(name, public_key, alg).vkey()


def parse_vkey(vkey: str) -> Verifier:
    """Read a vkey; NoteError unless it is name, lowercase 8-hex-digit key id and canonical
    base64 of a supported type byte and 32-byte key, and the id is the one the key gives.

    The name cannot contain '+', so the first two '+' are the separators (the base64 may
    contain more).
    """
    if not isinstance(vkey, str):
        raise NoteError("a verifier key is a string")
    name, sep1, rest = vkey.partition("+")
    hex_id, sep2, encoded = rest.partition("+")
    if not (sep1 and sep2):
        raise NoteError("a verifier key is <name>+<key id>+<key>")
    check_key_name(name)
    if not _HEX8.fullmatch(hex_id):
        raise NoteError(f"the key id of a verifier key is 8 lowercase hex digits, not {hex_id[:16]!r}")
    raw = b64_strict(encoded, "the key of the verifier key")
    if len(raw) < 2:
        raise NoteError("the key of a verifier key is a type byte and the key")
    alg, public_key = raw[0], raw[1:]
    if alg not in _KNOWN_ALGS:
        raise NoteError(f"unsupported signature type 0x{alg:02x} in the verifier key (only 0x01 and 0x04)")
    if len(public_key) != ED25519_KEY_SIZE:
        raise NoteError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes, not {len(public_key)}")
    verifier = make_verifier(name, public_key, alg)
    if verifier.key_id.hex() != hex_id:
        raise NoteError(f"the verifier key's id {hex_id} is not its key's ({verifier.key_id.hex()})")
    return verifier


# ---------------------------------------------------------------- signing and verifying


def sign_note(text: str, name: str, key: SigningKey) -> Signature:
    """An Ed25519 note signature (type 0x01) by `key` under `name` over the note text."""
    _check_text(text)
    public = key.verify_key.encode()
    return Signature(name, key_id(name, ALG_ED25519, public), key.sign(text.encode("utf-8")).signature)


def signatures_by(note: Note, verifier: Verifier) -> tuple[Signature, ...]:
    """The note's signature lines with the verifier's name and key id (a verifier must check
    those and ignore every other line, signed-note.md). At most one: `Note` refuses two."""
    return tuple(s for s in note.signatures if s.name == verifier.name and s.key_id == verifier.key_id)


def _ed25519_ok(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != ED25519_SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def verify_note_signature(note: Note, verifier: Verifier) -> bool:
    """True iff the note carries a signature line of this verifier and it verifies.

    Type 0x01: Ed25519 over the note text. Type 0x04: a cosignature (`verify_cosignature`).
    Lines of other keys are ignored, as the spec requires; this says nothing about them.
    """
    lines = signatures_by(note, verifier)
    if not lines:
        return False
    if verifier.alg == ALG_COSIGNATURE:
        return verify_cosignature(note, verifier) is not None
    message = note.text.encode("utf-8")
    return all(_ed25519_ok(verifier.public_key, message, s.signature) for s in lines)


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """The three lines of a C2SP checkpoint: origin, tree size, root hash.

    cityledger checkpoints have no extension lines (PROTOCOL.md section 7), so there is no
    field for them and `parse_checkpoint` refuses them.
    """

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise NoteError("a checkpoint's origin must be non-empty")
        if "\n" in self.origin or _CONTROL.search(self.origin):
            raise NoteError("a checkpoint's origin is one line without control characters")
        _utf8(self.origin, "the origin")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"a checkpoint's size is an integer from 0 to {MAX_TREE_SIZE}")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise NoteError(f"a checkpoint's root is {ROOT_SIZE} bytes")

    def text(self) -> str:
        return checkpoint_text(self)


def checkpoint_text(cp: Checkpoint) -> str:
    """The note text of a checkpoint: origin, size and base64 root, each on its own line."""
    return f"{cp.origin}\n{cp.size}\n{b64(cp.root)}\n"


def _checkpoint_lines(text: str) -> tuple[Checkpoint, list[str]]:
    """The checkpoint and its extension lines, each checked as tlog-checkpoint.md says."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError(f"a checkpoint has at least 3 lines (origin, size, root), not {len(lines)}")
    origin, size, root = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    extensions = lines[3:]
    if any(not line for line in extensions):
        raise NoteError("a checkpoint's extension lines must be non-empty")
    return (
        Checkpoint(
            origin,
            decimal_strict(size, "the checkpoint's tree size", MAX_TREE_SIZE),
            b64_strict(root, "the checkpoint's root hash", size=ROOT_SIZE),
        ),
        extensions,
    )


def parse_checkpoint(text: str) -> Checkpoint:
    """Read a cityledger checkpoint from a note text: exactly origin, size and root.

    Refuses what tlog-checkpoint.md refuses (empty origin, leading zeros, a root that is not
    the base64 of 32 bytes, a missing final newline) and, since PROTOCOL.md section 7 says our
    checkpoints have none, any extension line.
    """
    cp, extensions = _checkpoint_lines(text)
    if extensions:
        raise NoteError(f"a cityledger checkpoint has no extension lines; this one has {len(extensions)}")
    return cp


def signed_checkpoint(cp: Checkpoint, keys: Sequence[SigningKey]) -> Note:
    """The checkpoint signed by each key (type 0x01) under its origin, in the order given.

    During a ledger key rotation the rotating block's checkpoint carries two signatures, the
    old key's and then the new key's (PROTOCOL.md section 7): pass [old, new].
    """
    if not keys:
        raise NoteError("a checkpoint needs at least one signing key")
    text = checkpoint_text(cp)
    return Note(text, tuple(sign_note(text, cp.origin, key) for key in keys))


# ---------------------------------------------------------------- cosignatures


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """What a witness signs (tlog-cosignature.md): `cosignature/v1`, `time <timestamp>`, then the
    whole checkpoint text (extension lines included, signature lines not), each line ending in
    a newline."""
    if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"a cosignature timestamp is an integer from 0 to {MAX_TIMESTAMP}")
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{checkpoint_text}".encode()


def cosign(checkpoint_text: str, name: str, key: SigningKey, timestamp: int) -> Signature:
    """A witness's cosignature (type 0x04) of a checkpoint at `timestamp` (POSIX seconds).

    The signature bytes are the 8-byte big-endian timestamp, then Ed25519 over
    `cosignature_message`. The text must be a checkpoint (extension lines are allowed here:
    the cosignature format covers them, and it is not ours to refuse another log's).
    """
    _checkpoint_lines(checkpoint_text)
    message = cosignature_message(checkpoint_text, timestamp)
    public = key.verify_key.encode()
    signature = timestamp.to_bytes(8, "big") + key.sign(message).signature
    return Signature(name, key_id(name, ALG_COSIGNATURE, public), signature)


def verify_cosignature(note: Note, verifier: Verifier) -> int | None:
    """The timestamp of the witness's valid cosignature in the note, or None.

    None when the verifier is not a cosignature key (type 0x04), the note has no line of it,
    the line is not 8 + 64 bytes, its timestamp exceeds 2^63 - 1, or the signature over
    `cosignature_message(note.text, timestamp)` does not verify.
    """
    if verifier.alg != ALG_COSIGNATURE:
        return None
    found: int | None = None
    for s in signatures_by(note, verifier):
        if len(s.signature) != 8 + ED25519_SIGNATURE_SIZE:
            return None
        timestamp = int.from_bytes(s.signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            return None
        if not _ed25519_ok(verifier.public_key, cosignature_message(note.text, timestamp), s.signature[8:]):
            return None
        found = timestamp
    return found
