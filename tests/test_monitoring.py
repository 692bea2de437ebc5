"""The monitor's judgement of a log (ledger/chain/monitoring.py), over synthetic logs in memory.

Every log here is built as the ledger builds one: canonical JSON entries (enrolments,
rotations, revocations) and readings signed with real Ed25519 device keys by
`sign_reading`, leaf hashes and roots by ledger.chain.merkle, checkpoints signed as C2SP
notes by `signed_checkpoint`. No HTTP: that is tests/test_monitor_http.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.monitoring import (
    LogFollower,
    MonitorError,
    Problem,
    ProblemKind,
    bad_signatures,
    check_checkpoint,
    checkpoint_origin,
    verifiers_for,
)
from ledger.chain.notes import Checkpoint, make_verifier, parse_vkey, signed_checkpoint
from ledger.chain.protocol import canonical_json, sign_reading

ORIGIN = "cityledger.example/d01"
T0 = 1_764_000_000_000
LEDGER = SigningKey(bytes.fromhex("2122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40"))


def device_key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(f"device {name}".encode()).digest())


def enrolment(device: str, key: SigningKey, kind: str = "water") -> bytes:
    return canonical_json(
        {
            "entry": "device_enrolled",
            "device": device,
            "kind": kind,
            "district": "d01",
            "account": None,
            "public_key": key.verify_key.encode().hex(),
            "operator": "ops",
            "at": T0,
        }
    )


def rotation(device: str, old: SigningKey, new: SigningKey, from_seq: int) -> bytes:
    return canonical_json(
        {
            "entry": "device_key_rotated",
            "device": device,
            "public_key": new.verify_key.encode().hex(),
            "previous_key": old.verify_key.encode().hex(),
            "from_seq": from_seq,
            "operator": "ops",
            "at": T0,
        }
    )


def revocation(device: str, key: SigningKey) -> bytes:
    return canonical_json(
        {"entry": "device_revoked", "device": device, "public_key": key.verify_key.encode().hex(), "operator": "ops"}
    )


def reading(key: SigningKey, device: str, seq: int, value: int | None = None) -> bytes:
    r = sign_reading(
        key, device=device, kind="water", seq=seq, ts=T0 + seq * 900_000, value=seq * 31 if value is None else value
    )
    return r.leaf_data()


def tampered(leaf: bytes, **change: Any) -> bytes:
    """The reading with members changed and its signature kept: still canonical JSON."""
    return canonical_json({**json.loads(leaf), **change})


@dataclass
class Log:
    """A log in memory: its entries, and checkpoints of any prefix signed by any keys."""

    entries: list[bytes] = field(default_factory=list)
    origin: str = ORIGIN

    def add(self, *entries: bytes) -> int:
        """Append; the index of the first one added."""
        first = len(self.entries)
        self.entries.extend(entries)
        return first

    def root(self, size: int) -> bytes:
        return merkle.root(merkle.leaf_hashes(self.entries[:size]))

    def checkpoint(self, size: int | None = None, keys: list[SigningKey] | None = None) -> tuple[Checkpoint, bytes]:
        size = len(self.entries) if size is None else size
        cp = Checkpoint(self.origin, size, self.root(size))
        return cp, signed_checkpoint(cp, keys or [LEDGER]).encode()


def fleet(n: int) -> list[tuple[str, SigningKey]]:
    return [(f"wm-d01-{i:06d}", device_key(f"wm-d01-{i:06d}")) for i in range(n)]


def clean_log(devices: int = 5, readings: int = 20) -> Log:
    log = Log()
    members = fleet(devices)
    log.add(*(enrolment(d, k) for d, k in members))
    for seq in range(1, readings + 1):
        log.add(*(reading(k, d, seq) for d, k in members))
    return log


def follow(follower: LogFollower, log: Log, size: int | None = None, batch: int = 37) -> list[Problem]:
    """Observe the log's checkpoint at `size` (verified), then take its entries in odd-sized batches."""
    note = log.checkpoint(size)[1]
    cp = check_checkpoint(note, verifiers_for(log.origin, [(None, LEDGER.verify_key.encode())]))
    assert isinstance(cp, Checkpoint), cp
    problems = follower.observe(cp, note)
    while follower.size < follower.target:
        upto = min(follower.target, follower.size + batch)
        problems += follower.take(log.entries[follower.size : upto])
    return problems


def kinds(problems: list[Problem]) -> list[ProblemKind]:
    return [p.kind for p in problems]


# ---------------------------------------------------------------- the protocol's vector


def test_the_protocol_vector_checkpoint_verifies_and_its_two_entries_confirm_it() -> None:
    vkey = "cityledger.example/d01+f3bf6b8e+AefxYqEL7FWa/qGV5NzoS2lWjV0ssJY+tEbAaF4rF/Lw"
    note = (
        "cityledger.example/d01\n2\n7BQiMjOEGPk0xCd9lPgELrK9jm1KT4vXZugLUQSI/Kw=\n\n"
        "\u2014 cityledger.example/d01 879rjnUr7SAMwYCBwoDH9pkE9OfEUkXVq3SjqOMaljBl1YGdxhkBkForPqhpcZ0R0cgD0ycENMmCSWx1tFKLsdSr/Qk=\n"
    ).encode()
    enrol = (
        b'{"at":1763999000000,"device":"wm-d01-000042","district":"d01","entry":"device_enrolled","kind":"water",'
        b'"public_key":"79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664"}'
    )
    extra = (
        "eyJkZXZpY2UiOiJ3bS1kMDEtMDAwMDQyIiwia2luZCI6IndhdGVyIiwic2VxIjo3LCJzaWciOiJqWTFBdkJkVzJYdlNFYUduMHRIMy8vL0lm"
        "SXd0ekNCcm1lTnNhNUZSV1JsaStHQ2NuNnJRQW9TYkdBWnYzOXBzV0dUTGc5TWVPY1lxVWZKUzN2RlhEdz09IiwidHMiOjE3NjQwMDAwMDAw"
        "MDAsInYiOjEsInZhbHVlIjoxMjM0NTZ9"
    )
    assert checkpoint_origin(note) == ORIGIN
    for verifiers in (
        [parse_vkey(vkey)],
        verifiers_for(
            ORIGIN, [(None, bytes.fromhex("e7f162a10bec559afea195e4dce84b69568d5d2cb0963eb446c0685e2b17f2f0"))]
        ),
    ):
        cp = check_checkpoint(note, verifiers)
        assert isinstance(cp, Checkpoint)
        assert (cp.size, cp.root.hex()) == (2, "ec142232338418f934c4277d94f8042eb2bd8e6d4a4f8bd766e80b510488fcac")
        follower = LogFollower()
        assert follower.observe(cp, note) == []
        assert follower.take([enrol, base64.b64decode(extra)]) == []
        assert follower.confirmed is not None and follower.confirmed.size == 2 and follower.caught_up
        assert (follower.counts.entries, follower.counts.readings, follower.counts.registry) == (2, 1, 1)


# ---------------------------------------------------------------- entries


def test_a_clean_log_raises_nothing_whatever_the_batches() -> None:
    log = clean_log()
    for batch in (1, 7, 256, 10_000):
        follower = LogFollower()
        assert follow(follower, log, batch=batch) == []
        assert follower.confirmed is not None and follower.confirmed.size == len(log.entries) == 105
        assert follower.counts.readings == 100 and follower.counts.registry == 5


def test_a_tampered_reading_fails_its_device_signature() -> None:
    log = clean_log()
    index = 40
    log.entries[index] = tampered(log.entries[index], value=999_999)
    follower = LogFollower()
    problems = follow(follower, log)
    assert kinds(problems) == [ProblemKind.BAD_SIGNATURE] and problems[0].index == index
    assert problems[0].alarm and "does not verify" in str(problems[0])


def test_deferred_signatures_find_the_same_bad_reading() -> None:
    log = clean_log()
    log.entries[60] = tampered(log.entries[60], ts=1)
    follower = LogFollower()
    note = log.checkpoint()[1]
    cp = check_checkpoint(note, [make_verifier(ORIGIN, LEDGER.verify_key.encode())])
    assert isinstance(cp, Checkpoint)
    follower.observe(cp, note)
    assert follower.take(log.entries, defer_signatures=True) == []
    with pytest.raises(MonitorError):
        follower.to_json()  # never saved with signatures nobody checked
    checks = follower.take_unverified()
    assert len(checks) == 100 and follower.unverified == []
    assert [c.index for c in bad_signatures(checks)] == [60]


def test_a_reading_from_a_device_the_log_never_enrolled() -> None:
    log = clean_log()
    stranger = device_key("stranger")
    index = log.add(reading(stranger, "wm-d01-999999", 1))
    problems = follow(LogFollower(), log)
    assert kinds(problems) == [ProblemKind.UNKNOWN_DEVICE] and problems[0].index == index


def test_readings_before_a_revocation_stand_and_one_after_it_is_an_alarm() -> None:
    log = Log()
    (device, key), (other, other_key) = fleet(2)
    log.add(enrolment(device, key), enrolment(other, other_key))
    log.add(*(reading(key, device, s) for s in range(1, 6)))
    log.add(revocation(device, key), reading(other_key, other, 1))
    late = log.add(reading(key, device, 6))
    problems = follow(LogFollower(), log)
    assert kinds(problems) == [ProblemKind.REVOKED_DEVICE] and problems[0].index == late


def test_a_key_rotation_is_followed_by_seq_not_by_position() -> None:
    """Readings below from_seq verify under the old key even when the log holds them after the
    rotation (they waited in the device's outbox); from from_seq on, only the new key does."""
    log = Log()
    (device, old) = fleet(1)[0]
    new = device_key("the new key")
    log.add(enrolment(device, old))
    log.add(*(reading(old, device, s) for s in range(1, 9)))
    log.add(rotation(device, old, new, from_seq=11))
    log.add(reading(old, device, 9), reading(old, device, 10))  # signed before the rotation, sent after
    log.add(*(reading(new, device, s) for s in range(11, 15)))
    assert follow(LogFollower(), log) == []

    forged = log.add(reading(old, device, 15))  # the old key past from_seq
    early = log.add(reading(new, device, 3, value=1))  # the new key below from_seq (and seq 3 again)
    problems = follow(LogFollower(), log)
    assert [(p.kind, p.index) for p in problems] == [
        (ProblemKind.DUPLICATE_READING, early),
        (ProblemKind.BAD_SIGNATURE, forged),
    ]


def test_a_rotation_before_the_reading_in_log_order_counts_not_one_after() -> None:
    log = Log()
    (device, old) = fleet(1)[0]
    new = device_key("the new key")
    log.add(enrolment(device, old))
    early = log.add(reading(new, device, 1))  # the new key used before the log gave it
    log.add(rotation(device, old, new, from_seq=1))
    problems = follow(LogFollower(), log)
    assert [(p.kind, p.index) for p in problems] == [(ProblemKind.BAD_SIGNATURE, early)]


def test_a_reading_ledgered_twice_is_an_alarm() -> None:
    log = clean_log(devices=1, readings=3)
    device, key = fleet(1)[0]
    again = log.add(reading(key, device, 2))
    problems = follow(LogFollower(), log)
    assert [(p.kind, p.index) for p in problems] == [(ProblemKind.DUPLICATE_READING, again)]


@pytest.mark.parametrize(
    "leaf",
    [
        b"not json",
        b"[1,2,3]",
        b'{"entry":"device_enrolled", "device":"x"}',  # not canonical: a space
        b'{"device":"x","entry":"note"}'[::-1],
        b'{"entry":5}',
        b'{"entry":"bill_issued","amount":1.5}',  # no floats in the protocol
        b'{"a":1,"a":2,"entry":"x"}',  # duplicate members
        b'{"hello":"world"}',  # neither a reading nor an entry
    ],
)
def test_an_entry_that_is_not_canonical_json_of_a_reading_or_entry_is_an_alarm(leaf: bytes) -> None:
    log = clean_log(devices=1, readings=2)
    index = log.add(leaf)
    problems = follow(LogFollower(), log)
    assert [(p.kind, p.index) for p in problems] == [(ProblemKind.MALFORMED_ENTRY, index)]


def test_a_reading_spelled_in_another_member_order_is_an_alarm() -> None:
    log = clean_log(devices=1, readings=2)
    device, key = fleet(1)[0]
    obj = json.loads(reading(key, device, 3))
    index = log.add(json.dumps(dict(reversed(list(obj.items()))), separators=(",", ":")).encode())
    problems = follow(LogFollower(), log)
    assert [(p.kind, p.index) for p in problems] == [(ProblemKind.MALFORMED_ENTRY, index)]
    assert "canonical" in problems[0].detail


# ---------------------------------------------------------------- checkpoints


def test_the_log_growing_is_consistent_and_only_the_new_entries_are_read() -> None:
    log = clean_log()
    follower = LogFollower()
    assert follow(follower, log, size=50) == []
    device, key = fleet(1)[0]
    log.add(*(reading(key, device, s) for s in range(21, 31)))
    taken = follower.counts.entries
    assert follow(follower, log) == []
    assert follower.counts.entries - taken == len(log.entries) - 50
    assert follower.confirmed is not None and follower.confirmed.size == len(log.entries)


def test_a_smaller_checkpoint_is_a_rollback_with_both_notes_as_evidence() -> None:
    log = clean_log()
    follower = LogFollower()
    assert follow(follower, log) == []
    cp, note = log.checkpoint(80)
    problems = follower.observe(cp, note)
    assert kinds(problems) == [ProblemKind.ROLLBACK] and problems[0].alarm
    assert problems[0].evidence == (log.checkpoint()[1].decode(), note.decode())


def test_a_second_root_for_the_same_size_is_a_split_view() -> None:
    log = clean_log()
    follower = LogFollower()
    assert follow(follower, log) == []
    fork = Log(list(log.entries))
    fork.entries[-1] = reading(device_key("wm-d01-000004"), "wm-d01-000004", 20, value=7)
    problems = follower.observe(*fork.checkpoint())
    assert kinds(problems) == [ProblemKind.SPLIT_VIEW]
    assert follower.observe(*log.checkpoint()) == []  # the same checkpoint again is nothing new


def test_a_new_checkpoint_whose_entries_do_not_give_its_root_is_inconsistent() -> None:
    log = clean_log()
    follower = LogFollower()
    assert follow(follower, log, size=60) == []
    fork = Log(log.entries[:60] + [enrolment("wm-d01-777777", device_key("x"))] + log.entries[61:])
    assert follower.observe(*fork.checkpoint()) == []  # signed and larger: a target, not yet judged
    problems = follower.take(log.entries[60:])  # what the log serves is not what it signed
    assert kinds(problems) == [ProblemKind.INCONSISTENT]
    assert follower.confirmed is not None and follower.confirmed.size == 60


def test_several_checkpoints_seen_before_reading_are_each_checked_on_the_way() -> None:
    log = clean_log()
    follower = LogFollower()
    bad = Checkpoint(ORIGIN, 30, bytes(32))  # signed by the ledger, but no log of these entries has that root
    assert follower.observe(bad, signed_checkpoint(bad, [LEDGER]).encode()) == []
    assert follower.observe(*log.checkpoint(70)) == []
    assert kinds(follower.observe(*log.checkpoint(50))) == [ProblemKind.ROLLBACK]  # smaller than 70, signed before
    problems = follower.take(log.entries[:70])
    assert kinds(problems) == [ProblemKind.INCONSISTENT] and "size 30" in problems[0].detail
    assert follower.confirmed is not None and follower.confirmed.size == 70


def test_entries_past_the_largest_signed_checkpoint_are_refused() -> None:
    log = clean_log()
    follower = LogFollower()
    follower.observe(*log.checkpoint(10))
    with pytest.raises(MonitorError):
        follower.take(log.entries[:11])


def test_checkpoints_the_monitor_cannot_authenticate_are_faults_not_alarms() -> None:
    log = clean_log()
    _, note = log.checkpoint()
    trusted = [make_verifier(ORIGIN, LEDGER.verify_key.encode())]
    other = signed_checkpoint(log.checkpoint()[0], [SigningKey(bytes(32))]).encode()
    broken = note.replace(b"\n\n\xe2\x80\x94 " + ORIGIN.encode() + b" ", b"\n\n\xe2\x80\x94 " + ORIGIN.encode() + b" A")
    cases = {
        b"<html>502 bad gateway</html>": ProblemKind.UNVERIFIED_CHECKPOINT,
        other: ProblemKind.UNVERIFIED_CHECKPOINT,  # signed by a key nobody trusts
        broken: ProblemKind.UNVERIFIED_CHECKPOINT,
        Log(origin="elsewhere.example/log").checkpoint(0)[1]: ProblemKind.WRONG_ORIGIN,
    }
    for data, kind in cases.items():
        result = check_checkpoint(data, trusted)
        assert isinstance(result, Problem) and result.kind == kind and not result.alarm, (data, result)
    tampered_sig = bytearray(note)
    tampered_sig[-10] ^= 1  # inside the base64 of the trusted key's signature
    result = check_checkpoint(bytes(tampered_sig), trusted)
    assert isinstance(result, Problem) and not result.alarm


def test_the_first_checkpoint_of_an_empty_log_is_confirmed_at_once() -> None:
    follower = LogFollower()
    assert follow(follower, Log()) == []
    assert follower.confirmed is not None and follower.confirmed.size == 0


def test_a_ledger_key_rotation_in_the_log_hands_trust_to_the_new_key() -> None:
    new_ledger = SigningKey(hashlib.sha256(b"next ledger key").digest())
    log = clean_log(devices=2, readings=3)
    old_hex, new_hex = LEDGER.verify_key.encode().hex(), new_ledger.verify_key.encode().hex()
    log.add(canonical_json({"entry": "ledger_key_rotated", "old_key": old_hex, "new_key": new_hex, "at": T0}))
    follower = LogFollower()
    follower.trust(LEDGER.verify_key.encode())
    cp, note = log.checkpoint(keys=[LEDGER, new_ledger])  # the rotating block's checkpoint: both keys
    assert check_checkpoint(note, follower.verifiers(ORIGIN)) == cp
    follower.observe(cp, note)
    assert follower.take(log.entries) == []
    assert follower.ledger_keys == [old_hex, new_hex]
    log.add(reading(device_key("wm-d01-000000"), "wm-d01-000000", 4))
    later = log.checkpoint(keys=[new_ledger])[1]  # later checkpoints: the new key's only
    assert check_checkpoint(later, follower.verifiers(ORIGIN)) == log.checkpoint()[0]
    assert isinstance(check_checkpoint(later, [make_verifier(ORIGIN, LEDGER.verify_key.encode())]), Problem)


def test_a_rotation_entry_from_an_untrusted_key_hands_nothing_over() -> None:
    log = clean_log(devices=1, readings=1)
    mallory = SigningKey(bytes(range(32)))
    log.add(
        canonical_json(
            {"entry": "ledger_key_rotated", "old_key": "ab" * 32, "new_key": mallory.verify_key.encode().hex()}
        )
    )
    follower = LogFollower()
    follower.trust(LEDGER.verify_key.encode())
    assert follow(follower, log) == []
    assert follower.ledger_keys == [LEDGER.verify_key.encode().hex()]


# ---------------------------------------------------------------- state


def test_the_state_survives_json_and_the_follower_resumes_where_it_stopped() -> None:
    log = clean_log(devices=4, readings=30)
    device, key = fleet(1)[0]
    log.add(revocation(device, key))
    whole = LogFollower()
    assert follow(whole, log) == []

    half = LogFollower()
    half.trust(LEDGER.verify_key.encode())
    whole.ledger_keys = list(half.ledger_keys)
    note = log.checkpoint()[1]
    cp = check_checkpoint(note, half.verifiers(ORIGIN))
    assert isinstance(cp, Checkpoint)
    half.observe(cp, note)
    half.take(log.entries[:57])  # a round cut short by the network, mid-range
    resumed = LogFollower.from_json(half.to_json())
    assert resumed.to_json() == half.to_json()
    assert resumed.size == 57 and resumed.target == len(log.entries) and not resumed.caught_up
    assert resumed.take(log.entries[57:]) == []
    assert resumed.to_json() == whole.to_json()

    late = log.add(reading(key, device, 31))
    problems = follow(LogFollower.from_json(resumed.to_json()), log)
    assert [(p.kind, p.index) for p in problems] == [(ProblemKind.REVOKED_DEVICE, late)]


@pytest.mark.parametrize(
    "text",
    ["", "[]", '{"version":1}', '{"version":2}', "not json"],
)
def test_a_damaged_state_is_refused(text: str) -> None:
    with pytest.raises(MonitorError):
        LogFollower.from_json(text)


def test_a_state_with_a_wrong_member_is_refused() -> None:
    follower = LogFollower()
    follow(follower, clean_log())
    obj = json.loads(follower.to_json())
    obj["device_keys"]["wm-d01-000000"][0][0] = "zz"
    with pytest.raises(MonitorError):
        LogFollower.from_json(json.dumps(obj))
    obj = json.loads(follower.to_json())
    obj["range"]["size"] += 2  # 107 leaves need 5 right-edge hashes, not 4
    with pytest.raises(MonitorError):
        LogFollower.from_json(json.dumps(obj))
    obj = json.loads(follower.to_json())
    obj["confirmed"]["size"] += 10  # confirmed past what it read
    with pytest.raises(MonitorError):
        LogFollower.from_json(json.dumps(obj))
