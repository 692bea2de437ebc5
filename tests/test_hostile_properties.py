"""Hostile input against the parse-validate-verify path, as properties (pure: no broker, no database).

`Intake.classify` is PROTOCOL.md section 3 as a function. Here it is fed whatever
hypothesis can make: arbitrary bytes on arbitrary topics, and mutations of a valid
signed reading at the byte and at the JSON level. Whatever arrives, every message
ends in exactly one outcome, every reject is counted (even past the quarantine
cap), and nothing but the original reading is ever ledgered.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain.protocol import (
    FUTURE_TOLERANCE_MS,
    MAX_PAYLOAD_BYTES,
    QUARANTINE_RAW_LIMIT,
    Reading,
    Reason,
    device_topic,
    parse_topic,
    sign_reading,
    verify_reading,
)
from ledger.chain.records import Batch, DeviceRecord
from ledger.ingest.intake import Incoming, Intake, QuarantineCap, SeqState

NOW = 1_764_000_000_000
REASONS = {r.value for r in Reason}
GENEROUS = 10**9  # a cap that never drops a row: every reject is stored, so each can be traced to its message
TIGHT = 2  # a cap that drops most rows: only the counts are left


def _device(n: int, device: str, kind: str, district: str, status: str = "active") -> tuple[DeviceRecord, SigningKey]:
    key = SigningKey(bytes([n]) * 32)
    rec = DeviceRecord(
        device, kind, district, None, key.verify_key.encode().hex(), status, "-", 0, None if status == "active" else 1
    )
    return rec, key


A, KEY_A = _device(1, "wm-d01-000001", "water", "d01")
B, KEY_B = _device(2, "gm-d02-000001", "gas", "d02")
P, KEY_P = _device(3, "ps-d03-000001", "parking", "d03")
R, KEY_R = _device(4, "em-d01-000009", "electricity", "d01", status="revoked")
REGISTRY = {d.device: d for d in (A, B, P, R)}
KEYS = {A.device: KEY_A, B.device: KEY_B, P.device: KEY_P, R.device: KEY_R}
STRANGER = SigningKey(bytes([9]) * 32)  # a key nobody enrolled
NOBODY, _ = _device(9, "wm-d09-000001", "water", "d09")  # well-formed, never enrolled (not in REGISTRY)
KEYS[NOBODY.device] = STRANGER
EVERYONE = {**REGISTRY, NOBODY.device: NOBODY}


def topic(rec: DeviceRecord, leaf: str = "reading") -> str:
    return device_topic(rec.district, rec.kind, rec.device, leaf)


def sign(rec: DeviceRecord, seq: int, value: int, ts: int = NOW - 1_000, key: SigningKey | None = None) -> Reading:
    return sign_reading(key or KEYS[rec.device], device=rec.device, kind=rec.kind, seq=seq, ts=ts, value=value)


# What is already ledgered before each example: A has 1 and 2, B has 1 and 3 (a gap at 2).
LEDGERED = [sign(A, 1, 100), sign(A, 2, 200), sign(B, 1, 5), sign(B, 3, 7)]
# The reading every mutation starts from: A's next seq, not yet ledgered.
ORIGINAL = sign(A, 3, 12345)

TOPICS = [
    topic(A),
    topic(B),
    topic(P),
    topic(R),
    topic(A, "status"),
    topic(B, "status"),
    topic(A, "ack"),
    device_topic("d09", "water", "wm-d09-000001", "reading"),  # NOBODY's: well-formed, nobody enrolled
    "city/witness/w1/alarm",
    "city/witness/w1/head",
    "city/witness/w1",
    "city/witness/w1/other/x",
    "city/d01/water/wm-d01-000001",
    "city/d01/water/wm-d01-000001/reading/extra",
    "CITY/d01/water/x/reading",
    "",
    "/",
    "#",
    "city/+/+/+/reading",
    "city/d01/water/../reading",
    "city/d01/water/wm d01/reading",
    "\x00",
    "city/d01/water/wm-d01-000001\\xff/reading",
]


class FakeLedger:
    """The `lookup` of already-ledgered readings; `add` is what the writer's commit does."""

    def __init__(self, rows: Iterable[Reading] = ()) -> None:
        self.rows: dict[tuple[str, int], tuple[int, int, str]] = {}
        self.add(rows)

    def add(self, rows: Iterable[Reading]) -> None:
        for r in rows:
            self.rows[(r.device, r.seq)] = (r.ts, r.value, r.sig)

    def __call__(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int, str]]:
        return {k: self.rows[k] for k in keys if k in self.rows}


def make_intake(ledgered: Sequence[Reading] = LEDGERED, cap: int = GENEROUS) -> tuple[Intake, FakeLedger]:
    seqs: dict[str, SeqState] = {}
    for r in ledgered:
        seqs.setdefault(r.device, SeqState()).add(r.seq)
    ledger = FakeLedger(ledgered)
    return Intake(seqs, ledger, QuarantineCap(per_hour=cap)), ledger


def run(intake: Intake, ledger: FakeLedger, messages: Sequence[Incoming]) -> Batch:
    """Classify one batch as ingest does, then "commit" its readings so later batches see them."""
    batch = intake.classify(messages, REGISTRY, NOW)
    ledger.add(r.reading for r in batch.readings)
    return batch


def incoming(pairs: Sequence[tuple[str, bytes]]) -> list[Incoming]:
    """Messages with distinct receive times (within one minute), so each outcome names its message."""
    return [Incoming(t, p, NOW + i) for i, (t, p) in enumerate(pairs)]


def outcomes(batch: Batch) -> dict[int, list[tuple[Any, ...]]]:
    """Each outcome keyed by its message's receive time."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for r in batch.readings:
        out.setdefault(r.received_at, []).append(("ledgered", r.reading.leaf_data()))
    for device, seq, at in batch.duplicates:
        out.setdefault(at, []).append(("duplicate", device, seq))
    for device, status, at in batch.statuses:
        out.setdefault(at, []).append(("status", device, status))
    for witness, kind, body, at in batch.witness_reports:
        out.setdefault(at, []).append(("witness", witness, kind, body))
    for q in batch.quarantine:
        out.setdefault(q.received_at, []).append(("quarantine", q.reason, q.device, q.topic))
    return out


def settled(batch: Batch) -> int:
    """Messages the batch accounts for: every reject and duplicate counts, stored or not."""
    return (
        len(batch.readings)
        + sum(batch.duplicate_counts.values())
        + len(batch.statuses)
        + len(batch.witness_reports)
        + sum(batch.rejects.values())
    )


def check_every_message_has_exactly_one_outcome(messages: Sequence[Incoming]) -> Batch:
    """The invariants of PROTOCOL.md section 3 for one batch; returns the batch (generous cap)."""
    full = run(*make_intake(cap=GENEROUS), messages)
    capped = run(*make_intake(cap=TIGHT), messages)

    # Exactly one outcome per message, traceable by receive time when nothing is dropped.
    traced = outcomes(full)
    assert sorted(traced) == sorted(m.received_at for m in messages)
    assert all(len(v) == 1 for v in traced.values()), traced
    assert settled(full) == len(messages)
    assert sum(full.rejects.values()) == len(full.quarantine)

    # Past the cap, rows are dropped but every reject is still counted, the same way.
    assert settled(capped) == len(messages)
    assert capped.rejects == full.rejects
    per_sender = Counter(q.device or "?" for q in capped.quarantine)
    assert all(n <= TIGHT for n in per_sender.values()), per_sender
    assert {q.received_at for q in capped.quarantine} <= {q.received_at for q in full.quarantine}

    by_time = {m.received_at: m for m in messages}
    for q in full.quarantine:
        msg = by_time[q.received_at]
        assert q.reason in REASONS
        assert q.topic == msg.topic and q.payload == msg.payload[:QUARANTINE_RAW_LIMIT]
        parsed = parse_topic(msg.topic)
        if parsed is not None:  # attributed to the sender the broker vouches for, not to a claim
            assert q.device == parsed.device
    assert all(reason in REASONS for _, _, reason in full.rejects)

    # Whatever is ledgered is authentic, arrived on its own device's reading topic, is not from
    # the future, and takes a seq nobody holds yet.
    for r in full.readings:
        msg = by_time[r.received_at]
        rec = REGISTRY[r.reading.device]
        assert rec.status == "active" and msg.topic == topic(rec)
        assert verify_reading(KEYS[rec.device].verify_key, r.reading)
        assert len(msg.payload) <= MAX_PAYLOAD_BYTES and r.reading.ts <= NOW + FUTURE_TOLERANCE_MS
    keys = [(r.reading.device, r.reading.seq) for r in full.readings]
    assert len(set(keys)) == len(keys) and not set(keys) & {(r.device, r.seq) for r in LEDGERED}
    return full


# ---------------------------------------------------------------- payload strategies


def _json_text(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity spelt as JavaScript does, which JSON is not


_SCALAR_TEXTS = st.one_of(
    st.none().map(_json_text),
    st.booleans().map(_json_text),
    st.integers(min_value=-(2**70), max_value=2**70).map(_json_text),
    st.sampled_from(
        [
            str(2**63),
            str(2**63 - 1),
            str(2**64),
            "-1",
            "-0",
            str(10**400),
            "1.0",
            "1e3",
            "-1E-2",
            "NaN",
            "Infinity",
            "-Infinity",
            "01",
            "+1",
            "0x10",
            '"3"',
            '""',
            "[]",
            "{}",
            "[3]",
            '{"x":3}',
            "null",
            "true",
            "false",
            '"' + "A" * 88 + '"',
            '"' + "=" * 88 + '"',
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(_json_text),
    st.text(max_size=20).map(_json_text),
)
_ANY_VALUE_TEXT = st.recursive(
    _SCALAR_TEXTS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.text(max_size=5), inner), max_size=3).map(
            lambda kvs: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kvs) + "}"
        ),
    ),
    max_leaves=6,
)
_MEMBERS = list(ORIGINAL.as_dict())
_WHITESPACE = st.text(alphabet=" \t\n\r", max_size=3)


def _escape_some(s: str, which: list[bool]) -> str:
    """A JSON string literal of `s` with some characters spelt as \\uXXXX (or \\/): the same string."""
    out = []
    for i, ch in enumerate(s):
        if i < len(which) and which[i]:
            out.append("\\/" if ch == "/" else f"\\u{ord(ch):04x}")
        else:
            out.append(json.dumps(ch)[1:-1])
    return '"' + "".join(out) + '"'


def _other_sigs() -> st.SearchStrategy[str]:
    """Signatures that are not ORIGINAL's: other readings', random bytes', non-canonical spellings."""
    good = base64.b64decode(ORIGINAL.sig)
    return st.one_of(
        st.binary(min_size=64, max_size=64).map(lambda b: base64.b64encode(b).decode()),
        st.just(sign(A, 3, 12346).sig),  # a real signature of other contents
        st.just(sign(A, 3, 12345, key=STRANGER).sig),  # the same contents signed by a key nobody enrolled
        st.just(base64.b64encode(good).decode().rstrip("=")),  # unpadded
        st.just(base64.urlsafe_b64encode(good).decode()),  # the URL alphabet
        st.just(base64.b64encode(good)[:-3].decode() + "B=="),  # same length, non-zero padding bits
        st.just(base64.b64encode(good + b"\0").decode()),  # 65 bytes
    )


@st.composite
def json_mutants(draw: st.DrawFn) -> bytes:
    """ORIGINAL respelt (whitespace, member order, escapes: the same reading) and then, maybe, changed."""
    members: list[tuple[str, str]] = [(json.dumps(k), json.dumps(v)) for k, v in ORIGINAL.as_dict().items()]
    ops = draw(
        st.lists(
            st.sampled_from(["retype", "drop", "add", "duplicate", "nest", "resig", "respell_key", "respell_value"]),
            max_size=3,
        )
    )
    for op in ops:
        i = draw(st.integers(0, max(0, len(members) - 1)))
        if not members and op != "add":
            continue
        if op == "retype":
            members[i] = (members[i][0], draw(_ANY_VALUE_TEXT))
        elif op == "drop":
            del members[i]
        elif op == "add":
            name = draw(st.one_of(st.sampled_from(["extra", "Seq", "SEQ", "sig ", "v2", ""]), st.text(max_size=8)))
            members.insert(i, (json.dumps(name), draw(_ANY_VALUE_TEXT)))
        elif op == "duplicate":  # the same member twice, with its own value or another one
            key = members[i][0]
            value = draw(st.one_of(st.just(members[i][1]), _ANY_VALUE_TEXT))
            members.insert(draw(st.integers(0, len(members))), (key, value))
        elif op == "nest":
            key, value = members[i]
            members[i] = (key, draw(st.sampled_from([f"[{value}]", f'{{"value":{value}}}', f"[[{value}]]"])))
        elif op == "resig":
            members = [(k, json.dumps(draw(_other_sigs())) if k == '"sig"' else v) for k, v in members]
        elif op == "respell_key":  # "s\u0065q" is "seq": a respelling, or a hidden duplicate with "duplicate"
            name = json.loads(members[i][0])
            members[i] = (_escape_some(name, draw(st.lists(st.booleans(), max_size=len(name)))), members[i][1])
        elif op == "respell_value":
            try:
                value = json.loads(members[i][1])
            except ValueError:
                continue
            if isinstance(value, str):
                members[i] = (members[i][0], _escape_some(value, draw(st.lists(st.booleans(), max_size=len(value)))))
    members = draw(st.permutations(members))
    ws = draw(st.lists(_WHITESPACE, min_size=4 * len(members) + 2, max_size=4 * len(members) + 2))
    body = ",".join(
        f"{ws[4 * n]}{k}{ws[4 * n + 1]}:{ws[4 * n + 2]}{v}{ws[4 * n + 3]}" for n, (k, v) in enumerate(members)
    )
    text = ws[-2] + "{" + body + "}" + ws[-1]
    wrap = draw(st.sampled_from(["", "", "", "", "list", "object", "deep"]))
    if wrap == "list":
        text = f"[{text}]"
    elif wrap == "object":
        text = f'{{"reading":{text}}}'
    elif wrap == "deep":
        depth = draw(st.integers(1, 600))
        text = "[" * depth + text + "]" * depth
    return text.encode()


@st.composite
def byte_mutants(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """Byte flips, insertions and deletions on a payload."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


RESIGNED = _other_sigs().map(lambda sig: ORIGINAL.payload().replace(ORIGINAL.sig.encode(), sig.encode()))
MUTANTS = st.one_of(json_mutants(), RESIGNED, byte_mutants(st.just(ORIGINAL.payload())), byte_mutants(json_mutants()))


@st.composite
def signed_readings(draw: st.DrawFn) -> bytes:
    """Readings that are valid somewhere: enrolled or not, revoked, future, fresh or a ledgered seq."""
    rec = draw(st.sampled_from([A, B, P, R, NOBODY]))
    value = draw(st.integers(0, 1)) if rec.kind == "parking" else draw(st.sampled_from([0, 1, 7, 2**63 - 1]))
    ts = draw(st.sampled_from([NOW - 1_000, NOW, NOW + FUTURE_TOLERANCE_MS, NOW + FUTURE_TOLERANCE_MS + 1]))
    reading = sign(rec, draw(st.integers(1, 5)), value, ts)
    how = draw(st.sampled_from(["as is", "as is", "forged", "stranger", "ledgered copy"]))
    if how == "forged":
        reading = reading.model_copy(update={"value": 1 - value if rec.kind == "parking" else value + 1})
    elif how == "stranger":
        reading = sign(rec, reading.seq, value, ts, key=STRANGER)
    elif how == "ledgered copy":
        reading = draw(st.sampled_from(LEDGERED))
    return reading.payload()


PAYLOADS = st.one_of(
    st.binary(max_size=1_500),
    st.sampled_from([b"online", b"offline", b"", b"{}", b"[]", b"null", b"x" * (MAX_PAYLOAD_BYTES + 1)]),
    MUTANTS,
    signed_readings(),
)
TOPIC_NAMES = st.one_of(st.sampled_from(TOPICS), st.text(max_size=40))
# A signed reading on the reading topic of the device it names (which may be revoked).
ON_OWN_TOPIC = signed_readings().map(lambda p: (topic(EVERYONE[json.loads(p)["device"]]), p))
MESSAGES = st.lists(
    st.one_of(st.tuples(TOPIC_NAMES, PAYLOADS), ON_OWN_TOPIC, st.tuples(st.just(topic(A)), MUTANTS)),
    min_size=1,
    max_size=12,
)


# ---------------------------------------------------------------- the properties


def means_original(payload: bytes) -> bool:
    """The payload is a JSON object with exactly ORIGINAL's members and values (types included).

    The spec's notion of "the same reading", decided without parse_reading: unambiguous
    JSON (no duplicate members, no floats, no NaN), decoded, compared member by member.
    """

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise ValueError("duplicate member")
        return dict(items)

    def refuse(text: str) -> Any:
        raise ValueError(text)

    try:
        obj = json.loads(payload.decode("utf-8"), object_pairs_hook=pairs, parse_float=refuse, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    want = ORIGINAL.as_dict()
    return (
        type(obj) is dict
        and obj.keys() == want.keys()
        and all(type(obj[k]) is type(want[k]) and obj[k] == want[k] for k in want)
    )


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES)
@example(
    [
        (topic(A), b"\xff\xfe"),
        (topic(A, "status"), b"online"),
        ("city/witness/w1/alarm", b"fork at 7"),
        (topic(A), ORIGINAL.payload()),
        (topic(A), ORIGINAL.payload()),
        ("nonsense", b"{}"),
    ]
)
@example(
    [
        (topic(A), b"[" * 5_000 + b"]" * 5_000),
        (topic(A), b"[" * 500 + b"]" * 500),
        (topic(A), b"[" * MAX_PAYLOAD_BYTES),
        (topic(A), b'{"a":' * 204),
    ]
    * 3
)  # deeper than the recursion limit
def test_any_bytes_on_any_topic_end_in_exactly_one_outcome(pairs: list[tuple[str, bytes]]) -> None:
    check_every_message_has_exactly_one_outcome(incoming(pairs))


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=MUTANTS, on_topic=st.one_of(st.just(topic(A)), st.sampled_from(TOPICS)), already_ledgered=st.booleans())
@example(payload=ORIGINAL.payload().replace(b",", b" ,\n\t"), on_topic=topic(A), already_ledgered=False)
@example(payload=ORIGINAL.payload().replace(b'"seq":3', b'"seq":3.0'), on_topic=topic(A), already_ledgered=False)
@example(payload=ORIGINAL.payload().replace(b'"seq":3', b'"seq":3,"seq":3'), on_topic=topic(A), already_ledgered=False)
@example(
    payload=ORIGINAL.payload().replace(b'"seq":3', b'"s\\u0065q":3,"seq":3'), on_topic=topic(A), already_ledgered=True
)
@example(
    payload=ORIGINAL.payload().replace(b'"value":12345', b'"value":NaN'), on_topic=topic(A), already_ledgered=False
)
@example(payload=ORIGINAL.payload().replace(b'"device"', b'"device\\u0000"'), on_topic=topic(A), already_ledgered=False)
@example(payload=ORIGINAL.payload().replace(b"/", b"\\/"), on_topic=topic(A), already_ledgered=True)
def test_a_mutated_reading_is_ledgered_only_if_it_means_the_original(
    payload: bytes,
    on_topic: str,
    already_ledgered: bool,
) -> None:
    ledgered = [*LEDGERED, ORIGINAL] if already_ledgered else LEDGERED
    intake, ledger = make_intake(ledgered)
    msg = Incoming(on_topic, payload, NOW)
    batch = run(intake, ledger, [msg])
    assert settled(batch) == 1
    assert all(q.reason in REASONS for q in batch.quarantine)
    check_every_message_has_exactly_one_outcome([msg])  # and again, under both caps

    same = len(payload) <= MAX_PAYLOAD_BYTES and means_original(payload) and on_topic == topic(A)
    if same and not already_ledgered:
        assert [r.reading for r in batch.readings] == [ORIGINAL]
        assert batch.readings[0].reading.leaf_data() == ORIGINAL.leaf_data()
    elif same:
        assert batch.duplicates == [(A.device, ORIGINAL.seq, NOW)] and not batch.readings
    else:
        assert not batch.readings and not batch.duplicates, (payload, batch)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Incoming], list[int]]:
    """A message sequence with many seq collisions, and where to cut it into batches (at least once)."""
    one = st.one_of(
        ON_OWN_TOPIC, ON_OWN_TOPIC, st.tuples(st.just(topic(A)), MUTANTS), st.tuples(st.sampled_from(TOPICS), PAYLOADS)
    )
    pairs = draw(st.lists(one, min_size=1, max_size=25))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(pairs) - 1)), min_size=1, max_size=5)))
    return incoming(pairs), cuts


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_batching_does_not_change_any_outcome(case: tuple[list[Incoming], list[int]]) -> None:
    messages, cuts = case
    for cap in (GENEROUS, TIGHT):
        whole_intake, whole_ledger = make_intake(cap=cap)
        whole = run(whole_intake, whole_ledger, messages)

        split_intake, split_ledger = make_intake(cap=cap)
        parts = [run(split_intake, split_ledger, messages[a:b]) for a, b in zip([0, *cuts], [*cuts, len(messages)])]

        def merged(batches: list[Batch]) -> dict[int, list[tuple[Any, ...]]]:
            out: dict[int, list[tuple[Any, ...]]] = {}
            for b in batches:
                for at, o in outcomes(b).items():
                    out.setdefault(at, []).extend(o)
            return out

        rejects: Counter[tuple[str, int, str]] = Counter()
        for part in parts:
            rejects.update(part.rejects)
        assert rejects == Counter(whole.rejects)
        assert sum(settled(p) for p in parts) == settled(whole) == len(messages)
        assert whole_ledger.rows == split_ledger.rows
        assert {d: (s.hwm, s.above) for d, s in whole_intake.seqs.items()} == {
            d: (s.hwm, s.above) for d, s in split_intake.seqs.items()
        }
        if cap == GENEROUS:  # every message, the very same outcome
            assert merged(parts) == outcomes(whole)
        else:  # the cap stores as many rows per sender either way (which ones may differ)
            assert Counter(q.device or "?" for p in parts for q in p.quarantine) == Counter(
                q.device or "?" for q in whole.quarantine
            )
