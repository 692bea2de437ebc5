"""Receipts version 2, C2SP tlog-proofs (ledger/chain/tlogproof.py).

The PROTOCOL.md 7.1 receipt is built byte for byte and verifies; a larger proof with
cosignatures is generated here; each step fails for its own reason; and no single-byte
change of either proof is accepted, or crashes the verifier.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.notes import (
    ALG_COSIGNATURE,
    Checkpoint,
    Note,
    Signature,
    Verifier,
    checkpoint_text,
    cosign,
    make_verifier,
    parse_note,
    parse_vkey,
    sign_note,
    signed_checkpoint,
    verifier_key,
)
from ledger.chain.policy import Policy, parse_policy
from ledger.chain.protocol import canonical_json, sign_reading
from ledger.chain.receipts import Check
from ledger.chain.tlogproof import (
    STEPS,
    ProofFormatError,
    TlogProof,
    build_tlog_proof,
    encode_tlog_proof,
    parse_tlog_proof,
    tlog_proof_ok,
    verify_tlog_proof,
)
from tests.vectors import vectors_dir

# ---------------------------------------------------------------- PROTOCOL.md 6 and 7.1

DEVICE_KEY = "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"
DEVICE_SIGNING = SigningKey(bytes.fromhex("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"))
LEDGER_SIGNING = SigningKey(bytes.fromhex("2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40"))
ORIGIN = "cityledger.example/d01"
LEDGER_VKEY = "cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw"
LEDGER = parse_vkey(LEDGER_VKEY)
ENROLMENT = (
    b'{"at":1763999000000,"device":"wm-d01-000042","district":"d01","entry":"device_enrolled","kind":"water",'
    b'"public_key":"79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"}'
)
READING = (
    b'{"device":"wm-d01-000042","kind":"water","seq":7,'
    b'"sig":"jY1AvBdW2XvSEaGn0tH3///IfIwtzCBrmeNsa5FRWRli+GCcn6rQAoSbGAZv39psWGTLg9MeOcYqUfJS3vFXDw==",'
    b'"ts":1764000000000,"v":1,"value":123456}'
)
SIGNED_CHECKPOINT = (
    "cityledger.example/d01\n"
    "2\n"
    "7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n"
    "\n"
    "\u2014 cityledger.example/d01 "
    "879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk=\n"
)
RECEIPT = (
    "c2sp.org/tlog-proof@v1\n"
    "extra eyJkZXZpY2UiOiJ3bS1kMDEtMDAwMDQyIiwia2luZCI6IndhdGVyIiwic2VxIjo3LCJzaWciOiJqWTFBdkJkVzJYdlNFYUduMHRIMy8vL0lm"
    "SXd0ekNCcm1lTnNhNUZSV1JsaStHQ2NuNnJRQW9TYkdBWnYzOXBzV0dUTGc5TWVPY1lxVWZKUzN2RlhEdz09IiwidHMiOjE3NjQwMDAwMDAwMDAs"
    "InYiOjEsInZhbHVlIjoxMjM0NTZ9\n"
    "index 1\n"
    "lIKtgk+BuXC+o6dpXyYSffP6B92MUwYBn9ZoHM8+7po=\n"
    "\n" + SIGNED_CHECKPOINT
).encode()


def verify(data: bytes, *, keys: list[Verifier] | None = None, policy: Policy | None = None) -> list[Check]:
    return verify_tlog_proof(data, device_key=DEVICE_KEY, ledger_keys=keys or [LEDGER], policy=policy)


def failed(checks: list[Check]) -> str | None:
    """The step that failed, or None when the proof is good."""
    if tlog_proof_ok(checks):
        return None
    assert checks and not checks[-1].ok and all(c.ok for c in checks[:-1])
    return checks[-1].name


def test_vector_parts() -> None:
    assert merkle.leaf_hash(ENROLMENT).hex() == "9482ad824f81b970bea3a7695f26127df3fa07dd8c5306019fd6681ccf3eee9a"
    assert merkle.leaf_hash(READING).hex() == "f8a11e59b8fffca00e4b627ead16f8b02f36a359e404dd6bb382c561bba71fb1"
    root = merkle.root([merkle.leaf_hash(ENROLMENT), merkle.leaf_hash(READING)])
    assert root.hex() == "ec142232338418f934c4277d94f8042eb2bd8e6d4a4f8bd766e80b510488fcac"
    assert signed_checkpoint(Checkpoint(ORIGIN, 2, root), [LEDGER_SIGNING]).encode() == SIGNED_CHECKPOINT.encode()


def test_vector_receipt_built_byte_for_byte() -> None:
    path = merkle.inclusion_proof([merkle.leaf_hash(ENROLMENT), merkle.leaf_hash(READING)], 1)
    assert build_tlog_proof(READING, 1, path, parse_note(SIGNED_CHECKPOINT)) == RECEIPT


def test_vector_receipt_verifies() -> None:
    checks = verify_tlog_proof(RECEIPT, device_key=DEVICE_KEY, ledger_keys=[parse_vkey(LEDGER_VKEY)], policy=None)
    assert [c.name for c in checks] == list(STEPS)
    assert tlog_proof_ok(checks), checks
    assert "f8a11e59b8fffca00e4b627ead16f8b02f36a359e404dd6bb382c561bba71fb1" in checks[2].detail
    assert "no witness policy" in checks[-1].detail
    assert "quorum none" in verify(RECEIPT, policy=parse_policy("quorum none\n"))[-1].detail


def test_vector_matches_protocol_md() -> None:
    """The constants above are PROTOCOL.md's, transcribed: hold them equal to the document."""
    protocol = vectors_dir().parent / "PROTOCOL.md"
    if not protocol.is_file():
        pytest.skip(f"{protocol} is not there")
    text = Path(protocol).read_text(encoding="utf-8")
    section = text[text.index("### 7.1 Test vector") :]
    blocks = re.findall(r"(?:^    .*\n|^\n)+", section, flags=re.MULTILINE)
    indented = ["\n".join(line[4:] for line in b.strip("\n").split("\n")) + "\n" for b in blocks if b.strip()]
    assert SIGNED_CHECKPOINT in indented
    assert RECEIPT.decode() in indented
    assert ENROLMENT.decode() + "\n" in indented
    assert LEDGER_VKEY in section


def test_parse_and_encode_round_trip() -> None:
    proof = parse_tlog_proof(RECEIPT)
    assert proof.extra == READING and proof.index == 1 and len(proof.hashes) == 1
    assert proof.checkpoint_body() == Checkpoint(
        ORIGIN, 2, bytes.fromhex("ec142232338418f934c4277d94f8042eb2bd8e6d4a4f8bd766e80b510488fcac")
    )
    assert encode_tlog_proof(proof) == RECEIPT
    assert parse_tlog_proof(RECEIPT.decode()) == proof


# ---------------------------------------------------------------- a larger log, with witnesses

WITNESS_KEYS = [SigningKey(bytes([0x70 + i]) * 32) for i in range(3)]
WITNESSES = [
    make_verifier(f"w{i}.example/witness", k.verify_key.encode(), ALG_COSIGNATURE) for i, k in enumerate(WITNESS_KEYS)
]
POLICY = parse_policy(
    f"log {LEDGER_VKEY}\n"
    + "".join(f"witness W{i} {w.vkey()}\n" for i, w in enumerate(WITNESSES))
    + "group two 2 W0 W1 W2\nquorum two\n"
)


def _log(n: int) -> list[bytes]:
    """n log entries: the enrolment, then readings of the section 6 device."""
    entries = [ENROLMENT]
    for seq in range(1, n):
        r = sign_reading(
            DEVICE_SIGNING, device="wm-d01-000042", kind="water", seq=seq, ts=1_764_000_000_000 + seq, value=seq
        )
        entries.append(r.leaf_data())
    return entries


def _proof(n: int, index: int, *, witnesses: tuple[int, ...] = (0, 2), keys: tuple[SigningKey, ...] = ()) -> bytes:
    entries = _log(n)
    hashes = merkle.leaf_hashes(entries)
    cp = Checkpoint(ORIGIN, n, merkle.root(hashes))
    note = signed_checkpoint(cp, keys or (LEDGER_SIGNING,))
    note = note.with_signatures(
        *(cosign(note.text, WITNESSES[i].name, WITNESS_KEYS[i], 1_764_000_000 + i) for i in witnesses)
    )
    return build_tlog_proof(entries[index], index, merkle.inclusion_proof(hashes, index), note)


LARGE = _proof(13, 6)


def test_large_proof_verifies_under_the_policy() -> None:
    checks = verify(LARGE, policy=POLICY)
    assert tlog_proof_ok(checks), checks
    assert checks[-1].detail == "cosigned by W0, W2: the quorum 2 of W0, W1, W2 is met"
    assert tlog_proof_ok(verify(LARGE, keys=POLICY.log_keys(), policy=POLICY))
    assert len(parse_tlog_proof(LARGE).hashes) == 4


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_entry_of_any_small_log_has_a_valid_proof(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 20))
    index = data.draw(st.integers(1, n - 1))  # entry 0 is the enrolment, not a reading
    proof = _proof(n, index, witnesses=(1, 2))
    assert tlog_proof_ok(verify(proof, policy=POLICY))
    assert encode_tlog_proof(parse_tlog_proof(proof)) == proof


# ---------------------------------------------------------------- every single-byte change


def _flips(data: bytes) -> list[bytes]:
    out = []
    for i in range(len(data)):
        for mask in (0x01, 0x20, 0x80, 0xFF):
            out.append(data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :])
    return out


@pytest.mark.parametrize("name", ["vector", "large"])
def test_every_single_byte_change_is_refused(name: str) -> None:
    original, policy = (RECEIPT, None) if name == "vector" else (LARGE, POLICY)
    assert tlog_proof_ok(verify(original, policy=policy))
    steps: set[str] = set()
    for changed in _flips(original):
        try:
            parse_tlog_proof(changed)
        except ProofFormatError:
            pass  # the one exception type parsing raises
        checks = verify(changed, policy=policy)
        step = failed(checks)
        assert step is not None, changed
        steps.add(step)
    # The changes are caught at every step but the leaf hash, which cannot fail on its own.
    assert steps == set(STEPS) - {"leaf_hash"} - ({"cosignatures"} if policy is None else set())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    checks = verify(data)
    assert failed(checks) == "format"
    with pytest.raises(ProofFormatError):
        parse_tlog_proof(data)


@settings(max_examples=300, deadline=None)
@given(at=st.integers(0, len(RECEIPT)), junk=st.binary(min_size=1, max_size=8))
def test_insertions_and_truncations_are_refused(at: int, junk: bytes) -> None:
    assert failed(verify(RECEIPT[:at] + junk + RECEIPT[at:])) is not None
    if at < len(RECEIPT):
        assert failed(verify(RECEIPT[:at])) == "format"


# ---------------------------------------------------------------- each step fails for its reason


def _with(
    *, extra: bytes = READING, index: int = 1, hashes: tuple[bytes, ...] | None = None, note: Note | None = None
) -> bytes:
    proof = parse_tlog_proof(RECEIPT)
    return encode_tlog_proof(
        TlogProof(extra, index, proof.hashes if hashes is None else hashes, note or proof.checkpoint)
    )


def test_device_signature_step() -> None:
    other = SigningKey(b"\x33" * 32).verify_key.encode().hex()
    checks = verify_tlog_proof(RECEIPT, device_key=other, ledger_keys=[LEDGER], policy=None)
    assert failed(checks) == "device_signature" and "does not verify" in checks[-1].detail
    checks = verify_tlog_proof(RECEIPT, device_key=DEVICE_KEY.upper(), ledger_keys=[LEDGER], policy=None)
    assert failed(checks) == "device_signature" and "64 lowercase hex" in checks[-1].detail
    checks = verify(_with(extra=b""))
    assert failed(checks) == "device_signature" and "no extra line" in checks[-1].detail
    checks = verify(_with(extra=ENROLMENT))
    assert failed(checks) == "device_signature" and "not a reading" in checks[-1].detail
    # The same reading, validly signed, but not in canonical form: its leaf hash would differ.
    spaced = READING.replace(b",", b", ")
    checks = verify(_with(extra=spaced))
    assert failed(checks) == "device_signature" and "canonical" in checks[-1].detail
    reordered = b'{"value":123456,' + READING[1:-1].replace(b',"value":123456', b"") + b"}"
    assert canonical_json(json.loads(reordered)) == READING
    checks = verify(_with(extra=reordered))
    assert failed(checks) == "device_signature" and "canonical" in checks[-1].detail
    changed = READING.replace(b'"value":123456', b'"value":123457')
    assert failed(verify(_with(extra=changed))) == "device_signature"


def test_inclusion_step() -> None:
    checks = verify(_with(index=0))
    assert failed(checks) == "inclusion" and "not the checkpoint's root" in checks[-1].detail
    checks = verify(_with(index=2))
    assert failed(checks) == "inclusion" and "does not fit" in checks[-1].detail
    checks = verify(_with(hashes=()))
    assert failed(checks) == "inclusion" and "too short" in checks[-1].detail
    checks = verify(_with(hashes=(merkle.leaf_hash(ENROLMENT),) * 2))
    assert failed(checks) == "inclusion" and "too long" in checks[-1].detail
    checks = verify(_with(hashes=(bytes(32),)))
    assert failed(checks) == "inclusion"


def test_log_signature_step() -> None:
    other = make_verifier(ORIGIN, SigningKey(b"\x44" * 32).verify_key.encode())
    checks = verify(RECEIPT, keys=[other])
    assert failed(checks) == "log_signature" and "no signature by a ledger key you trust" in checks[-1].detail
    elsewhere = make_verifier("cityledger.example/city", LEDGER_SIGNING.verify_key.encode())
    checks = verify(RECEIPT, keys=[elsewhere])
    assert failed(checks) == "log_signature" and "no ledger key" in checks[-1].detail
    witness_type = make_verifier(ORIGIN, LEDGER_SIGNING.verify_key.encode(), ALG_COSIGNATURE)
    assert failed(verify(RECEIPT, keys=[witness_type])) == "log_signature"
    note = parse_note(SIGNED_CHECKPOINT)
    (sig,) = note.signatures
    forged = Signature(sig.name, sig.key_id, SigningKey(b"\x44" * 32).sign(note.text.encode()).signature)
    checks = verify(_with(note=Note(note.text, (forged,))))
    assert failed(checks) == "log_signature" and "does not verify" in checks[-1].detail


def test_log_signature_during_a_key_rotation() -> None:
    new = SigningKey(b"\x55" * 32)
    new_v = make_verifier(ORIGIN, new.verify_key.encode())
    rotating = _proof(5, 3, keys=(LEDGER_SIGNING, new))
    for keys in ([LEDGER], [new_v], [LEDGER, new_v], [new_v, LEDGER]):
        assert tlog_proof_ok(verify(rotating, keys=keys, policy=POLICY)), keys
    after = _proof(5, 3, keys=(new,))
    assert failed(verify(after, keys=[LEDGER], policy=POLICY)) == "log_signature"
    assert tlog_proof_ok(verify(after, keys=[new_v], policy=POLICY))
    # A trusted key's line that does not verify refuses the proof, even beside a good one.
    proof = parse_tlog_proof(rotating)
    old_sig, new_sig, *cosigs = proof.checkpoint.signatures
    broken = Signature(new_sig.name, new_sig.key_id, bytes(64))
    bad = encode_tlog_proof(
        TlogProof(proof.extra, proof.index, proof.hashes, Note(proof.checkpoint.text, (old_sig, broken, *cosigs)))
    )
    assert tlog_proof_ok(verify(bad, keys=[LEDGER], policy=POLICY))  # the broken line is not of a key we trust
    checks = verify(bad, keys=[LEDGER, new_v], policy=POLICY)
    assert failed(checks) == "log_signature" and "does not verify" in checks[-1].detail


def test_cosignatures_step() -> None:
    checks = verify(_proof(4, 2, witnesses=(1,)), policy=POLICY)
    assert failed(checks) == "cosignatures"
    assert checks[-1].detail == "cosigned by W1; the policy requires 2 of W0, W1, W2"
    checks = verify(_proof(4, 2, witnesses=()), policy=POLICY)
    assert failed(checks) == "cosignatures" and "no witness of the policy" in checks[-1].detail
    assert tlog_proof_ok(verify(_proof(4, 2, witnesses=(0, 1, 2)), policy=POLICY))
    # A witness the policy does not know is ignored, whatever its line holds.
    stranger = SigningKey(b"\x66" * 32)
    proof = parse_tlog_proof(_proof(4, 2, witnesses=(0, 1)))
    extra_line = cosign(proof.checkpoint.text, "stranger.example", stranger, 1)
    garbage = Signature("stranger.example", b"\x00\x01\x02\x03", b"\x00" * 72)
    for line in (extra_line, garbage):
        note = proof.checkpoint.with_signatures(line)
        assert tlog_proof_ok(verify(encode_tlog_proof(_replace_note(proof, note)), policy=POLICY))
    # A known witness's cosignature that does not verify refuses the proof, though the quorum is met.
    w2 = Signature(WITNESSES[2].name, WITNESSES[2].key_id, (5).to_bytes(8, "big") + bytes(64))
    note = proof.checkpoint.with_signatures(w2)
    checks = verify(encode_tlog_proof(_replace_note(proof, note)), policy=POLICY)
    assert failed(checks) == "cosignatures" and "W2 does not verify" in checks[-1].detail
    # A cosignature moved from another checkpoint of the same log does not count.
    other = parse_tlog_proof(_proof(5, 2, witnesses=(2,))).checkpoint.signatures[-1]
    note = proof.checkpoint.with_signatures(other)
    assert failed(verify(encode_tlog_proof(_replace_note(proof, note)), policy=POLICY)) == "cosignatures"


def _replace_note(proof: TlogProof, note: Note) -> TlogProof:
    return TlogProof(proof.extra, proof.index, proof.hashes, note)


# ---------------------------------------------------------------- the format


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "ends before the header"),
        (RECEIPT.replace(b"c2sp.org/tlog-proof@v1", b"c2sp.org/tlog-proof@v2"), "first line"),
        (b"\n" + RECEIPT, "first line"),
        (RECEIPT.replace(b"extra ", b"extra  "), "base64"),
        (RECEIPT.replace(b"extra ", b"Extra "), "expected the line index"),
        (RECEIPT.replace(b"extra eyJ", b"extra\teyJ"), "expected the line index"),
        (RECEIPT.replace(b"NTZ9\n", b"NTZ9=\n"), "base64"),
        (RECEIPT.replace(b"index 1\n", b"index 01\n"), "leading zeros"),
        (RECEIPT.replace(b"index 1\n", b"index -1\n"), "decimal"),
        (RECEIPT.replace(b"index 1\n", b"index  1\n"), "decimal"),
        (RECEIPT.replace(b"index 1\n", b"index 9223372036854775808\n"), "larger"),
        (RECEIPT.replace(b"index 1\n", b""), "expected the line index"),
        (RECEIPT.replace(b"index 1\n", b"index 1\nindex 1\n"), "base64"),
        (RECEIPT.replace(b"7po=\n", b"7po\n"), "base64"),
        (RECEIPT.replace(b"7po=\n", b"7pp=\n"), "canonical"),
        (RECEIPT.replace(b"7po=\n", b"7po=\nAAAA\n"), "32 bytes"),
        (RECEIPT.replace(b"7po=\n\n", b"7po=\n"), "hash 2 is not"),
        (RECEIPT.replace(b"\n", b"\r\n"), "first line"),
        (RECEIPT.replace(b"7po=\n\n", b"7po=\r\n\n"), "base64"),
        (RECEIPT.replace(b"=\n\n\xe2\x80\x94", b"=\nextension\n\n\xe2\x80\x94"), "no extension lines"),
        (RECEIPT + b"\n", "the checkpoint note"),
        (RECEIPT[:-1], "the checkpoint note"),
        (RECEIPT.replace(b"\nlIKt", b"\n\xe9IKt"), "non-ASCII"),
        (re.sub(rb"extra [^\n]*\n", b"extra \n", RECEIPT), "no data"),
    ],
)
def test_malformed_proof_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProofFormatError, match=why):
        parse_tlog_proof(data)
    checks = verify(data)
    assert failed(checks) == "format" and checks[0].detail.startswith("malformed tlog-proof")


def test_proof_without_extra_is_well_formed_but_proves_no_reading() -> None:
    no_extra = _with(extra=b"")
    assert b"extra" not in no_extra
    proof = parse_tlog_proof(no_extra)
    assert proof.extra == b"" and encode_tlog_proof(proof) == no_extra


def test_tlog_proof_refuses_bad_parts() -> None:
    note = parse_note(SIGNED_CHECKPOINT)
    bads: list[Callable[[], object]] = [
        lambda: TlogProof(READING, -1, (), note),
        lambda: TlogProof(READING, 2**63, (), note),
        lambda: TlogProof(READING, 0, (b"\x00" * 31,), note),
        lambda: TlogProof(READING, 0, (b"\x00" * 32,) * 64, note),
        lambda: TlogProof(READING, 0, (), Note(note.text)),
        lambda: TlogProof(
            READING, 0, (), Note(checkpoint_text(Checkpoint(ORIGIN, 2, bytes(32))) + "ext\n", note.signatures)
        ),
        lambda: TlogProof(b"x" * (64 * 1024 + 1), 0, (), note),
    ]
    for bad in bads:
        with pytest.raises(ProofFormatError):
            bad()
    with pytest.raises(ProofFormatError):
        parse_tlog_proof("c2sp.org/tlog-proof@v1\nindex 0\n\n\ud800")
    assert verifier_key(ORIGIN, LEDGER_SIGNING.verify_key.encode()) == LEDGER_VKEY


def test_receipt_decodes_to_the_reading() -> None:
    line = RECEIPT.split(b"\n")[1]
    assert base64.b64decode(line[len(b"extra ") :]) == READING
    assert (
        sign_note(checkpoint_text(parse_tlog_proof(RECEIPT).checkpoint_body()), ORIGIN, LEDGER_SIGNING)
        == (parse_note(SIGNED_CHECKPOINT).signatures[0])
    )
