"""PROTOCOL.md section 6 test vector and the parsing rules of ledger/protocol.py."""

from __future__ import annotations

import hashlib
import json

import pytest
from nacl.signing import SigningKey

from ledger import merkle
from ledger.protocol import (
    Reading,
    Reason,
    Rejected,
    ack_payload,
    canonical_json,
    device_topic,
    parse_ack,
    parse_reading,
    parse_topic,
    sign_reading,
    verify_reading,
)
from tests.vectors import load_json

SEED = bytes.fromhex("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
PUBLIC = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
PAYLOAD = (b'{"v":1,"device":"wm-d01-000042","kind":"water","seq":7,"ts":1764000000000,"value":123456,'
           b'"sig":"jY1AvBdW2XvSEaGn0tH3///IfIwtzCBrmeNsa5FRWRli+GCcn6rQAoSbGAZv39psWGTLg9MeOcYqUfJS3vFXDw=="}')
CANONICAL_UNSIGNED = b'{"device":"wm-d01-000042","kind":"water","seq":7,"ts":1764000000000,"v":1,"value":123456}'
LEAF_HASH = "f8a11e59b8fffca00e4b627ead16f8b02f36a359e404dd6bb382c561bba71fb1"


def vector_reading() -> Reading:
    parsed = parse_reading(PAYLOAD)
    assert isinstance(parsed, Reading), parsed
    return parsed


def test_vector_public_key() -> None:
    assert SigningKey(SEED).verify_key.encode().hex() == PUBLIC


def test_vector_canonical_bytes_and_signed_message() -> None:
    r = vector_reading()
    assert canonical_json(r.unsigned()) == CANONICAL_UNSIGNED
    assert r.signed_message() == b"cityledger/reading/v1\n" + CANONICAL_UNSIGNED


def test_vector_signature_verifies_and_is_what_we_produce() -> None:
    r = vector_reading()
    key = SigningKey(SEED)
    assert verify_reading(key.verify_key, r)
    ours = sign_reading(key, device=r.device, kind=r.kind, seq=r.seq, ts=r.ts, value=r.value)
    assert ours.sig == r.sig  # Ed25519 is deterministic


def test_vector_leaf_hash() -> None:
    r = vector_reading()
    assert merkle.leaf_hash(r.leaf_data()).hex() == LEAF_HASH
    assert hashlib.sha256(b"\x00" + r.leaf_data()).hexdigest() == LEAF_HASH


def test_python_json_matches_the_jcs_rule_the_protocol_states() -> None:
    obj = {"b": 1, "a": "é\n\"", "c": [2**70, -1]}
    expected = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(obj) == expected == '{"a":"é\\n\\"","b":1,"c":[1180591620717411303424,-1]}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


RFC8032 = load_json("ed25519/rfc8032_section7.1_ed25519.json")["vectors"]


@pytest.mark.parametrize("case", RFC8032, ids=[c["name"] for c in RFC8032])
def test_pynacl_agrees_with_rfc8032(case: dict) -> None:
    key = SigningKey(bytes.fromhex(case["secret_key"]))
    assert key.verify_key.encode().hex() == case["public_key"]
    assert key.sign(bytes.fromhex(case["message"])).signature.hex() == case["signature"]


def _mutate(**changes: object) -> bytes:
    obj = json.loads(PAYLOAD)
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize("payload, why", [
    (b"", "empty"),
    (b"\xff\xfe{}", "non-UTF-8"),
    (b"[" * 512 + b"]" * 512, "deeply nested"),
    (b"{\"a\":" * 170 + b"1" + b"}" * 170, "deeply nested objects"),
    (PAYLOAD[:-1] + b',"v":1}', "duplicate key"),
    (_mutate(v=True), "true for v"),
    (_mutate(seq=7.0), "float seq"),
    (PAYLOAD.replace(b"123456", b"NaN"), "NaN value"),
    (PAYLOAD.replace(b"123456", b"Infinity"), "Infinity value"),
    (_mutate(value=2**63), "value out of range"),
    (_mutate(value="9" * 400), "huge integer as a string"),
    (PAYLOAD.replace(b"123456", b"9" * 800), "huge integer"),
    (_mutate(seq=0), "seq 0"),
    (_mutate(seq="7"), "string seq"),
    (_mutate(kind="steam"), "unknown kind"),
    (_mutate(device="a/b"), "slash in device"),
    (_mutate(extra=1), "extra member"),
    (_mutate(sig="jY1A"), "short signature"),
    (_mutate(sig=json.loads(PAYLOAD)["sig"].rstrip("=")), "unpadded signature"),
    (_mutate(kind="parking", value=2), "parking value 2"),
])
def test_malformed_payloads(payload: bytes, why: str) -> None:
    out = parse_reading(payload)
    assert isinstance(out, Rejected) and out.reason is Reason.MALFORMED, why


def test_too_large_is_checked_first() -> None:
    out = parse_reading(b"{" + b" " * 1024 + b"}")
    assert isinstance(out, Rejected) and out.reason is Reason.TOO_LARGE


def test_any_json_spelling_parses_to_the_same_reading() -> None:
    spaced = json.dumps(json.loads(PAYLOAD), indent=2).encode()
    assert parse_reading(spaced) == vector_reading()


def test_topics_round_trip_and_refuse_escapes() -> None:
    t = device_topic("d01", "water", "wm-d01-000042", "reading")
    assert t == "city/d01/water/wm-d01-000042/reading"
    parsed = parse_topic(t)
    assert parsed is not None and str(parsed) == t
    for bad in ("city/d01/water/+/reading", "city/D01/water/x/reading", "city/d01/steam/x/reading",
                "city/d01/water/x/reading/more", "town/d01/water/x/reading", "city/d01/water/x/secret"):
        assert parse_topic(bad) is None, bad
    with pytest.raises(ValueError):
        device_topic("d01", "water", "x/#", "reading")


def test_ack_payload_round_trip() -> None:
    assert ack_payload(5, "ab") == b'{"block":"ab","seq":5}'
    assert parse_ack(ack_payload(5, "ab")) == (5, "ab")
    for bad in (b"", b"[]", b'{"seq":"5","block":"x"}', b'{"seq":true,"block":"x"}', b"\xff"):
        assert parse_ack(bad) is None
