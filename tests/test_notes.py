"""C2SP signed notes, vkeys, checkpoints and cosignatures (ledger/chain/notes.py).

The PROTOCOL.md 7.1 vector and the examples of the C2SP specifications pin the bytes; the
rest shows that every malformed input is refused with NoteError, never read some other way.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain.notes import (
    ALG_COSIGNATURE,
    ALG_ED25519,
    MAX_SIGNATURES,
    Checkpoint,
    Note,
    NoteError,
    Signature,
    Verifier,
    checkpoint_text,
    cosign,
    cosignature_message,
    key_id,
    make_verifier,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    sign_note,
    signed_checkpoint,
    verifier_key,
    verify_cosignature,
    verify_note_signature,
)
from ledger.errors import Refused

# ---------------------------------------------------------------- PROTOCOL.md 7.1

LEDGER_SEED = bytes.fromhex("2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40")
LEDGER_PUBLIC = "e7f162a10bec559afea195e4dce84b69568d5d2cb0963eb446c0685e2b17f2f0"
ORIGIN = "cityledger.example/d01"
VKEY = "cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw"
ROOT = bytes.fromhex("ec142232338418f934c4277d94f8042eb2bd8e6d4a4f8bd766e80b510488fcac")
SIGNED_CHECKPOINT = (
    "cityledger.example/d01\n"
    "2\n"
    "7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n"
    "\n"
    "\u2014 cityledger.example/d01 "
    "879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk=\n"
).encode()

LEDGER_KEY = SigningKey(LEDGER_SEED)
WITNESS_KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))
CP = Checkpoint(ORIGIN, 2, ROOT)


def test_vector_ledger_key_and_vkey() -> None:
    assert LEDGER_KEY.verify_key.encode().hex() == LEDGER_PUBLIC
    assert verifier_key(ORIGIN, LEDGER_KEY.verify_key.encode()) == VKEY
    assert key_id(ORIGIN, ALG_ED25519, bytes.fromhex(LEDGER_PUBLIC)).hex() == "f3bf6b8e"
    v = parse_vkey(VKEY)
    assert (v.name, v.key_id.hex(), v.alg, v.public_key.hex()) == (ORIGIN, "f3bf6b8e", ALG_ED25519, LEDGER_PUBLIC)
    assert v.vkey() == VKEY == str(v)


def test_vector_signed_checkpoint_byte_for_byte() -> None:
    note = signed_checkpoint(CP, [LEDGER_KEY])
    assert note.encode() == SIGNED_CHECKPOINT
    assert checkpoint_text(CP) == "cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n"


def test_vector_signed_checkpoint_parses_and_verifies() -> None:
    note = parse_note(SIGNED_CHECKPOINT)
    assert note == parse_note(SIGNED_CHECKPOINT.decode())
    assert parse_checkpoint(note.text) == CP
    (sig,) = note.signatures
    assert (sig.name, sig.key_id.hex(), len(sig.signature)) == (ORIGIN, "f3bf6b8e", 64)
    assert verify_note_signature(note, parse_vkey(VKEY))
    assert note.encode() == SIGNED_CHECKPOINT


def test_every_proper_prefix_of_the_vector_is_refused() -> None:
    for n in range(len(SIGNED_CHECKPOINT)):
        with pytest.raises(NoteError):
            parse_note(SIGNED_CHECKPOINT[:n])


# ---------------------------------------------------------------- the specifications' own examples


def test_signed_note_spec_example_verifies() -> None:
    vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    note = parse_note(
        "This is an example message.\n\n\u2014 example.com/foo "
        "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    )
    assert verify_note_signature(note, parse_vkey(vkey))
    assert not verify_note_signature(note, parse_vkey(VKEY))


def test_signed_note_spec_poem_keeps_its_blank_lines_in_the_text() -> None:
    poem = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito sera.\n"
    data = (
        poem + "\n\u2014 quasimodo.example/salvatore "
        "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
    )
    note = parse_note(data.encode())
    assert note.text == poem
    assert [s.name for s in note.signatures] == ["quasimodo.example/salvatore"]
    assert note.encode() == data.encode()


def test_tlog_checkpoint_spec_example() -> None:
    cp = parse_checkpoint("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n")
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert base64.b64encode(cp.root) == b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="


def test_tlog_cosignature_spec_example_timestamp_encoding() -> None:
    # The spec's example cosignature was made at the time its example message shows (1679315147):
    # the 8 bytes after the key id are that timestamp, big-endian.
    note = parse_note(
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1g"
        "GzGku9nTo+zyWE+xeMcTOAYQ8=\n"
        "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZq"
        "hf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
    )
    log, witness = note.signatures
    assert len(log.signature) == 64 and len(witness.signature) == 72
    assert int.from_bytes(witness.signature[:8], "big") == 1679315147


def test_cosignature_message_is_the_spec_example() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    assert cosignature_message(text, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n"
        b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )


# ---------------------------------------------------------------- round trips


def test_note_round_trip_with_several_signatures_and_blank_lines() -> None:
    text = "first\n\nthird \u00e9\u2014 not a signature\n\n"
    note = Note(text, (sign_note(text, "a.example/x", LEDGER_KEY), sign_note(text, "b.example/y", OTHER_KEY)))
    data = note.encode()
    assert data.endswith(b"\n") and data.count("\u2014 ".encode()) == 3
    again = parse_note(data)
    assert again == note and again.text == text
    assert verify_note_signature(again, make_verifier("a.example/x", LEDGER_KEY.verify_key.encode()))
    assert verify_note_signature(again, make_verifier("b.example/y", OTHER_KEY.verify_key.encode()))


_NAME = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="+"),
    min_size=1,
    max_size=20,
).filter(lambda s: not any(c.isspace() for c in s))
_TEXT = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30), min_size=1, max_size=5
).map(lambda lines: "".join(line + "\n" for line in lines))


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, name=_NAME, seed=st.binary(min_size=32, max_size=32))
def test_any_note_round_trips_and_verifies(text: str, name: str, seed: bytes) -> None:
    key = SigningKey(seed)
    note = Note(text, (sign_note(text, name, key),))
    again = parse_note(note.encode())
    assert again == note
    v = parse_vkey(verifier_key(name, key.verify_key.encode()))
    assert verify_note_signature(again, v)


@settings(max_examples=150, deadline=None)
@given(
    origin=_NAME,
    size=st.integers(min_value=0, max_value=2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_any_checkpoint_round_trips(origin: str, size: int, root: bytes) -> None:
    cp = Checkpoint(origin, size, root)
    assert parse_checkpoint(checkpoint_text(cp)) == cp


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_note_error(data: bytes) -> None:
    try:
        note = parse_note(data)
    except NoteError:
        return
    assert note.encode() == data  # one byte form per note


def test_vkey_round_trip_for_both_types() -> None:
    for alg in (ALG_ED25519, ALG_COSIGNATURE):
        vkey = verifier_key("w.example/1", WITNESS_KEY.verify_key.encode(), alg)
        v = parse_vkey(vkey)
        assert v.alg == alg and v.vkey() == vkey
        assert (
            v.key_id == hashlib.sha256(b"w.example/1\n" + bytes([alg]) + WITNESS_KEY.verify_key.encode()).digest()[:4]
        )
    # One key, two types: two different key ids (signed-note.md).
    assert (
        parse_vkey(verifier_key("n", b"\x07" * 32, 1)).key_id != parse_vkey(verifier_key("n", b"\x07" * 32, 4)).key_id
    )


# ---------------------------------------------------------------- malformed notes

SIG_B64 = "879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk="
BODY = "cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n"


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "blank line"),
        (BODY.encode(), "blank line"),
        ((BODY + "\n").encode(), "no signature lines"),
        ((BODY + "\n\u2014 " + ORIGIN + " " + SIG_B64).encode(), "does not end with a newline"),
        ((BODY + "\u2014 " + ORIGIN + " " + SIG_B64 + "\n").encode(), "blank line"),
        (SIGNED_CHECKPOINT.replace(b"\n", b"\r\n"), "control character"),
        (SIGNED_CHECKPOINT.replace(b"\n\n", b"\n\r\n"), "control character"),
        (SIGNED_CHECKPOINT.replace(b"2\n", b"2\t\n", 1), "control character"),
        (SIGNED_CHECKPOINT.replace(b"2\n", b"2\x00\n", 1), "control character"),
        (SIGNED_CHECKPOINT.replace(b"2\n", b"\xff\n", 1), "UTF-8"),
        (SIGNED_CHECKPOINT.replace(b"2\n", b"\xc0\xb2\n", 1), "UTF-8"),  # overlong '2'
        (SIGNED_CHECKPOINT.replace(b"2\n", b"\xed\xa0\x80\n", 1), "UTF-8"),  # a surrogate
        (SIGNED_CHECKPOINT.replace("\u2014".encode(), b"-"), "em dash"),
        (SIGNED_CHECKPOINT.replace("\u2014 ".encode(), "\u2014".encode()), "em dash"),
        (SIGNED_CHECKPOINT.replace("\u2014 ".encode(), "\u2014  ".encode()), "key name"),
        (SIGNED_CHECKPOINT.replace(b"d01 879", b"d01\xc2\xa0879"), "no space"),  # NBSP is not the separator
        (SIGNED_CHECKPOINT.replace(b"d01 879", b"d01  879"), "base64"),
        (SIGNED_CHECKPOINT.replace(b"d01 879", b"d01 879 "), "base64"),
        (SIGNED_CHECKPOINT.replace(b"example/d01 879", b"example/d0+1 879"), r"contains '\+'"),
        (SIGNED_CHECKPOINT.replace(b"example/d01 879", "example/d\u20001 879".encode()), "space"),
        (SIGNED_CHECKPOINT.replace(b"/Qk=\n", b"/Qk\n"), "base64"),  # padding missing
        (SIGNED_CHECKPOINT.replace(b"/Qk=\n", b"/Ql=\n"), "canonical"),  # non-zero padding bits
        (SIGNED_CHECKPOINT.replace(b"/Qk=\n", b"_Qk=\n"), "base64"),  # URL-safe alphabet
        (SIGNED_CHECKPOINT.replace(b"879rjnUr", b"879r jnUr"), "base64"),
        ((BODY + "\n\u2014 " + ORIGIN + " AAAAAA==\n").encode(), "at least one more byte"),
        ((BODY + "\n\u2014 " + ORIGIN + " \n").encode(), "at least one more byte"),
        ((BODY + "\n\u2014  " + SIG_B64 + "\n").encode(), "key name"),
        (SIGNED_CHECKPOINT + b"\n", "no signature lines"),
        (SIGNED_CHECKPOINT + b"trailing\n", "em dash"),
        (SIGNED_CHECKPOINT + SIGNED_CHECKPOINT.split(b"\n\n")[1], "two signatures"),
    ],
)
def test_malformed_note_refused(data: bytes, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        parse_note(data)


def test_note_error_is_refused_and_a_value_error() -> None:
    with pytest.raises(Refused):
        parse_note(b"nope")
    with pytest.raises(ValueError):
        parse_note(b"nope")


def test_signature_limit() -> None:
    keys = [SigningKey(bytes([i]) * 32) for i in range(1, MAX_SIGNATURES + 2)]
    sigs = [sign_note(BODY, f"k{i}", key) for i, key in enumerate(keys)]
    ok = Note(BODY, tuple(sigs[:MAX_SIGNATURES]))
    assert parse_note(ok.encode()) == ok
    too_many = ok.encode() + sigs[-1].line().encode()
    with pytest.raises(NoteError, match="more than"):
        parse_note(too_many)
    with pytest.raises(NoteError):
        Note(BODY, tuple(sigs))


def test_note_refuses_bad_text_when_built() -> None:
    for text in ("", "no newline", "a\r\n", "tab\there\n", "lone \ud800 surrogate\n"):
        with pytest.raises(NoteError):
            Note(text, ())
    with pytest.raises(NoteError, match="at least one signature"):
        Note(BODY).encode()
    with pytest.raises(NoteError):
        sign_note("no newline", ORIGIN, LEDGER_KEY)
    with pytest.raises(NoteError):
        parse_note("lone \ud800\n\n\u2014 a AAAAAAA=\n")


def test_signature_refuses_bad_parts() -> None:
    for name in ("", "a b", "a+b", "a\u00a0b", "a\nb", "a\x01b"):
        with pytest.raises(NoteError):
            Signature(name, b"\x00" * 4, b"x")
    with pytest.raises(NoteError):
        Signature("a", b"\x00" * 3, b"x")
    with pytest.raises(NoteError):
        Signature("a", b"\x00" * 4, b"")


# ---------------------------------------------------------------- vkeys


@pytest.mark.parametrize(
    "vkey, why",
    [
        ("cityledger.example/d01+f3bf6b8f+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "not its key's"),
        ("cityledger.example/d02+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "not its key's"),
        ("cityledger.example/d01+F3BF6B8E+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "lowercase hex"),
        ("cityledger.example/d01+f3bf6b8+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "lowercase hex"),
        ("cityledger.example/d01+f3bf6b8e+BOfxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "not its key's"),  # type 0x04
        ("cityledger.example/d01+f3bf6b8e+AufxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "unsupported"),
        ("cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw=", "base64"),
        ("cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lx", "not its key's"),
        ("cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4r", "32 bytes"),
        ("cityledger.example/d01+f3bf6b8e+AQ==", "type byte"),
        ("cityledger.example/d01+f3bf6b8e+AQE=", "32 bytes"),
        ("cityledger.example/d01+f3bf6b8e+AQF=", "canonical"),
        ("cityledger.example/d01+f3bf6b8e+", "type byte"),
        ("cityledger.example/d01+f3bf6b8e", "<name>"),
        ("cityledger.example/d01", "<name>"),
        ("+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "non-empty"),
        (" cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw", "space"),
        ("cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw\n", "base64"),
    ],
)
def test_malformed_vkey_refused(vkey: str, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        parse_vkey(vkey)


def test_verifier_refuses_inconsistent_parts() -> None:
    public = LEDGER_KEY.verify_key.encode()
    with pytest.raises(NoteError, match="does not match"):
        Verifier(ORIGIN, b"\x00\x00\x00\x00", ALG_ED25519, public)
    with pytest.raises(NoteError, match="unsupported"):
        Verifier(ORIGIN, key_id(ORIGIN, 2, public), 2, public)
    with pytest.raises(NoteError, match="32 bytes"):
        make_verifier(ORIGIN, public[:31])
    with pytest.raises(NoteError):
        make_verifier("a+b", public)


# ---------------------------------------------------------------- verification


def test_unknown_signers_and_wrong_key_ids_do_not_verify() -> None:
    note = parse_note(SIGNED_CHECKPOINT)
    other = make_verifier(ORIGIN, OTHER_KEY.verify_key.encode())  # same name, other key: other key id
    assert not verify_note_signature(note, other)
    renamed = make_verifier("cityledger.example/d02", LEDGER_KEY.verify_key.encode())
    assert not verify_note_signature(note, renamed)
    as_cosigner = make_verifier(ORIGIN, LEDGER_KEY.verify_key.encode(), ALG_COSIGNATURE)
    assert not verify_note_signature(note, as_cosigner)
    # A line claiming the trusted key's name and id, with another key's signature: refused.
    forged = Signature(ORIGIN, parse_vkey(VKEY).key_id, OTHER_KEY.sign(note.text.encode()).signature)
    assert not verify_note_signature(Note(note.text, (forged,)), parse_vkey(VKEY))


def test_tampered_text_or_signature_does_not_verify() -> None:
    note = parse_note(SIGNED_CHECKPOINT)
    v = parse_vkey(VKEY)
    assert not verify_note_signature(Note(note.text.replace("\n2\n", "\n3\n"), note.signatures), v)
    (sig,) = note.signatures
    bad = Signature(sig.name, sig.key_id, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    assert not verify_note_signature(Note(note.text, (bad,)), v)
    short = Signature(sig.name, sig.key_id, sig.signature[:63])
    assert not verify_note_signature(Note(note.text, (short,)), v)


def test_rotation_checkpoint_carries_old_then_new() -> None:
    new = SigningKey(b"\x42" * 32)
    note = signed_checkpoint(CP, [LEDGER_KEY, new])
    assert note.signatures[0] == parse_note(SIGNED_CHECKPOINT).signatures[0]
    old_v, new_v = parse_vkey(VKEY), make_verifier(ORIGIN, new.verify_key.encode())
    assert [s.key_id for s in note.signatures] == [old_v.key_id, new_v.key_id]
    again = parse_note(note.encode())
    assert verify_note_signature(again, old_v) and verify_note_signature(again, new_v)
    with pytest.raises(NoteError, match="two signatures"):
        signed_checkpoint(CP, [LEDGER_KEY, LEDGER_KEY])
    with pytest.raises(NoteError):
        signed_checkpoint(CP, [])


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "text, why",
    [
        (BODY + "extension\n", "no extension lines"),
        (BODY + "\n", "extension lines must be non-empty"),
        ("cityledger.example/d01\n02\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "leading zeros"),
        ("cityledger.example/d01\n00\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "leading zeros"),
        ("cityledger.example/d01\n+2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "decimal"),
        ("cityledger.example/d01\n 2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "decimal"),
        ("cityledger.example/d01\n-1\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "decimal"),
        ("cityledger.example/d01\n1_0\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "decimal"),
        ("cityledger.example/d01\n\u0662\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "decimal"),  # Arabic 2
        ("cityledger.example/d01\n9223372036854775808\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "larger"),
        ("cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw\n", "base64"),
        ("cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kx=\n", "canonical"),
        ("cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI\n", "32 bytes"),
        ("cityledger.example/d01\n2\n\n", "base64"),
        ("\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n", "origin"),
        ("cityledger.example/d01\n2\n", "at least 3 lines"),
        ("cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=", "newline"),
        (BODY.replace("\n", "\r\n"), "control character"),
    ],
)
def test_malformed_checkpoint_refused(text: str, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        parse_checkpoint(text)


def test_checkpoint_of_size_zero_and_its_limits() -> None:
    empty = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())
    assert parse_checkpoint(checkpoint_text(empty)) == empty
    bads: list[Callable[[], object]] = [
        lambda: Checkpoint("", 1, ROOT),
        lambda: Checkpoint("a\nb", 1, ROOT),
        lambda: Checkpoint(ORIGIN, -1, ROOT),
        lambda: Checkpoint(ORIGIN, 2**63, ROOT),
        lambda: Checkpoint(ORIGIN, True, ROOT),
        lambda: Checkpoint(ORIGIN, 1, ROOT[:31]),
    ]
    for bad in bads:
        with pytest.raises(NoteError):
            bad()


# ---------------------------------------------------------------- cosignatures

WITNESS = make_verifier("witness.example/w1", WITNESS_KEY.verify_key.encode(), ALG_COSIGNATURE)


def _cosigned(timestamp: int = 1_764_000_123) -> Note:
    note = parse_note(SIGNED_CHECKPOINT)
    return note.with_signatures(cosign(note.text, WITNESS.name, WITNESS_KEY, timestamp))


def test_cosignature_verifies_with_the_right_key() -> None:
    note = parse_note(_cosigned().encode())
    sig = note.signatures[1]
    assert sig.key_id == key_id(WITNESS.name, ALG_COSIGNATURE, WITNESS_KEY.verify_key.encode())
    assert int.from_bytes(sig.signature[:8], "big") == 1_764_000_123 and len(sig.signature) == 72
    assert WITNESS_KEY.verify_key.verify(cosignature_message(note.text, 1_764_000_123), sig.signature[8:])
    assert verify_cosignature(note, WITNESS) == 1_764_000_123
    assert verify_note_signature(note, WITNESS)
    assert verify_note_signature(note, parse_vkey(VKEY))  # the log's signature is untouched


def test_cosignature_with_the_wrong_key_or_type_is_not_counted() -> None:
    note = _cosigned()
    wrong = make_verifier(WITNESS.name, OTHER_KEY.verify_key.encode(), ALG_COSIGNATURE)
    assert verify_cosignature(note, wrong) is None
    as_plain = make_verifier(WITNESS.name, WITNESS_KEY.verify_key.encode(), ALG_ED25519)
    assert verify_cosignature(note, as_plain) is None and not verify_note_signature(note, as_plain)
    assert verify_cosignature(note, parse_vkey(VKEY)) is None  # a log key is no witness
    # A witness key under a name it does not have: other key id, ignored.
    renamed = make_verifier("witness.example/w2", WITNESS_KEY.verify_key.encode(), ALG_COSIGNATURE)
    assert verify_cosignature(note, renamed) is None


def test_tampered_timestamp_is_refused() -> None:
    note = _cosigned()
    log, sig = note.signatures
    for ts in (1_764_000_124, 1_764_000_122, 0, 2**63 - 1):
        forged = Signature(sig.name, sig.key_id, ts.to_bytes(8, "big") + sig.signature[8:])
        assert verify_cosignature(Note(note.text, (log, forged)), WITNESS) is None
    too_late = 2**63
    message = f"cosignature/v1\ntime {too_late}\n{note.text}".encode()
    forged = Signature(sig.name, sig.key_id, too_late.to_bytes(8, "big") + WITNESS_KEY.sign(message).signature)
    assert verify_cosignature(Note(note.text, (log, forged)), WITNESS) is None
    assert (
        verify_cosignature(Note(note.text, (log, Signature(sig.name, sig.key_id, sig.signature[:71]))), WITNESS) is None
    )


def test_cosignature_of_another_checkpoint_is_refused() -> None:
    note = _cosigned()
    other = Checkpoint(ORIGIN, 3, ROOT)
    moved = Note(checkpoint_text(other), note.signatures)
    assert verify_cosignature(moved, WITNESS) is None


def test_cosign_limits() -> None:
    for ts in (-1, 2**63, True):
        with pytest.raises(NoteError):
            cosign(BODY, WITNESS.name, WITNESS_KEY, ts)
    with pytest.raises(NoteError):
        cosign("not a checkpoint\n", WITNESS.name, WITNESS_KEY, 1)
    assert verify_cosignature(_cosigned(0), WITNESS) == 0
    assert verify_cosignature(_cosigned(2**63 - 1), WITNESS) == 2**63 - 1


def test_cosignature_covers_extension_lines() -> None:
    text = BODY + "an extension\n"
    sig = cosign(text, WITNESS.name, WITNESS_KEY, 5)
    assert verify_cosignature(Note(text, (sig,)), WITNESS) == 5
    assert verify_cosignature(Note(BODY + "another extension\n", (sig,)), WITNESS) is None
