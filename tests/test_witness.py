"""The witness's judgement and store, on chains of headers signed with real Ed25519 keys. No network."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.blocks import GENESIS_PREV, block_hash, make_header, sign_header
from ledger.chain.protocol import canonical_json, signed_header_payload
from ledger.chain.witness import (
    Accepted,
    Alarm,
    AlreadyHave,
    Unlinked,
    WitnessState,
    check,
)
from ledger.store.witness_files import StoreError, WitnessStore, load_headers, load_state


class Chain:
    """A ledger's headers built by hand: each block signed by whichever key is current."""

    def __init__(self, key: SigningKey | None = None, start: int = 0) -> None:
        self.key = key or SigningKey.generate()
        self.first_key = self.key.verify_key.encode().hex()
        self.blocks: list[tuple[str, dict[str, Any], bytes]] = []
        self.start = start

    @property
    def head_hash(self) -> str:
        return self.blocks[-1][0] if self.blocks else GENESIS_PREV

    def seal(
        self,
        *,
        leaves: int = 2,
        key: SigningKey | None = None,
        prev: str | None = None,
        height: int | None = None,
        **extra: Any,
    ) -> bytes:
        """Append one block and return its signed payload."""
        height = self.start + len(self.blocks) if height is None else height
        leaf_hashes = [merkle.leaf_hash(f"leaf {height}/{i}".encode()) for i in range(leaves)]
        header = make_header(
            height=height,
            prev=self.head_hash if prev is None else prev,
            leaf_hashes=leaf_hashes,
            sealed_at=1_764_000_000_000 + height,
            v=1,
            **extra,
        )
        sig = sign_header(key or self.key, header)
        self.blocks.append((block_hash(header), header, sig))
        return self.payload(len(self.blocks) - 1)

    def rotate(self) -> tuple[bytes, SigningKey]:
        """Seal the block announcing a new key (signed by the old one); later blocks use the new."""
        new = SigningKey.generate()
        payload = self.seal(next_key=new.verify_key.encode().hex())
        self.key = new
        return payload, new

    def payload(self, index: int) -> bytes:
        return signed_header_payload(*self.blocks[index])


def follow(state: WitnessState, payloads: list[bytes]) -> list[Any]:
    """Feed payloads on the header stream, applying what is accepted."""
    outcomes = []
    for p in payloads:
        outcome = check(state, p, source="headers")
        if isinstance(outcome, Accepted):
            state.apply(outcome)
        outcomes.append(outcome)
    return outcomes


def fresh(chain: Chain) -> WitnessState:
    return WitnessState.new(chain.first_key)


def alarm_kind(outcome: Any) -> str | None:
    return outcome.kind if isinstance(outcome, Alarm) else None


# ---------------------------------------------------------------- the rules


def test_a_chain_from_genesis_is_accepted_in_order() -> None:
    chain = Chain()
    state = fresh(chain)
    outcomes = follow(state, [chain.seal() for _ in range(5)])
    assert all(isinstance(o, Accepted) and o.gap is None for o in outcomes)
    assert (state.height, state.hash) == (4, chain.head_hash)
    assert state.hashes == {i: h for i, (h, _, _) in enumerate(chain.blocks)}
    assert state.gaps == []


def test_the_first_header_may_be_anywhere_in_the_chain() -> None:
    chain = Chain(start=40)
    state = fresh(chain)
    outcomes = follow(state, [chain.seal(prev="ab" * 32), chain.seal()])
    assert [type(o) for o in outcomes] == [Accepted, Accepted]
    assert state.height == 41 and state.gaps == []


def test_a_redelivered_header_and_the_checkpoint_of_the_head_are_already_held() -> None:
    chain = Chain()
    state = fresh(chain)
    follow(state, [chain.seal() for _ in range(3)])
    assert check(state, chain.payload(1), source="headers") == AlreadyHave(1, chain.blocks[1][0])
    assert check(state, chain.payload(2), source="headers") == AlreadyHave(2, chain.head_hash)
    assert check(state, chain.payload(2), source="checkpoint") == AlreadyHave(2, chain.head_hash)


def test_a_second_header_at_a_held_height_is_a_fork() -> None:
    chain = Chain()
    state = fresh(chain)
    follow(state, [chain.seal() for _ in range(3)])
    other = Chain(chain.key)
    other.blocks = chain.blocks[:1]
    forked = other.seal(leaves=3)  # height 1, validly signed, other contents
    for source in ("headers", "checkpoint"):
        outcome = check(state, forked, source=source)  # type: ignore[arg-type]
        assert alarm_kind(outcome) == "fork" and outcome.height == 1, outcome
        assert chain.blocks[1][0] in outcome.detail and other.blocks[1][0] in outcome.detail
    assert state.height == 2  # an alarm changes nothing


def test_the_next_height_with_the_wrong_prev_is_a_fork() -> None:
    chain = Chain()
    state = fresh(chain)
    follow(state, [chain.seal() for _ in range(3)])
    outcome = check(state, chain.seal(prev="cd" * 32), source="headers")
    assert alarm_kind(outcome) == "fork" and outcome.height == 3
    assert state.height == 2


def test_an_older_checkpoint_is_a_rollback_even_when_its_hash_matches() -> None:
    chain = Chain()
    state = fresh(chain)
    follow(state, [chain.seal() for _ in range(4)])
    outcome = check(state, chain.payload(1), source="checkpoint")
    assert alarm_kind(outcome) == "rollback" and outcome.height == 1
    assert "height 3" in outcome.detail
    # the same bytes on the header stream are only a redelivery
    assert isinstance(check(state, chain.payload(1), source="headers"), AlreadyHave)


def test_an_older_checkpoint_resent_by_the_broker_is_not_a_rollback() -> None:
    """MQTT DUP: the broker resends what it sent before a reconnect, which the witness may have judged."""
    chain = Chain()
    state = fresh(chain)
    follow(state, [chain.seal() for _ in range(4)])
    assert isinstance(check(state, chain.payload(2), source="checkpoint", redelivered=True), AlreadyHave)


def test_a_signature_by_another_key_is_refused() -> None:
    chain = Chain()
    state = fresh(chain)
    follow(state, [chain.seal() for _ in range(2)])
    outcome = check(state, chain.seal(key=SigningKey.generate()), source="headers")
    assert alarm_kind(outcome) == "bad_signature" and outcome.height == 2
    assert chain.first_key in outcome.detail
    # also for the very first header: the operator gave the key
    stranger = Chain()
    assert alarm_kind(check(fresh(chain), stranger.seal(), source="checkpoint")) == "bad_signature"


def test_a_key_rotation_is_followed_and_the_old_key_then_refused() -> None:
    chain = Chain()
    old = chain.key
    state = fresh(chain)
    follow(state, [chain.seal(), chain.seal()])
    rotation, new = chain.rotate()
    assert isinstance(check(state, rotation, source="headers"), Accepted)
    state.apply(check(state, rotation, source="headers"))  # type: ignore[arg-type]
    assert state.key == new.verify_key.encode().hex() and state.initial_key == chain.first_key
    assert isinstance(follow(state, [chain.seal()])[0], Accepted)  # signed by the new key

    by_old = chain.seal(key=old)  # height 4, right prev, signed by the retired key
    chain.blocks.pop()
    assert alarm_kind(check(state, by_old, source="headers")) == "bad_signature"
    # the rotating block itself (signed by the old key) comes back as a redelivery, not an alarm
    assert isinstance(check(state, rotation, source="headers"), AlreadyHave)
    assert isinstance(follow(state, [chain.seal()])[0], Accepted)


def test_missed_headers_are_a_gap_not_an_alarm() -> None:
    chain = Chain()
    payloads = [chain.seal() for _ in range(8)]
    state = fresh(chain)
    follow(state, payloads[:2])
    outcome = check(state, payloads[6], source="checkpoint")
    assert isinstance(outcome, Accepted) and outcome.gap == (2, 5)
    state.apply(outcome)
    assert state.gaps == [(2, 5)] and state.height == 6
    assert isinstance(follow(state, [payloads[7]])[0], Accepted)
    # a header from inside the gap cannot be compared with anything: not kept, not an alarm
    inside = check(state, payloads[3], source="headers")
    assert isinstance(inside, Unlinked) and inside.height == 3
    # but the ledger's head going back into the gap is still a rollback
    assert alarm_kind(check(state, payloads[3], source="checkpoint")) == "rollback"


def _signed(chain: Chain, index: int = 0) -> dict[str, Any]:
    h, header, sig = chain.blocks[index]
    return {"hash": h, "header": dict(header), "sig": base64.b64encode(sig).decode()}


def _malformed_payloads() -> dict[str, bytes]:
    chain = Chain()
    chain.seal()
    good = _signed(chain)
    sig = good["sig"]

    def with_header(**changes: Any) -> bytes:
        header = {**good["header"], **changes}
        return canonical_json({"hash": block_hash(header), "header": header, "sig": sig})

    cases = {
        "empty": b"",
        "garbage": b"\x00\xff\xfe garbage \x80",
        "not utf-8": b'{"hash":"\xff"}',
        "not json": b"{hash:",
        "a list": b"[1,2,3]",
        "a number": b"7",
        "null": b"null",
        "hash mismatch": canonical_json({**good, "hash": "00" * 32}),
        "hash upper case": canonical_json({**good, "hash": good["hash"].upper()}),
        "hash not a string": canonical_json({**good, "hash": 5}),
        "bad base64": canonical_json({**good, "sig": "!" * 88}),
        "unpadded sig": canonical_json({**good, "sig": sig.rstrip("=")}),
        "short sig": canonical_json({**good, "sig": base64.b64encode(b"x" * 63).decode()}),
        "sig not a string": canonical_json({**good, "sig": [sig]}),
        "extra member": canonical_json({**good, "note": "hi"}),
        "missing member": canonical_json({"hash": good["hash"], "header": good["header"]}),
        "header not an object": canonical_json({**good, "header": "h"}),
        "not canonical (spaces)": json.dumps(good, sort_keys=True).encode(),
        "not canonical (order)": json.dumps(
            {"sig": sig, "hash": good["hash"], "header": good["header"]}, separators=(",", ":"), sort_keys=False
        ).encode(),
        "duplicate member": canonical_json(good)[:-1] + b',"sig":"' + sig.encode() + b'"}',
        "float": with_header(sealed_at=1.5),
        "NaN": canonical_json(good).replace(b'"size":2', b'"size":NaN'),
        "bool height": with_header(height=True),
        "negative height": with_header(height=-1),
        "string height": with_header(height="0"),
        "zero size": with_header(size=0),
        "genesis with a prev": with_header(prev="11" * 32),
        "short prev": with_header(height=3, prev="11"),
        "bad next_key": with_header(next_key="xyz"),
        "lone surrogate": canonical_json(good)[:-1] + b',"x":"\\ud800"}',
        "huge integer": canonical_json(good).replace(b'"size":2', b'"size":' + b"9" * 5000),
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "too large": b'{"pad":"' + b"x" * 70_000 + b'"}',
    }
    assert canonical_json(good) not in cases.values()  # every edit above took effect
    return cases


@pytest.mark.parametrize("name", list(_malformed_payloads()))
def test_malformed_input_is_an_alarm_never_an_exception(name: str) -> None:
    payload = _malformed_payloads()[name]
    state = WitnessState.new(SigningKey.generate().verify_key.encode().hex())
    for source in ("headers", "checkpoint"):
        outcome = check(state, payload, source=source)  # type: ignore[arg-type]
        assert alarm_kind(outcome) == "malformed", (name, outcome)
    assert state.height is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_are_judged_without_raising(payload: bytes) -> None:
    state = WitnessState.new("11" * 32)
    assert alarm_kind(check(state, payload, source="headers")) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_valid_payload_with_one_byte_changed_is_never_accepted(data: st.DataObject) -> None:
    chain = Chain()
    payload = bytearray(chain.seal())
    i = data.draw(st.integers(0, len(payload) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != payload[i]))
    payload[i] = byte
    outcome = check(fresh(chain), bytes(payload), source="headers")
    assert alarm_kind(outcome) in ("malformed", "bad_signature")


# ---------------------------------------------------------------- the store


def _build_store(tmp_path: Path) -> tuple[WitnessStore, Chain]:
    chain = Chain()
    payloads = [chain.seal() for _ in range(3)]
    rotation, _ = chain.rotate()
    payloads += [rotation] + [chain.seal() for _ in range(5)]
    store = WitnessStore.open(tmp_path / "w", chain.first_key)
    assert isinstance(store, WitnessStore)
    for n, payload in enumerate(payloads[:5] + payloads[7:]):  # heights 5, 6 missed
        outcome = check(store.state, payload, source="headers")
        assert isinstance(outcome, Accepted), outcome
        store.record(outcome, received_at=1000 + n)
    return store, chain


def test_the_store_reloads_to_the_same_state(tmp_path: Path) -> None:
    store, chain = _build_store(tmp_path)
    before = store.state
    assert before.gaps == [(5, 6)] and before.height == 8 and before.key != chain.first_key

    again = WitnessStore.open(tmp_path / "w")  # no key needed any more
    assert isinstance(again, WitnessStore)
    assert again.state == before
    assert json.loads((tmp_path / "w" / "state.json").read_text()) == before.summary()

    held = load_headers(tmp_path / "w")
    assert sorted(held) == [0, 1, 2, 3, 4, 7, 8]
    for height, rec in held.items():
        h, header, sig = chain.blocks[height]
        assert rec == {"hash": h, "header": header, "sig": base64.b64encode(sig).decode()}
    records = list(again.headers())
    assert [r["received_at"] for r in records] == list(range(1000, 1007))
    assert all(set(r) == {"hash", "header", "sig", "received_at"} for r in records)


def test_the_store_accepts_its_own_keys_and_refuses_a_contradicting_one(tmp_path: Path) -> None:
    store, chain = _build_store(tmp_path)
    assert isinstance(WitnessStore.open(tmp_path / "w", chain.first_key), WitnessStore)
    assert isinstance(WitnessStore.open(tmp_path / "w", store.state.key), WitnessStore)  # the rotated key
    refused = WitnessStore.open(tmp_path / "w", "22" * 32)
    assert isinstance(refused, StoreError) and "contradicts" in refused.message
    assert isinstance(WitnessStore.open(tmp_path / "w", "not hex"), StoreError)


def test_a_new_store_needs_a_valid_ledger_key(tmp_path: Path) -> None:
    missing = WitnessStore.open(tmp_path / "a", None)
    assert isinstance(missing, StoreError) and "--ledger-key" in missing.message
    assert isinstance(WitnessStore.open(tmp_path / "b", "zz" * 32), StoreError)
    assert isinstance(WitnessStore.open(tmp_path / "c", "11" * 31), StoreError)
    created = WitnessStore.open(tmp_path / "d", "AB" * 32)
    assert isinstance(created, WitnessStore) and created.state.key == "ab" * 32
    reopened = WitnessStore.open(tmp_path / "d")
    assert isinstance(reopened, WitnessStore) and reopened.state.height is None


def test_a_torn_last_line_is_cut_and_a_lagging_state_file_caught_up(tmp_path: Path) -> None:
    store, chain = _build_store(tmp_path)
    root = tmp_path / "w"
    state_after_7 = json.loads((root / "state.json").read_text())
    # a crash after appending height 8's line but before state.json: the line is the record
    lines = (root / "headers.jsonl").read_bytes().splitlines(keepends=True)
    state_after_7.update(height=7, hash=chain.blocks[7][0])
    (root / "state.json").write_text(json.dumps(state_after_7))
    with (root / "headers.jsonl").open("ab") as fh:
        fh.write(lines[-1][:40])  # and a second append torn mid-line
    again = WitnessStore.open(root)
    assert isinstance(again, WitnessStore) and again.state.height == 8
    assert (root / "headers.jsonl").read_bytes() == b"".join(lines)
    assert json.loads((root / "state.json").read_text())["height"] == 8


def test_a_state_file_that_disagrees_with_the_headers_is_damage(tmp_path: Path) -> None:
    _build_store(tmp_path)
    root = tmp_path / "w"
    summary = json.loads((root / "state.json").read_text())
    summary.update(height=9, hash="ee" * 32)
    (root / "state.json").write_text(json.dumps(summary))
    assert isinstance(load_state(root), StoreError)
    assert isinstance(WitnessStore.open(root), StoreError)
    (root / "state.json").write_text("{not json")
    assert isinstance(WitnessStore.open(root), StoreError)


def test_alarms_are_kept_with_their_evidence(tmp_path: Path) -> None:
    store, chain = _build_store(tmp_path)
    outcome = check(store.state, chain.payload(2), source="checkpoint")
    assert isinstance(outcome, Alarm)
    record = store.record_alarm(outcome, witness="w1", at=1234, source="checkpoint", payload=chain.payload(2))
    assert record == {"kind": "rollback", "height": 2, "detail": outcome.detail, "at": 1234, "witness": "w1"}
    kept = store.alarms()
    assert len(kept) == 1 and kept[0]["payload"] == chain.payload(2).decode() and kept[0]["source"] == "checkpoint"
    assert outcome.line().startswith("WITNESS ALARM rollback at height 2: ")
