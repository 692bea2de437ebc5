"""The witness's decision on `add-checkpoint` (ledger/chain/cosigning.py), every answer of tlog-witness.md.

Pure: no server, no files, no clock. A real log is built here (leaf hashes, merkle roots and
consistency proofs, checkpoints signed by a log key), so each refusal is the witness's
answer to a request a real log, or a lying one, could send.
"""

from __future__ import annotations

import base64

import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.cosigning import (
    MAX_PROOF_LINES,
    SIZE_CONTENT_TYPE,
    AddCheckpoint,
    Cosigned,
    Known,
    LogState,
    Refusal,
    decide,
    parse_add_checkpoint,
)
from ledger.chain.notes import (
    ALG_COSIGNATURE,
    ALG_ED25519,
    Checkpoint,
    Note,
    Signature,
    checkpoint_text,
    key_id,
    make_verifier,
    parse_note,
    sign_note,
    signed_checkpoint,
    verify_cosignature,
)
from ledger.errors import Refused

ORIGIN = "cityledger.example/d01"
WITNESS = "witness.example/w1"
NOW = 1_764_000_123

LOG_KEY = SigningKey(bytes(range(0x21, 0x41)))
NEXT_LOG_KEY = SigningKey(bytes(range(0x41, 0x61)))
WITNESS_KEY = SigningKey(bytes(range(0x61, 0x81)))
OTHER_KEY = SigningKey(bytes(range(0x81, 0xA1)))

LEAVES = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(12)]
FORK = LEAVES[:5] + [merkle.leaf_hash(f"forked {i}".encode()) for i in range(5, 12)]

KNOWN = {ORIGIN: Known(ORIGIN, (make_verifier(ORIGIN, LOG_KEY.verify_key.encode(), ALG_ED25519),))}
WITNESS_VERIFIER = make_verifier(WITNESS, WITNESS_KEY.verify_key.encode(), ALG_COSIGNATURE)


def checkpoint(size: int, leaves: list[bytes] = LEAVES, origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin, size, merkle.root(leaves[:size]))


def note(cp: Checkpoint, keys: tuple[SigningKey, ...] = (LOG_KEY,)) -> bytes:
    return signed_checkpoint(cp, list(keys)).encode()


def body(old: int, proof: list[bytes], signed: bytes) -> bytes:
    lines = f"old {old}\n" + "".join(base64.b64encode(p).decode() + "\n" for p in proof) + "\n"
    return lines.encode() + signed


def request(old: int, size: int, leaves: list[bytes] = LEAVES, **kw: tuple[SigningKey, ...]) -> AddCheckpoint:
    proof = merkle.consistency_proof(leaves[:size], old) if 0 < old <= size else []
    parsed = parse_add_checkpoint(body(old, proof, note(checkpoint(size, leaves), **kw)))
    assert isinstance(parsed, AddCheckpoint), parsed
    return parsed


def state_at(size: int, leaves: list[bytes] = LEAVES) -> dict[str, LogState]:
    return {ORIGIN: LogState(size, merkle.root(leaves[:size]))}


def run(req: AddCheckpoint, state: dict[str, LogState] | None = None) -> Cosigned | Refusal:
    return decide(req, KNOWN, state or {}, WITNESS, WITNESS_KEY, NOW)


def refused(decision: Cosigned | Refusal, status: int) -> Refusal:
    assert isinstance(decision, Refusal), decision
    assert decision.status == status, (decision.status, decision.body)
    return decision


# ---------------------------------------------------------------- 200


def test_a_first_checkpoint_is_cosigned_and_the_cosignature_verifies() -> None:
    decision = run(request(0, 3))
    assert isinstance(decision, Cosigned)
    assert decision.status == 200 and decision.origin == ORIGIN
    assert decision.new_state == LogState(3, merkle.root(LEAVES[:3]))
    assert decision.body.startswith("\u2014 witness.example/w1 ".encode()) and decision.body.endswith(b"\n")

    # The client's way to read the answer (tlog-witness.md): append it to the checkpoint and verify.
    cosigned = parse_note(note(checkpoint(3)) + decision.body)
    assert verify_cosignature(cosigned, WITNESS_VERIFIER) == NOW
    mine = [s for s in cosigned.signatures if s.name == WITNESS]
    assert len(mine) == 1
    assert mine[0].key_id == key_id(WITNESS, ALG_COSIGNATURE, WITNESS_KEY.verify_key.encode())
    assert mine[0].signature[:8] == NOW.to_bytes(8, "big") and len(mine[0].signature) == 72
    # Over the checkpoint's text only: the log's own signature line is not part of it.
    assert verify_cosignature(Note(checkpoint_text(checkpoint(3)), tuple(mine)), WITNESS_VERIFIER) == NOW


def test_a_consistent_extension_is_cosigned() -> None:
    decision = run(request(3, 7), state_at(3))
    assert isinstance(decision, Cosigned)
    assert decision.new_state == LogState(7, merkle.root(LEAVES[:7]))
    assert verify_cosignature(parse_note(note(checkpoint(7)) + decision.body), WITNESS_VERIFIER) == NOW


def test_the_same_checkpoint_again_is_cosigned_again() -> None:
    decision = run(request(7, 7), state_at(7))
    assert isinstance(decision, Cosigned) and decision.new_state == state_at(7)[ORIGIN]


def test_the_empty_tree_and_growth_from_it() -> None:
    empty = run(request(0, 0))
    assert isinstance(empty, Cosigned) and empty.new_state == LogState(0, merkle.EMPTY_ROOT)
    assert isinstance(run(request(0, 4), {ORIGIN: LogState(0, merkle.EMPTY_ROOT)}), Cosigned)


def test_signatures_of_unknown_keys_are_ignored_and_any_trusted_key_will_do() -> None:
    # The log's next key, not yet trusted, beside the trusted one: ignored.
    assert isinstance(run(request(0, 3, keys=(LOG_KEY, NEXT_LOG_KEY))), Cosigned)
    # Two trusted keys (a rotation): a checkpoint signed by the new one only is enough.
    both = Known(ORIGIN, KNOWN[ORIGIN].verifiers + (make_verifier(ORIGIN, NEXT_LOG_KEY.verify_key.encode()),))
    decision = decide(request(0, 3, keys=(NEXT_LOG_KEY,)), {ORIGIN: both}, {}, WITNESS, WITNESS_KEY, NOW)
    assert isinstance(decision, Cosigned)


# ---------------------------------------------------------------- 404, 403


def test_an_unknown_origin_is_404() -> None:
    other = "cityledger.example/d02"
    parsed = parse_add_checkpoint(body(0, [], note(checkpoint(3, origin=other))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed), 404)


def test_no_trusted_signature_is_403() -> None:
    # Signed under the origin's name by another key: its key id is not the trusted one's, so ignored.
    refused(run(request(0, 3, keys=(OTHER_KEY,))), 403)


def test_a_trusted_key_line_that_does_not_verify_is_403_even_beside_a_good_one() -> None:
    cp = checkpoint(3)
    text = checkpoint_text(cp)
    good = sign_note(text, ORIGIN, LOG_KEY)
    forged = Signature(good.name, good.key_id, bytes(64))
    parsed = parse_add_checkpoint(body(0, [], Note(text, (forged,)).encode()))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed), 403)

    # The right key over another checkpoint's text: a valid signature, of something else.
    moved = sign_note(checkpoint_text(checkpoint(4)), ORIGIN, LOG_KEY)
    parsed = parse_add_checkpoint(body(0, [], Note(text, (moved,)).encode()))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed), 403)


def test_origin_and_signature_are_checked_before_the_state() -> None:
    # Wrong old size too, but the signature is bad: 403, and the witness's size is not told.
    refused(run(request(5, 7, keys=(OTHER_KEY,)), state_at(3)), 403)


# ---------------------------------------------------------------- 409


def test_an_old_size_other_than_the_stored_one_is_409_with_the_size() -> None:
    decision = refused(run(request(2, 7), state_at(3)), 409)
    assert decision.body == b"3\n" and decision.content_type == SIZE_CONTENT_TYPE


def test_a_log_new_to_the_witness_with_an_old_size_gets_409_zero() -> None:
    decision = refused(run(request(3, 7)), 409)
    assert decision.body == b"0\n" and decision.content_type == SIZE_CONTENT_TYPE


def test_a_smaller_checkpoint_is_never_cosigned() -> None:
    state = state_at(7)
    # An old size of 0, as a log that lost track would send: 409, and the witness says 7.
    assert refused(run(request(0, 3), state), 409).body == b"7\n"
    # Honest about the old size: above the checkpoint's own size, a malformed request (400).
    parsed = parse_add_checkpoint(body(7, [], note(checkpoint(3))))
    assert isinstance(parsed, Refusal) and parsed.status == 400
    # Lying about the old size: not the size the witness holds (409, and it says which).
    assert refused(run(request(3, 3), state), 409).body == b"7\n"


# ---------------------------------------------------------------- 422


def test_a_split_view_at_the_same_size_is_422() -> None:
    assert merkle.root(FORK[:7]) != merkle.root(LEAVES[:7])
    refused(run(request(7, 7, FORK), state_at(7)), 422)


def test_a_fork_after_the_stored_size_is_refused_with_its_own_proof() -> None:
    # The fork shares the first 5 leaves: a witness that only saw size 3 rightly cosigns it at 9,
    # and one that saw the other branch at 7 must not, whatever proof comes with it.
    assert isinstance(run(request(3, 9, FORK), state_at(3)), Cosigned)
    refused(run(request(7, 9, FORK), state_at(7)), 422)


def test_a_bad_proof_is_422() -> None:
    proof = merkle.consistency_proof(LEAVES[:7], 3)
    proof[0] = bytes(32)
    parsed = parse_add_checkpoint(body(3, proof, note(checkpoint(7))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed, state_at(3)), 422)
    # A true proof, but to another size.
    parsed = parse_add_checkpoint(body(3, merkle.consistency_proof(LEAVES[:8], 3), note(checkpoint(7))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed, state_at(3)), 422)
    # No proof at all.
    parsed = parse_add_checkpoint(body(3, [], note(checkpoint(7))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed, state_at(3)), 422)


def test_a_proof_from_size_zero_is_422() -> None:
    parsed = parse_add_checkpoint(body(0, [LEAVES[0]], note(checkpoint(3))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed), 422)


def test_a_proof_at_the_same_size_is_422() -> None:
    parsed = parse_add_checkpoint(body(7, [LEAVES[0]], note(checkpoint(7))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed, state_at(7)), 422)


def test_an_empty_tree_with_another_root_is_422() -> None:
    parsed = parse_add_checkpoint(body(0, [], note(Checkpoint(ORIGIN, 0, bytes(32)))))
    assert isinstance(parsed, AddCheckpoint)
    refused(run(parsed), 422)


# ---------------------------------------------------------------- 400


GOOD_NOTE = note(checkpoint(3))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"old 0\n" + GOOD_NOTE,  # no empty line after the old size
        b"old 0\n\n",  # no checkpoint
        b"old  0\n\n" + GOOD_NOTE,
        b"old 00\n\n" + GOOD_NOTE,
        b"old +0\n\n" + GOOD_NOTE,
        b"old -1\n\n" + GOOD_NOTE,
        b"old 0 \n\n" + GOOD_NOTE,
        b"Old 0\n\n" + GOOD_NOTE,
        b"old\n\n" + GOOD_NOTE,
        b"old 4\n\n" + GOOD_NOTE,  # above the checkpoint's size
        b"old 0\r\n\r\n" + GOOD_NOTE,
        b"old 1\nnot base64!\n\n" + GOOD_NOTE,
        b"old 1\n" + base64.b64encode(bytes(31)) + b"\n\n" + GOOD_NOTE,  # not a 32-byte hash
        b"old 1\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n\n" + GOOD_NOTE,
        b"old 1\n" + (base64.b64encode(bytes(32)) + b"\n") * (MAX_PROOF_LINES + 1) + b"\n" + GOOD_NOTE,
        b"old 0\n\n" + GOOD_NOTE[:-1],  # the last line without its newline
        b"old 0\n\n" + checkpoint_text(checkpoint(3)).encode() + b"\n",  # no signature
        b"old 0\n\n" + GOOD_NOTE.replace(b"\n\n", b"\n"),  # no empty line in the note
        b"old 0\n\n" + b"\xff" + GOOD_NOTE,
        b"old 0\n\ncityledger.example/d01\n03\n" + GOOD_NOTE.split(b"\n", 2)[2],  # leading zero in the size
    ],
)
def test_malformed_bodies_are_400(raw: bytes) -> None:
    parsed = parse_add_checkpoint(raw)
    assert isinstance(parsed, Refusal) and parsed.status == 400, parsed
    assert parsed.body.endswith(b"\n")


def test_a_checkpoint_with_an_extension_line_is_400() -> None:
    text = checkpoint_text(checkpoint(3)) + "an extension\n"
    signed = Note(text, (sign_note(text, ORIGIN, LOG_KEY),)).encode()
    parsed = parse_add_checkpoint(body(0, [], signed))
    assert isinstance(parsed, Refusal) and parsed.status == 400 and b"extension" in parsed.body


def test_the_largest_proof_is_read() -> None:
    parsed = parse_add_checkpoint(body(1, [bytes(32)] * MAX_PROOF_LINES, note(checkpoint(3))))
    assert isinstance(parsed, AddCheckpoint) and len(parsed.proof) == MAX_PROOF_LINES


def test_a_cosignature_needs_a_real_timestamp() -> None:
    with pytest.raises(Refused):
        decide(request(0, 3), KNOWN, {}, WITNESS, WITNESS_KEY, 0)
