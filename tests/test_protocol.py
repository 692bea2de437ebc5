"""PROTOCOL.md section 6 test vector and the parsing rules of ledger/chain/protocol.py."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from pydantic import ValidationError

from ledger.chain import merkle
from ledger.chain.protocol import (
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
    valid_device_id,
    valid_district,
    verify_reading,
)
from tests.vectors import load_json

SEED = bytes.fromhex("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
PUBLIC = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
PAYLOAD = (
    b'{"v":1,"device":"wm-d01-000042","kind":"water","seq":7,"ts":1764000000000,"value":123456,'
    b'"sig":"jY1AvBdW2XvSEaGn0tH3///IfIwtzCBrmeNsa5FRWRli+GCcn6rQAoSbGAZv39psWGTLg9MeOcYqUfJS3vFXDw=="}'
)
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
    obj = {"b": 1, "a": 'é\n"', "c": [2**70, -1]}
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


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "empty"),
        (b"\xff\xfe{}", "non-UTF-8"),
        (b"[" * 512 + b"]" * 512, "deeply nested"),
        (b'{"a":' * 170 + b"1" + b"}" * 170, "deeply nested objects"),
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
    ],
)
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
    for bad in (
        "city/d01/water/+/reading",
        "city/D01/water/x/reading",
        "city/d01/steam/x/reading",
        "city/d01/water/x/reading/more",
        "town/d01/water/x/reading",
        "city/d01/water/x/secret",
    ):
        assert parse_topic(bad) is None, bad
    with pytest.raises(ValueError):
        device_topic("d01", "water", "x/#", "reading")


def test_ack_payload_round_trip() -> None:
    assert ack_payload(5, "ab") == b'{"block":"ab","seq":5}'
    assert parse_ack(ack_payload(5, "ab")) == (5, "ab")
    for bad in (b"", b"[]", b'{"seq":"5","block":"x"}', b'{"seq":true,"block":"x"}', b"\xff"):
        assert parse_ack(bad) is None


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(0, 2**64), block=st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_the_spelled_out_ack_is_canonical_json(seq: int, block: str) -> None:
    assert ack_payload(seq, block) == canonical_json({"seq": seq, "block": block})


@settings(max_examples=300, deadline=None)
@given(
    device=st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z"),
    kind=st.sampled_from(["water", "gas", "electricity", "parking"]),
    seq=st.integers(1, 2**63 - 1),
    ts=st.integers(0, 2**63 - 1),
    value=st.integers(0, 2**63 - 1),
    sig=st.binary(min_size=64, max_size=64),
)
def test_the_spelled_out_leaf_and_signed_message_are_canonical_json(
    device: str, kind: str, seq: int, ts: int, value: int, sig: bytes
) -> None:
    """Reading.leaf_data and signed_message skip json.dumps for speed; they must not differ from it."""
    value = value % 2 if kind == "parking" else value
    r = Reading(v=1, device=device, kind=kind, seq=seq, ts=ts, value=value, sig=base64.b64encode(sig).decode())
    assert r.leaf_data() == canonical_json(r.as_dict())
    assert r.signed_message() == b"cityledger/reading/v1\n" + canonical_json(r.unsigned())
    assert r.sig_bytes() == sig


def test_a_trusted_rebuild_is_the_same_reading_as_a_validated_one() -> None:
    r = vector_reading()
    t = Reading.trusted(device=r.device, kind=r.kind, seq=r.seq, ts=r.ts, value=r.value, sig=r.sig)
    assert t.model_dump() == r.model_dump() and t.leaf_data() == r.leaf_data()
    assert t.sig_bytes() == r.sig_bytes() and t == r
    assert verify_reading(SigningKey(SEED).verify_key, t)
    with pytest.raises(ValidationError):
        t.seq = 8  # still frozen


def test_a_copy_with_other_members_does_not_keep_the_originals_bytes() -> None:
    """A reading read off the wire keeps its payload as its leaf; a changed copy must not."""
    r = vector_reading()
    parsed = parse_reading(r.payload())
    assert isinstance(parsed, Reading) and parsed.leaf_data() == r.leaf_data()
    other_sig = base64.b64encode(bytes(64)).decode()
    changed = parsed.model_copy(update={"value": r.value + 1, "sig": other_sig})
    assert changed.leaf_data() == canonical_json(changed.as_dict()) != r.leaf_data()
    assert changed.sig_bytes() == bytes(64)


def _mutations(payload: bytes) -> st.SearchStrategy[bytes]:
    """The canonical payload with a byte changed, inserted or removed somewhere."""
    at = st.integers(0, len(payload) - 1)
    byte = st.integers(0, 255).map(lambda b: bytes([b]))
    return st.one_of(
        st.tuples(at, byte).map(lambda a: payload[: a[0]] + a[1] + payload[a[0] + 1 :]),
        st.tuples(at, byte).map(lambda a: payload[: a[0]] + a[1] + payload[a[0] :]),
        at.map(lambda i: payload[:i] + payload[i + 1 :]),
        st.sampled_from(
            [
                payload.replace(b'"seq":', b'"seq":0'),
                payload.replace(b'"ts":', b'"ts":9' * 19),
                payload.replace(b'"value":', b'"value":2'),
                payload[:-1] + b" }",
                b" " + payload,
            ]
        ),
    )


@settings(max_examples=600, deadline=None)
@given(
    data=st.data(),
    kind=st.sampled_from(["water", "gas", "electricity", "parking"]),
    seq=st.integers(1, 2**63 - 1),
    ts=st.integers(0, 2**63 - 1),
    value=st.integers(0, 2**63 - 1),
)
def test_the_canonical_fast_path_reads_exactly_what_the_full_parser_reads(
    data: st.DataObject, kind: str, seq: int, ts: int, value: int
) -> None:
    from ledger.chain.protocol import _parse_reading_fully

    value = value % 2 if kind == "parking" else value
    payload = sign_reading(SigningKey(SEED), device="wm-d01-000042", kind=kind, seq=seq, ts=ts, value=value).payload()
    for candidate in (payload, data.draw(_mutations(payload))):
        fast, full = parse_reading(candidate), _parse_reading_fully(candidate)
        if isinstance(full, Reading):
            assert isinstance(fast, Reading) and fast.model_dump() == full.model_dump() and fast == full
            assert fast.sig_bytes() == full.sig_bytes() and fast.leaf_data() == full.leaf_data()
            # Only a payload in canonical form stands for the leaf.
            assert (fast.leaf_data() is candidate) == (candidate == canonical_json(full.as_dict()))
        else:
            assert fast == full


def test_an_id_with_a_trailing_newline_is_not_an_id() -> None:
    # `$` in a pattern matches before a final newline; ids, districts and topics must not.
    assert not valid_device_id("wm1\n") and not valid_district("d01\n")
    assert parse_topic("city/d01/water/wm1\n/reading") is None
