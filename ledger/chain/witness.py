"""A witness's judgement of signed block headers. Pure core.

Hashes inside one database cannot stop whoever controls it from rewriting and
re-signing everything. A witness run by someone else keeps its own copy of every
signed header it accepted and alarms on a fork (two headers for one height), a
rollback (the ledger's head went backwards) or a signature that does not verify
under the key it trusts. `check` decides; it never raises and never writes.
`WitnessStore` (ledger/store/witness_files.py) keeps what was decided, so a witness that restarts (or an auditor
running `cityledger verify --witness DIR`) sees exactly what was accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from nacl.signing import VerifyKey

from ledger.chain.blocks import GENESIS_PREV, block_hash, verify_header
from ledger.chain.protocol import canonical_json, signature_bytes, strict_json

Source = Literal["headers", "checkpoint"]
AlarmKind = Literal["malformed", "bad_signature", "fork", "rollback"]

MAX_HEADER_BYTES = 8192  # the broker's max_packet_size: nothing larger can arrive
HEADERS_FILE = "headers.jsonl"
ALARMS_FILE = "alarms.jsonl"
STATE_FILE = "state.json"
STATE_VERSION = 1
PAYLOAD_MEMBERS = frozenset({"hash", "header", "sig"})

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class SignedHeader:
    """A header with its hash and base64 signature, as ingest publishes it."""

    hash: str
    header: dict[str, Any]
    sig: str

    @property
    def height(self) -> int:
        return int(self.header["height"])

    @property
    def prev(self) -> str:
        return str(self.header["prev"])

    @property
    def next_key(self) -> str | None:
        """The key that signs every later header, when this block rotates the ledger key."""
        key = self.header.get("next_key")
        return str(key) if key is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "header": self.header, "sig": self.sig}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A header the witness now holds. `gap`: heights (first, last) it never saw before it."""

    signed: SignedHeader
    gap: tuple[int, int] | None = None

    @property
    def height(self) -> int:
        return self.signed.height

    @property
    def hash(self) -> str:
        return self.signed.hash


@dataclass(frozen=True, slots=True)
class AlreadyHave:
    """The same header again: a QoS 1 redelivery, or the checkpoint of a header already held."""

    height: int
    hash: str


@dataclass(frozen=True, slots=True)
class Unlinked:
    """A validly signed header below the head at a height the witness holds nothing for.

    It lies before the first header this witness accepted or inside a gap, so there
    is nothing to compare it with: not evidence of a fork, and not linkable either.
    It is neither kept nor alarmed on.
    """

    height: int
    hash: str
    detail: str


@dataclass(frozen=True, slots=True)
class Alarm:
    """Evidence that the ledger is not the one append-only chain the witness follows."""

    kind: AlarmKind
    height: int | None
    detail: str

    def line(self) -> str:
        """One log line an operator cannot misread."""
        where = f" at height {self.height}" if self.height is not None else ""
        return f"WITNESS ALARM {self.kind}{where}: {self.detail}"


Outcome = Accepted | AlreadyHave | Unlinked | Alarm


# ---------------------------------------------------------------- state


@dataclass
class WitnessState:
    """What the witness has accepted, and which ledger key signs which heights.

    `keys` lists (first height, hex key): the operator's key from height 0, then
    one entry per rotation, so a redelivered pre-rotation header still checks
    against the key that signed it while a later header signed by an old key fails.
    """

    keys: list[tuple[int, str]]
    height: int | None = None
    hash: str | None = None
    hashes: dict[int, str] = field(default_factory=dict)
    gaps: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def new(cls, ledger_key: str) -> WitnessState:
        """A witness that trusts `ledger_key` (hex) and holds nothing yet."""
        if not valid_key_hex(ledger_key):
            raise ValueError("ledger key must be 64 hex digits (a 32-byte Ed25519 public key)")
        return cls(keys=[(0, ledger_key.lower())])

    @property
    def initial_key(self) -> str:
        return self.keys[0][1]

    @property
    def key(self) -> str:
        """The key trusted for the next header."""
        return self.keys[-1][1]

    def key_for(self, height: int) -> str:
        """The key that must have signed the header at `height`."""
        chosen = self.keys[0][1]
        for first, key in self.keys:
            if height >= first:
                chosen = key
        return chosen

    def knows_key(self, key: str) -> bool:
        return key.lower() in {k for _, k in self.keys}

    def apply(self, accepted: Accepted) -> None:
        """Advance to an accepted header, in place.

        In place because the hashes grow with the ledger: copying them for every
        block would make following a long ledger quadratic.
        """
        self.height, self.hash = accepted.height, accepted.hash
        self.hashes[accepted.height] = accepted.hash
        if accepted.gap is not None:
            self.gaps.append(accepted.gap)
        next_key = accepted.signed.next_key
        if next_key is not None:
            self.keys.append((accepted.height + 1, next_key))

    def summary(self) -> dict[str, Any]:
        """What state.json holds (the hashes live in headers.jsonl, which is their record)."""
        return {
            "v": STATE_VERSION,
            "ledger_key": self.initial_key,
            "key": self.key,
            "height": self.height,
            "hash": self.hash,
            "keys": [list(k) for k in self.keys],
            "gaps": [list(g) for g in self.gaps],
        }


def valid_key_hex(key: object) -> bool:
    return isinstance(key, str) and bool(_HEX64.match(key.lower()))


# ---------------------------------------------------------------- the judgement


def check(state: WitnessState, payload: bytes, *, source: Source, redelivered: bool = False) -> Outcome:
    """Judge one message from the header stream or the checkpoint topic. Never raises.

    `redelivered` is the MQTT DUP flag: the broker resends what it had sent before
    a reconnect, so an old checkpoint that is a resend is not the ledger moving
    its head backwards (a fresh publish of an old head always arrives with DUP 0).
    """
    parsed = parse_signed_header(payload)
    if isinstance(parsed, Alarm):
        return parsed
    height = parsed.height
    key = state.key_for(height)
    if not _verifies(key, parsed):
        return Alarm(
            "bad_signature",
            height,
            f"header {parsed.hash} does not verify under ledger key {key}" + _gap_hint(state, height),
        )
    if state.height is None:
        return Accepted(parsed)  # trust on first use of the position; the key came from the operator
    if height <= state.height:
        return _check_past(state, parsed, source, redelivered)
    if height == state.height + 1:
        if parsed.prev != state.hash:
            return Alarm(
                "fork",
                height,
                f"header {parsed.hash} links to prev {parsed.prev}, but the accepted "
                f"header at height {state.height} is {state.hash}",
            )
        return Accepted(parsed)
    return Accepted(parsed, gap=(state.height + 1, height - 1))


def _check_past(state: WitnessState, parsed: SignedHeader, source: Source, redelivered: bool) -> Outcome:
    """A header at or below the witness's head: the same as before, or evidence."""
    height, head, known = parsed.height, state.height, state.hashes.get(parsed.height)
    if known is not None and known != parsed.hash:
        return Alarm("fork", height, f"got header {parsed.hash} from {source}, but accepted {known} at this height")
    if source == "checkpoint" and head is not None and height < head and not redelivered:
        return Alarm(
            "rollback",
            height,
            f"the ledger's checkpoint is back at height {height} ({parsed.hash}), "
            f"but this witness accepted height {head} ({state.hash})",
        )
    if known is None:
        return Unlinked(height, parsed.hash, "no header held at this height (before the first accepted or in a gap)")
    return AlreadyHave(height, parsed.hash)


def _verifies(key_hex: str, signed: SignedHeader) -> bool:
    return verify_header(VerifyKey(bytes.fromhex(key_hex)), signed.header, signature_bytes(signed.sig))


def _gap_hint(state: WitnessState, height: int) -> str:
    if state.height is not None and height > state.height + 1:
        return (
            f" (heights {state.height + 1}..{height - 1} were missed; a key rotation among them would also "
            "explain this)"
        )
    return ""


# ---------------------------------------------------------------- strict parsing


def parse_signed_header(payload: bytes) -> SignedHeader | Alarm:
    """Bytes to a SignedHeader whose hash matches, or Alarm("malformed"). Never raises.

    Only the one canonical spelling is accepted: a witness keeps what it was sent,
    and two spellings of one header would be two records of one fact.
    """
    if not isinstance(payload, (bytes, bytearray)) or len(payload) > MAX_HEADER_BYTES:
        return _malformed("payload is not bytes of at most 8 KiB")
    try:
        obj = strict_json(bytes(payload))
        canonical = canonical_json(obj)
    except (ValueError, RecursionError, TypeError) as exc:  # UnicodeError is a ValueError
        return _malformed(f"not JSON: {type(exc).__name__}: {exc}"[:200])
    if canonical != payload:
        return _malformed("not canonical JSON")
    problem = _shape_problem(obj)
    if problem:
        return _malformed(problem, obj)
    if block_hash(obj["header"]) != obj["hash"]:
        return _malformed(f"hash {obj['hash']} is not the hash of the header", obj)
    return SignedHeader(obj["hash"], obj["header"], obj["sig"])


def _shape_problem(obj: Any) -> str | None:
    """Why `obj` is not {"hash", "header", "sig"} with a well-typed header, or None."""
    if not isinstance(obj, dict) or set(obj) != PAYLOAD_MEMBERS:
        return "payload must be an object with exactly hash, header and sig"
    if not isinstance(obj["hash"], str) or not _HEX64.match(obj["hash"]):
        return "hash must be 64 lowercase hex digits"
    if not _is_signature(obj["sig"]):
        return "sig must be the padded base64 of 64 bytes"
    return _header_problem(obj["header"])


def _is_signature(sig: Any) -> bool:
    if not isinstance(sig, str):
        return False
    try:
        signature_bytes(sig)
    except ValueError:
        return False
    return True


def _header_problem(header: Any) -> str | None:
    if not isinstance(header, dict):
        return "header must be an object"
    for name, minimum in (("height", 0), ("size", 1), ("sealed_at", 0)):
        if type(header.get(name)) is not int or header[name] < minimum:
            return f"header.{name} must be an integer >= {minimum}"
    for name in ("prev", "root"):
        if not isinstance(header.get(name), str) or not _HEX64.match(header[name]):
            return f"header.{name} must be 64 lowercase hex digits"
    if header["height"] == 0 and header["prev"] != GENESIS_PREV:
        return "genesis header.prev must be 64 zeros"
    if "next_key" in header and not (isinstance(header["next_key"], str) and _HEX64.match(header["next_key"])):
        return "header.next_key must be 64 lowercase hex digits"
    return None


def _malformed(detail: str, obj: Any = None) -> Alarm:
    height = None
    if isinstance(obj, dict) and isinstance(obj.get("header"), dict) and type(obj["header"].get("height")) is int:
        height = obj["header"]["height"]
    return Alarm("malformed", height, detail)


def alarm_record(alarm: Alarm, *, witness: str, at: int) -> dict[str, Any]:
    """What the alarm topic carries: {"kind", "height", "detail", "at", "witness"}."""
    return {"kind": alarm.kind, "height": alarm.height, "detail": alarm.detail, "at": at, "witness": witness}
