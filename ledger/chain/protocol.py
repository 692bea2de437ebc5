"""The device wire contract of PROTOCOL.md sections 1-3, in one place.

Edge agents and the ingest service both import this module; nothing else in the
project defines a topic, a reading member, canonical JSON or a signed message. A
third party implementing the protocol without our code must get the same bytes,
so every function here is pure and tested against the published test vector.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal, cast

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ledger.errors import Refused

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 1024
QUARANTINE_RAW_LIMIT = 4096
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
SEQ_MAX = 2**63 - 1
INT64_MAX = 2**63 - 1

KINDS: tuple[str, ...] = ("water", "gas", "electricity", "parking")
METER_KINDS: tuple[str, ...] = ("water", "gas", "electricity")
Kind = Literal["water", "gas", "electricity", "parking"]

DISTRICT_PATTERN = r"^[a-z0-9-]{1,32}$"
DEVICE_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_DISTRICT_RE = re.compile(DISTRICT_PATTERN)
_DEVICE_RE = re.compile(DEVICE_PATTERN)

READING_CONTEXT_TEXT = "cityledger/reading/v1\n"
READING_CONTEXT = READING_CONTEXT_TEXT.encode()

CHECKPOINT_TOPIC = "city/ledger/checkpoint"
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
# What the ingest identity subscribes to: every reading and status, and witnesses' reports.
INGEST_TOPICS: tuple[str, ...] = ("city/+/+/+/reading", "city/+/+/+/status", "city/witness/+/+")


RESERVED_DISTRICTS = frozenset({"ledger", "witness"})  # city/ledger/# and city/witness/# are the ledger's own


@dataclass(frozen=True)
class ChainTopics:
    """The topics of one chain: the city's (district None) or one district's.

    `headers` carries every sealed header, in order, for witnesses with a durable
    session (not retained); `checkpoint` the newest (retained). A district's chain
    has its own pair under `city/ledger/districts/{district}/`, and its ingest takes
    only that district's device topics, in a shared subscription group of its own.
    """

    district: str | None = None

    @property
    def _ledger(self) -> str:
        return f"city/ledger/districts/{self.district}" if self.district else "city/ledger"

    @property
    def checkpoint(self) -> str:
        return f"{self._ledger}/checkpoint"

    @property
    def headers(self) -> str:
        return f"{self._ledger}/headers"

    @property
    def tlog_checkpoint(self) -> str:
        """The log's newest cosigned checkpoint, a C2SP signed note (PROTOCOL.md section 7; retained)."""
        return f"{self._ledger}/tlog-checkpoint"

    @property
    def ingest(self) -> tuple[str, ...]:
        if self.district is None:
            return INGEST_TOPICS
        return (f"city/{self.district}/+/+/reading", f"city/{self.district}/+/+/status")

    @property
    def share_group(self) -> str:
        return f"cityledger-{self.district}" if self.district else "cityledger-ingest"


# What the city anchor follows: every district's header stream and checkpoint.
DISTRICT_HEADERS_TOPIC = "city/ledger/districts/+/headers"
DISTRICT_CHECKPOINT_TOPIC = "city/ledger/districts/+/checkpoint"


def witness_topic(witness: str, leaf: str) -> str:
    """`city/witness/{name}/alarm` (an alarm, retained) or `.../head` (what it last accepted)."""
    if not _DEVICE_RE.fullmatch(witness) or leaf not in ("alarm", "head"):
        raise ValueError(f"invalid witness topic {witness!r}/{leaf!r}")
    return f"city/witness/{witness}/{leaf}"


def signed_header_payload(block_hash: str, header: dict[str, Any], sig: bytes) -> bytes:
    """What the checkpoint and the header stream carry: a header, its hash and signature."""
    return canonical_json({"hash": block_hash, "header": header, "sig": base64.b64encode(sig).decode()})


class Reason(StrEnum):
    """Quarantine reasons of PROTOCOL.md section 3; the values are the wire names."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED_DEVICE = "revoked_device"
    TOPIC_MISMATCH = "topic_mismatch"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    FUTURE_TIMESTAMP = "future_timestamp"


# ---------------------------------------------------------------- canonical JSON


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 canonical form for the protocol's objects (ASCII keys, no floats).

    Python's sorted keys equal JCS order for ASCII keys, and its escapes with
    ensure_ascii=False are exactly the ones JCS requires.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# ---------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A parsed `city/{district}/{kind}/{device}/{leaf}` topic."""

    district: str
    kind: str
    device: str
    leaf: str  # "reading" | "status" | "ack"

    def __str__(self) -> str:
        return f"city/{self.district}/{self.kind}/{self.device}/{self.leaf}"


def device_topic(district: str, kind: str, device: str, leaf: str) -> str:
    """Build a device topic, refusing names that would escape the topic tree."""
    if not (_DISTRICT_RE.fullmatch(district) and kind in KINDS and _DEVICE_RE.fullmatch(device)):
        raise ValueError(f"invalid topic parts: {district!r}/{kind!r}/{device!r}")
    if leaf not in ("reading", "status", "ack"):
        raise ValueError(f"invalid topic leaf {leaf!r}")
    return f"city/{district}/{kind}/{device}/{leaf}"


@lru_cache(maxsize=1 << 16)
def parse_topic(topic: str) -> DeviceTopic | None:
    """Parse a device topic; None for anything that is not one (never raises).

    Cached: ingest parses the topic of every message, and a device publishes on two topics
    only (the broker's ACL), so a flood costs one look-up per message instead of the patterns.
    """
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "city":
        return None
    _, district, kind, device, leaf = parts
    if not (_DISTRICT_RE.fullmatch(district) and kind in KINDS and _DEVICE_RE.fullmatch(device)):
        return None
    if leaf not in ("reading", "status", "ack"):
        return None
    return DeviceTopic(district, kind, device, leaf)


def valid_device_id(device: str) -> bool:
    return bool(_DEVICE_RE.fullmatch(device))


def valid_district(district: str) -> bool:
    return bool(_DISTRICT_RE.fullmatch(district))


# ---------------------------------------------------------------- the reading

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_PATTERN)]


class Reading(BaseModel):
    """A signed reading exactly as PROTOCOL.md section 2 defines it.

    Strict: no coercion (a "7" is not a 7, a true is not a 1), no extra members.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[1]
    device: DeviceId
    kind: Kind
    seq: Annotated[int, Field(ge=1, le=SEQ_MAX)]
    ts: Annotated[int, Field(ge=0, le=INT64_MAX)]
    value: Annotated[int, Field(ge=0, le=INT64_MAX)]
    sig: Annotated[str, StringConstraints(min_length=88, max_length=88)]

    @field_validator("v", mode="before")
    @classmethod
    def _v_is_int(cls, v: Any) -> Any:
        if type(v) is not int:  # Literal[1] alone lets True through, as 1
            raise ValueError("v must be the integer 1")
        return v

    _sig_bytes: bytes | None = PrivateAttr(default=None)
    _leaf: bytes | None = PrivateAttr(default=None)  # its canonical JSON when at hand (the payload it came in)

    @model_validator(mode="after")
    def _check(self) -> Reading:
        if self.kind == "parking" and self.value not in (0, 1):
            raise ValueError("parking value must be 0 or 1")
        self._sig_bytes = signature_bytes(self.sig)
        return self

    @classmethod
    def trusted(
        cls,
        *,
        device: str,
        kind: str,
        seq: int,
        ts: int,
        value: int,
        sig: str,
        v: int = 1,
        sig_bytes: bytes | None = None,
        leaf: bytes | None = None,
    ) -> Reading:
        """A reading already validated by `parse_reading` in another of our processes (an ingest
        worker), rebuilt without validating it twice. What `model_construct` does, at a fifth of
        its cost: ingest rebuilds every reading it receives this way. Never for outside input.
        `leaf`: its canonical JSON, when already at hand (the payload it came in)."""
        r = cls.__new__(cls)
        _set(r, "__dict__", {"v": v, "device": device, "kind": kind, "seq": seq, "ts": ts, "value": value, "sig": sig})
        _set(r, "__pydantic_fields_set__", _READING_FIELDS)
        _set(r, "__pydantic_extra__", None)
        _set(r, "__pydantic_private__", {"_sig_bytes": sig_bytes, "_leaf": leaf})
        return r

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Reading:
        """A copy (unvalidated, as pydantic's is) whose cached bytes, the signature's and the leaf,
        come from its own members. `deep` changes nothing: every member is immutable."""
        return Reading.trusted(**{**self.__dict__, **(update or {})})

    def __eq__(self, other: object) -> bool:
        """Equal members, equal readings: the private attributes only cache what they imply."""
        if isinstance(other, Reading):
            return self.__dict__ == other.__dict__
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__.values()))

    def sig_bytes(self) -> bytes:
        """The 64 signature bytes, decoded once (by validation) however often they are checked."""
        private = cast(
            dict[str, Any], self.__pydantic_private__
        )  # direct: pydantic's attribute path costs over 1 µs a call
        raw = private.get("_sig_bytes")
        if raw is None:
            raw = private["_sig_bytes"] = signature_bytes(self.sig)
        return raw

    def unsigned(self) -> dict[str, Any]:
        """The members covered by the signature."""
        return {
            "v": self.v,
            "device": self.device,
            "kind": self.kind,
            "seq": self.seq,
            "ts": self.ts,
            "value": self.value,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.unsigned(), "sig": self.sig}

    # Ingest builds both of these for every reading, so they are spelled out rather than run
    # through json.dumps: every member is a validated integer, an id of [A-Za-z0-9._-], a kind
    # or base64, none of which JSON escapes, and the members are in canonical (sorted) order.
    # tests/test_protocol.py holds them equal to `canonical_json` for arbitrary readings.

    def signed_message(self) -> bytes:
        return (
            f'{READING_CONTEXT_TEXT}{{"device":"{self.device}","kind":"{self.kind}","seq":{self.seq},'
            f'"ts":{self.ts},"v":{self.v},"value":{self.value}}}'
        ).encode()

    def leaf_data(self) -> bytes:
        """PROTOCOL.md section 4: the leaf is the canonical JSON of the whole reading."""
        leaf = cast(dict[str, Any], self.__pydantic_private__).get("_leaf")
        if leaf is not None:
            return cast(bytes, leaf)
        return (
            f'{{"device":"{self.device}","kind":"{self.kind}","seq":{self.seq},"sig":"{self.sig}",'
            f'"ts":{self.ts},"v":{self.v},"value":{self.value}}}'
        ).encode()

    def payload(self) -> bytes:
        """What a device publishes: canonical JSON, so it equals the leaf data."""
        return self.leaf_data()


_set = object.__setattr__  # past pydantic's frozen __setattr__, for `Reading.trusted`


_READING_FIELDS = frozenset(Reading.model_fields)


def signature_bytes(sig: str) -> bytes:
    """Decode a signature, accepting only the one canonical padded base64 spelling.

    One spelling per signature keeps "same reading" a byte comparison.
    """
    try:
        raw = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("sig is not standard base64") from exc
    if len(raw) != 64 or base64.b64encode(raw).decode() != sig:
        raise ValueError("sig must be the padded base64 of 64 bytes")
    return raw


def signed_message(unsigned: dict[str, Any]) -> bytes:
    """The bytes a device signs: the context line, then canonical JSON without sig."""
    return READING_CONTEXT + canonical_json(unsigned)


def sign_reading(key: SigningKey, *, device: str, kind: str, seq: int, ts: int, value: int) -> Reading:
    """Make a signed reading (the device side)."""
    unsigned: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "device": device,
        "kind": kind,
        "seq": seq,
        "ts": ts,
        "value": value,
    }
    sig = key.sign(signed_message(unsigned)).signature
    return Reading(**unsigned, sig=base64.b64encode(sig).decode())


def verify_reading(key: VerifyKey, reading: Reading) -> bool:
    """True when the reading's signature verifies under `key` (pure Ed25519)."""
    try:
        key.verify(reading.signed_message(), reading.sig_bytes())
    except (BadSignatureError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Rejected:
    """An error as a value: why a payload is not a reading."""

    reason: Reason
    detail: str


class StrictJSONError(Refused):
    """JSON that the protocol refuses although Python's parser would take it."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise StrictJSONError(f"duplicate member {key!r}")
        obj[key] = value
    return obj


def _no_float(text: str) -> Any:
    raise StrictJSONError(f"non-integer number {text[:20]}")


def _no_constant(text: str) -> Any:
    raise StrictJSONError(f"{text} is not JSON")


def strict_json(data: bytes | str) -> Any:
    """Parse JSON as the protocol reads it: UTF-8, no duplicate members, no floats, no NaN.

    Raises ValueError (StrictJSONError, UnicodeDecodeError, JSONDecodeError) or
    RecursionError. Every signed or hashed object in cityledger is read through
    this, so one byte string can only ever mean one object.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_float=_no_float, parse_constant=_no_constant)


# A payload spelled exactly as `Reading.payload()` spells it, which is how devices publish.
_CANONICAL = re.compile(
    rb'\{"device":"([A-Za-z0-9._-]{1,64})","kind":"(water|gas|electricity|parking)","seq":([1-9][0-9]{0,18}),'
    # 64 bytes in padded base64, spelled the one canonical way: the last character carries two bits.
    rb'"sig":"([A-Za-z0-9+/]{85}[AQgw]==)","ts":(0|[1-9][0-9]{0,18}),"v":1,"value":(0|[1-9][0-9]{0,18})\}'
)


def parse_reading(payload: bytes) -> Reading | Rejected:
    """Bytes off the wire to a Reading, or the reason it is not one. Never raises.

    Duplicate keys, NaN, floats, huge integers, deep nesting and invalid UTF-8
    are all `malformed`: the signature could not cover an ambiguous payload.
    A payload in canonical form (what devices send) is read by one regular
    expression instead of the JSON parser and the model: a third of the cost,
    the same result (tests/test_protocol.py compares the two on arbitrary bytes).
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejected(Reason.TOO_LARGE, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    m = _CANONICAL.fullmatch(payload)
    if m is not None:
        device, kind, seq, sig, ts, value = m.groups()
        seq_n, ts_n, value_n = int(seq), int(ts), int(value)
        if seq_n <= SEQ_MAX and ts_n <= INT64_MAX and value_n <= INT64_MAX and (kind != b"parking" or value_n <= 1):
            return Reading.trusted(
                device=device.decode(),
                kind=kind.decode(),
                seq=seq_n,
                ts=ts_n,
                value=value_n,
                sig=sig.decode(),
                sig_bytes=binascii.a2b_base64(sig),  # the pattern admits only canonical base64 of 64 bytes
                leaf=bytes(payload),  # the very object when it is bytes, as on the wire
            )
    return _parse_reading_fully(payload)


def _parse_reading_fully(payload: bytes) -> Reading | Rejected:
    try:
        obj = strict_json(payload)
    except (ValueError, RecursionError) as exc:
        return Rejected(Reason.MALFORMED, _short(exc))
    if not isinstance(obj, dict):
        return Rejected(Reason.MALFORMED, "payload is not a JSON object")
    try:
        return Reading.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "reading"
        return Rejected(Reason.MALFORMED, f"{where}: {first['msg']}"[:200])


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


# ---------------------------------------------------------------- ack


def ack_payload(seq: int, block_hash: str, written_off: tuple[int, int] | None = None) -> bytes:
    """The end-to-end acknowledgement: every reading with seq <= `seq` is ledgered, or written off.

    `written_off` (our extension, docs/protocol.md) names the seqs an operator wrote off when
    that is what moved the ack, so the device can say which readings it drops unledgered.
    """
    if written_off is None and type(seq) is int and _HASH_HEX.fullmatch(block_hash):
        # Spelled out (tests/test_protocol.py holds it equal to canonical_json): ingest sends one per device per block.
        return f'{{"block":"{block_hash}","seq":{seq}}}'.encode()
    ack: dict[str, Any] = {"seq": seq, "block": block_hash}
    if written_off is not None:
        ack["written_off"] = list(written_off)
    return canonical_json(ack)


_HASH_HEX = re.compile(r"[0-9a-f]{64}")


def _ack_object(payload: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_ack(payload: bytes) -> tuple[int, str] | None:
    """(seq, block hash) from an ack payload, or None if it is not one."""
    obj = _ack_object(payload)
    if obj is None:
        return None
    seq, block = obj.get("seq"), obj.get("block")
    if type(seq) is not int or not isinstance(block, str):
        return None
    return seq, block


def parse_written_off(payload: bytes) -> tuple[int, int] | None:
    """The seqs an ack says were written off (first, last), or None."""
    obj = _ack_object(payload)
    span = obj.get("written_off") if obj is not None else None
    if not (
        isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span) and 1 <= span[0] <= span[1]
    ):
        return None
    return span[0], span[1]
