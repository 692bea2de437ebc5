"""The SQL audit (ledger/store/sqlaudit.py) against the Python audit it speeds up.

Both must agree hash for hash (PROTOCOL.md section 6 vector included), root for root,
and report for report on intact and tampered DuckDB ledgers built through the real
writer. Timing is measured in bench/proofs.py, never here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from ledger.chain import merkle
from ledger.chain.audit import DUPLICATE, Failure, Report, audit
from ledger.chain.protocol import Reading, parse_reading, sign_reading, signature_bytes
from ledger.chain.records import Batch, LedgeredReading
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.writer import LedgerWriter
from ledger.store import registry_check, sqlaudit
from ledger.store.store import Store, _reading_or_none
from tests.support.ledgers import T0, Growing
from tests.test_protocol import LEAF_HASH, PAYLOAD

DEVICES = {  # device ids at the edges of the pattern, one of each kind
    "wm-d01-000001": "water",
    "ps.d01_000002": "parking",
    "E" * 64: "electricity",
    "g": "gas",
}
REVOKED = "g"


# --------------------------------------------------------------------------- ledgers


Ledger = Growing


def build(root: Path) -> Ledger:
    """Blocks of 1..70 readings, a block mixing an entry that needs JSON escaping with
    readings, a ledger key rotation, a device key rotation and a revocation."""
    home = Home(root)
    info = initialize(home)
    writer = LedgerWriter.open(home)
    try:
        keys = {}
        for device, kind in DEVICES.items():
            keys[device] = SigningKey.generate()
            writer.enroll_device(device, kind, "d01", keys[device].verify_key.encode().hex())
        ledger = Ledger(home, info["ledger_key"], keys, dict.fromkeys(keys, 0), DEVICES, value_base=10**15)
        for size in range(1, 71):
            writer.commit(Batch(readings=ledger.readings(size)))
        writer.commit(
            Batch(readings=ledger.readings(5)), [{"entry": "note", "text": 'café "quoted" \\ back\nslash ✓ \u0001'}]
        )
        writer.rotate_ledger_key()
        for size in (3, 64, 65):
            writer.commit(Batch(readings=ledger.readings(size)))
        rotated = SigningKey.generate()
        writer.rotate_device_key(
            "wm-d01-000001", rotated.verify_key.encode().hex(), ledger.seqs["wm-d01-000001"] + 1, "op-test"
        )
        keys["wm-d01-000001"] = rotated
        writer.commit(Batch(readings=ledger.readings(9)))
        writer.revoke_device(REVOKED, "op-test")
        writer.commit(Batch(readings=ledger.readings(12, [d for d in keys if d != REVOKED])))
    finally:
        writer.close()
    return ledger


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    return build(tmp_path_factory.mktemp("sqlaudit") / "home")


@pytest.fixture
def ledger(pristine: Ledger, tmp_path: Path) -> Ledger:
    """A copy of the module's ledger to tamper with."""
    return pristine.copy(tmp_path / "home")


@pytest.fixture(params=[sqlaudit.BATCH_LEAVES, 40], ids=["default-batches", "small-batches"])
def batch_leaves(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Also run with ranges of a few blocks, so checks cross range boundaries and pipelining."""
    monkeypatch.setattr(sqlaudit, "BATCH_LEAVES", request.param)
    return request.param


def sql(ledger: Ledger, statement: str, *args: object) -> list[tuple]:
    con = duckdb.connect(str(ledger.home.database))
    try:
        return con.execute(statement, list(args)).fetchall()
    finally:
        con.close()


def both(ledger: Ledger) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SQL audit, Python audit) reports, without the timing."""
    key = VerifyKey(bytes.fromhex(ledger.first_key))
    store = Store.open(ledger.home.database, read_only=True)
    try:
        fast = sqlaudit.audit_store(store, key).as_dict()
        slow = audit(store.iter_blocks(), store.leaves, key).as_dict()
    finally:
        store.close()
    for report in (fast, slow):
        report.pop("seconds")
    return fast, slow


def where(ledger: Ledger, device: str, seq: int) -> tuple[int, int]:
    return sql(ledger, "SELECT height, idx FROM readings WHERE device = ? AND seq = ?", device, seq)[0]


# --------------------------------------------------------------------------- leaf hashes


def reading_row(r: Reading, height: int = 0, idx: int = 0) -> list[object]:
    return [height, idx, r.device, r.kind, r.seq, r.ts, r.value, signature_bytes(r.sig), r.ts]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A real ledger file with the project's schema and no blocks."""
    store = Store.open(tmp_path / "ledger.duckdb")
    yield store.con
    store.close()


def test_protocol_vector_leaf_hash_in_sql(db: duckdb.DuckDBPyConnection) -> None:
    r = parse_reading(PAYLOAD)
    assert isinstance(r, Reading)
    db.execute("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", reading_row(r))
    heights, idx, ok, packed = sqlaudit.reading_leaf_hashes(db, 0, 0)
    assert list(heights) == [0] and list(idx) == [0] and list(ok) == [1]
    assert packed.hex() == LEAF_HASH == merkle.leaf_hash(r.leaf_data()).hex()


def edge_readings() -> list[Reading]:
    key = SigningKey.generate()
    cases = [
        ("a", "water", 1, 0, 0),
        ("Z" * 64, "gas", 2**63 - 1, 2**63 - 1, 2**63 - 1),
        ("p.k_-9", "parking", 5, 1, 1),
        ("p.k_-9", "parking", 6, 2, 0),
        ("e-1", "electricity", 10**12, T0, 7),
    ]
    return [sign_reading(key, device=d, kind=k, seq=s, ts=t, value=v) for d, k, s, t, v in cases] + [
        sign_reading(key, device=f"wm-{i}", kind="water", seq=i + 1, ts=T0 + i, value=i) for i in range(200)
    ]


def test_sql_leaf_hashes_equal_python_ones(db: duckdb.DuckDBPyConnection) -> None:
    readings = edge_readings()
    for i, r in enumerate(readings):
        db.execute("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", reading_row(r, 3, i))
    heights, idx, ok, packed = sqlaudit.reading_leaf_hashes(db, 3, 3, ordered=True)
    assert list(idx) == list(range(len(readings))) and all(ok)
    assert [packed[i * 32 : (i + 1) * 32] for i in range(len(readings))] == [
        merkle.leaf_hash(r.leaf_data()) for r in readings
    ]


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    store = Store.open(tmp_path_factory.mktemp("hashes") / "ledger.duckdb")
    yield store.con
    store.close()


readings_strategy = st.lists(
    st.builds(
        lambda device, kind, seq, ts, value, sig: Reading(
            v=1,
            device=device,
            kind=kind,
            seq=seq,
            ts=ts,
            value=value % 2 if kind == "parking" else value,
            sig=base64.b64encode(sig).decode(),
        ),
        device=st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z"),
        kind=st.sampled_from(["water", "gas", "electricity", "parking"]),
        seq=st.integers(1, 2**63 - 1),
        ts=st.integers(0, 2**63 - 1),
        value=st.integers(0, 2**63 - 1),
        sig=st.binary(min_size=64, max_size=64),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(readings=readings_strategy)
def test_sql_leaf_hashes_equal_python_ones_for_any_reading(
    shared_db: duckdb.DuckDBPyConnection, readings: list[Reading]
) -> None:
    shared_db.execute("DELETE FROM readings")
    for i, r in enumerate(readings):
        shared_db.execute("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", reading_row(r, 1, i))
    _, idx, ok, packed = sqlaudit.reading_leaf_hashes(shared_db, 1, 1, ordered=True)
    assert list(idx) == list(range(len(readings))) and all(ok)
    assert packed == b"".join(merkle.leaf_hash(r.leaf_data()) for r in readings)


GOOD = ["wm-d01-000001", "water", 1, 0, 0, bytes(64)]


@pytest.mark.parametrize(
    "column, value",
    [
        (0, "wm d01"),
        (0, 'wm"01'),
        (0, "wm\\01"),
        (0, "wm-é"),
        (0, "wm-01\n"),
        (0, ""),
        (0, "x" * 65),
        (1, "steam"),
        (1, "Water"),
        (2, 0),
        (2, -1),
        (3, -1),
        (4, -5),
        (5, bytes(63)),
        (5, bytes(65)),
        (5, b""),
    ],
)
def test_sql_rejects_what_the_reading_model_rejects(db: duckdb.DuckDBPyConnection, column: int, value: object) -> None:
    row = list(GOOD)
    row[column] = value
    db.execute("INSERT INTO readings VALUES (0, 0, ?, ?, ?, ?, ?, ?, 0)", row)
    db.execute("INSERT INTO readings VALUES (0, 1, ?, ?, ?, ?, ?, ?, 0)", GOOD)
    _, _, ok, _ = sqlaudit.reading_leaf_hashes(db, 0, 0, ordered=True)
    assert list(ok) == [0, 1]
    assert _reading_or_none(*row) is None and _reading_or_none(*GOOD) is not None


@pytest.mark.parametrize(
    "kind, value, parses", [("parking", 0, True), ("parking", 1, True), ("parking", 2, False), ("water", 2, True)]
)
def test_sql_parking_values(db: duckdb.DuckDBPyConnection, kind: str, value: int, parses: bool) -> None:
    row = ["ps-1", kind, 1, 0, value, bytes(64)]
    db.execute("INSERT INTO readings VALUES (0, 0, ?, ?, ?, ?, ?, ?, 0)", row)
    _, _, ok, _ = sqlaudit.reading_leaf_hashes(db, 0, 0)
    assert bool(ok[0]) is parses is (_reading_or_none(*row) is not None)


# --------------------------------------------------------------------------- roots


@pytest.mark.parametrize("n", [*range(0, 71), 127, 128, 129, 1000, 5000])
def test_packed_root_equals_merkle_root(n: int) -> None:
    hashes = [hashlib.sha256(os.urandom(8)).digest() for _ in range(n)]
    assert merkle.packed_root(b"".join(hashes)) == merkle.root(hashes)


def test_roots_from_sql_equal_the_headers_for_blocks_of_1_to_70(pristine: Ledger, batch_leaves: int) -> None:
    store = Store.open(pristine.home.database, read_only=True)
    try:
        sizes, checked = set(), 0
        for lo, hi in sqlaudit.plan(store.con, 0):
            batch = sqlaudit.fetch_batch(store.con, lo, hi)
            for height, _, _ in batch.blocks:
                leaves = store.leaves(height)
                ours = [merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in leaves]
                entries, span = batch.entries.get(height, sqlaudit.Entries([], b"")), batch.readings.get(height)
                assert entries is not None and (span is None or span.clean)
                packed = entries.packed + (
                    batch.hashes[span.start * 32 : (span.start + span.count) * 32] if span else b""
                )
                assert packed == b"".join(ours)
                assert merkle.packed_root(packed).hex() == store.block(height)["header"]["root"]
                sizes.add(len(leaves))
                checked += 1
        assert set(range(1, 71)) <= sizes and checked == store.head()[0] + 1
    finally:
        store.close()


def test_intact_ledger_is_cleared_in_sql_alone(
    pristine: Ledger, batch_leaves: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No block of an untouched ledger should need the Python path (that is the speed-up)."""
    fast, slow = both(pristine)
    assert fast == slow and fast["ok"] and fast["readings"] > 2485 and fast["entries"] > len(DEVICES)
    key = VerifyKey(bytes.fromhex(pristine.first_key))
    store = Store.open(pristine.home.database, read_only=True)
    try:
        python_calls: list[tuple[int, int]] = []
        audit(store.iter_blocks(), store.leaves, key, total=7, progress=lambda *a: python_calls.append(a))

        def refuse(self: Store, height: int) -> None:
            raise AssertionError(f"block {height} took the Python path")

        monkeypatch.setattr(Store, "leaves", refuse)
        sql_calls: list[tuple[int, int]] = []
        report = sqlaudit.audit_store(store, key, total=7, progress=lambda *a: sql_calls.append(a))
    finally:
        store.close()
    assert report.ok and report.readings == fast["readings"]
    assert sql_calls == python_calls and sql_calls[-1] == (report.blocks, 7)


def test_readings_stored_out_of_order_are_sorted_not_failed(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    height, _ = where(ledger, "wm-d01-000001", 20)
    sql(ledger, "CREATE TABLE keep AS SELECT * FROM readings WHERE height = ? ORDER BY idx DESC", height)
    sql(ledger, "DELETE FROM readings WHERE height = ?", height)
    sql(ledger, "INSERT INTO readings SELECT * FROM keep")
    fast, slow = both(ledger)
    assert fast == slow and fast["ok"]


# --------------------------------------------------------------------------- tampering


def _swap(ledger: Ledger) -> None:
    height, a = where(ledger, "wm-d01-000001", 30)
    sql(
        ledger,
        "UPDATE readings SET idx = CASE WHEN idx = ? THEN ? ELSE ? END WHERE height = ? AND idx IN (?, ?)",
        a,
        a + 1,
        a,
        height,
        a,
        a + 1,
    )


def _forge(ledger: Ledger) -> None:
    height, _ = where(ledger, "wm-d01-000001", 40)
    fake = sign_reading(SigningKey.generate(), device="wm-d01-000001", kind="water", seq=999, ts=T0, value=1)
    size = sql(ledger, "SELECT size FROM blocks WHERE height = ?", height)[0][0]
    sql(
        ledger,
        "INSERT INTO readings VALUES (?, ?, 'wm-d01-000001', 'water', 999, ?, 1, ?, ?)",
        height,
        size,
        T0,
        signature_bytes(fake.sig),
        T0,
    )


def _duplicate_idx(ledger: Ledger) -> None:
    height, idx = where(ledger, "wm-d01-000001", 50)
    sql(ledger, "INSERT INTO readings SELECT * FROM readings WHERE height = ? AND idx = ?", height, idx)


TAMPER = {
    "value": "UPDATE readings SET value = value + 1 WHERE device = 'wm-d01-000001' AND seq = 5",
    "timestamp": "UPDATE readings SET ts = ts - 60000 WHERE device = 'ps.d01_000002' AND seq = 9",
    "parking-value-out-of-range": "UPDATE readings SET value = 2 WHERE device = 'ps.d01_000002' AND seq = 11",
    "deleted": "DELETE FROM readings WHERE device = 'g' AND seq = 3",
    "device-needs-escaping": "UPDATE readings SET device = 'wm\"d01' WHERE device = 'wm-d01-000001' AND seq = 7",
    "device-with-space": "UPDATE readings SET device = 'wm d01' WHERE device = 'wm-d01-000001' AND seq = 8",
    "unknown-kind": "UPDATE readings SET kind = 'steam' WHERE device = 'wm-d01-000001' AND seq = 12",
    "short-signature": "UPDATE readings SET sig = sig[1:63] WHERE device = 'g' AND seq = 13",
    "seq-zero": "UPDATE readings SET seq = 0 WHERE device = 'g' AND seq = 14",
    "moved-to-another-block": "UPDATE readings SET height = height + 1 WHERE device = 'g' AND seq = 15",
    "entry-key-swapped": 'UPDATE entries SET body = replace(body, \'"kind":"water"\', \'"kind":"gas"\')'
    " WHERE type = 'device_enrolled' AND body LIKE '%wm-d01-000001%'",
    "entry-deleted": "DELETE FROM entries WHERE type = 'ledger_key_rotated'",
    "escaped-entry-altered": "UPDATE entries SET body = replace(body, 'café', 'cafe') WHERE type = 'note'",
    "header-field": "UPDATE blocks SET header = replace(header, '\"v\":2', '\"v\":3') WHERE height = 30",
    "block-deleted": "DELETE FROM blocks WHERE height = 12",
    "swapped": _swap,
    "forged-insert": _forge,
    "duplicate-idx": _duplicate_idx,
    "seq-as-text": "ALTER TABLE readings ALTER seq TYPE VARCHAR",
}


@pytest.mark.parametrize("case", list(TAMPER), ids=list(TAMPER))
def test_tampering_is_reported_exactly_as_the_python_audit_does(ledger: Ledger, batch_leaves: int, case: str) -> None:
    change = TAMPER[case]
    if callable(change):
        change(ledger)
    else:
        sql(ledger, change)
    fast, slow = both(ledger)
    assert not slow["ok"], slow
    assert fast == slow


def test_reading_sealed_after_its_device_was_revoked(ledger: Ledger, batch_leaves: int) -> None:
    """A block the writer sealed properly, but holding a revoked device's reading."""
    writer = LedgerWriter.open(ledger.home)
    try:
        writer.commit(Batch(readings=ledger.readings(3, ["wm-d01-000001"])))
        late = ledger.readings(1, [REVOKED])
        writer.commit(Batch(readings=ledger.readings(2, ["wm-d01-000001"]) + late))
    finally:
        writer.close()
    fast, slow = both(ledger)
    assert fast == slow
    assert fast["failure"].endswith("reading ledgered after its device was revoked")
    assert fast["failed_reading"] == f"{REVOKED}#{late[0].reading.seq}"


def test_wrong_size_signed_with_the_ledger_key_is_named(ledger: Ledger) -> None:
    """Only the size check can catch this one: root and signature are right."""
    import json

    from ledger.chain.blocks import sign_header
    from ledger.chain.protocol import canonical_json
    from ledger.keys import load_signing_key

    height = sql(ledger, "SELECT max(height) FROM blocks")[0][0]
    header = json.loads(sql(ledger, "SELECT header FROM blocks WHERE height = ?", height)[0][0])
    header["size"] += 1
    sig = sign_header(load_signing_key(ledger.home.ledger_key), header)
    sql(ledger, "UPDATE blocks SET header = ?, sig = ? WHERE height = ?", canonical_json(header).decode(), sig, height)
    fast, slow = both(ledger)
    assert fast == slow and fast["failed_block"] == height
    assert fast["failure"].endswith(f"header says {header['size']}")


def test_empty_ledger(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ledger.duckdb")
    try:
        report = sqlaudit.audit_store(store, SigningKey.generate().verify_key)
    finally:
        store.close()
    assert isinstance(report, Report) and report.ok and report.blocks == report.readings == 0


# --------------------------------------------------------------------------- invariants (issue 15)


LIVE = [d for d in DEVICES if d != REVOKED]


def seal(ledger: Ledger, *batches: list[LedgeredReading]) -> list[int]:
    """Seal each batch as ingest would (the writer checks no seqs: intake does): the block heights."""
    writer = LedgerWriter.open(ledger.home)
    try:
        return [writer.commit(Batch(readings=list(b))).height for b in batches]  # type: ignore[union-attr]
    finally:
        writer.close()


def stored(ledger: Ledger, device: str, seq: int) -> LedgeredReading:
    """An already ledgered reading, as it was signed: sealing it again ledgers it twice."""
    height, idx = where(ledger, device, seq)
    store = Store.open(ledger.home.database, read_only=True)
    try:
        reading = store.leaves(height)[idx][1]
    finally:
        store.close()
    assert isinstance(reading, Reading)
    return LedgeredReading(reading, reading.ts)


def deep(ledger: Ledger) -> Report:
    store = Store.open(ledger.home.database, read_only=True)
    try:
        return sqlaudit.audit_store(store, VerifyKey(bytes.fromhex(ledger.first_key)), deep=True, workers=1)
    finally:
        store.close()


def test_a_reading_ledgered_twice_is_reported_alike(ledger: Ledger, batch_leaves: int) -> None:
    again = stored(ledger, "ps.d01_000002", 5)
    (height,) = seal(ledger, ledger.readings(4, LIVE) + [again] + ledger.readings(2, LIVE))
    fast, slow = both(ledger)
    assert fast == slow and not fast["ok"]
    assert (fast["failed_block"], fast["failed_reading"]) == (height, "ps.d01_000002#5")
    assert fast["failure"].endswith(DUPLICATE)
    assert deep(ledger).failure == Failure(height, DUPLICATE, "ps.d01_000002#5")


def test_a_reading_ledgered_twice_in_one_block_names_the_second(ledger: Ledger, batch_leaves: int) -> None:
    one = ledger.readings(1, ["E" * 64])
    (height,) = seal(ledger, ledger.readings(3, LIVE) + one + ledger.readings(2, LIVE) + one)
    fast, slow = both(ledger)
    assert fast == slow and fast["failed_block"] == height
    assert fast["failed_reading"] == f"{'E' * 64}#{one[0].reading.seq}"


def test_a_duplicate_in_a_later_plan_is_found_by_the_new_keys_alone(
    ledger: Ledger, batch_leaves: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks sealed while an audit runs come in later plans: only their keys are looked up."""
    (height,) = seal(ledger, ledger.readings(3, LIVE) + [stored(ledger, "wm-d01-000001", 3)])
    monkeypatch.setattr(sqlaudit, "plan", functools.partial(sqlaudit.plan, lookahead=10))
    calls: list[tuple[int, int, Failure | None]] = []
    real = sqlaudit.first_duplicate

    def spy(con: duckdb.DuckDBPyConnection, start: int, lo: int, hi: int) -> Failure | None:
        calls.append((start, lo, found := real(con, start, lo, hi)))
        return found

    monkeypatch.setattr(sqlaudit, "first_duplicate", spy)
    fast, slow = both(ledger)
    assert fast == slow and (fast["failed_block"], fast["failed_reading"]) == (height, "wm-d01-000001#3")
    assert len(calls) > 2 and calls[-1][1] > calls[-1][0] and calls[-1][2] is not None
    assert all(found is None for _, _, found in calls[:-1])


def test_first_duplicate_sees_what_its_ranges_hold(ledger: Ledger) -> None:
    dup, after = seal(ledger, [stored(ledger, "g", 2)], ledger.readings(2, ["wm-d01-000001"]))
    con = duckdb.connect(str(ledger.home.database), read_only=True)
    try:
        assert sqlaudit.first_duplicate(con, 0, 0, after) == Failure(dup, DUPLICATE, "g#2")
        assert sqlaudit.first_duplicate(con, 0, dup, after) == Failure(dup, DUPLICATE, "g#2")
        assert sqlaudit.first_duplicate(con, 0, after, after) is None  # its keys are new: nothing twice
        assert sqlaudit.first_duplicate(con, dup, dup, after) is None  # an archive from `dup` on holds it once
    finally:
        con.close()


def test_late_readings_and_written_off_seqs_are_not_duplicates(ledger: Ledger, batch_leaves: int) -> None:
    """A reading filling a gap is ledgered once, even after its seq was written off (PROTOCOL.md section 3)."""
    device = "wm-d01-000001"
    first, late, third, lost, fifth = ledger.readings(5, [device])
    seal(ledger, [first, third], [fifth])
    writer = LedgerWriter.open(ledger.home)
    try:
        writer.write_off(device, lost.reading.seq, lost.reading.seq, "flash corrupted", "op-1")
    finally:
        writer.close()
    seal(ledger, [late], ledger.readings(2, LIVE) + [lost])
    fast, slow = both(ledger)
    assert fast == slow and fast["ok"], fast
    assert deep(ledger).ok


def rotate(ledger: Ledger, device: str, from_seq: int) -> SigningKey:
    """The device's next key, signing from `from_seq`; the ledger's keys are this test's own from here."""
    key = SigningKey.generate()
    writer = LedgerWriter.open(ledger.home)
    try:
        writer.rotate_device_key(device, key.verify_key.encode().hex(), from_seq=from_seq, operator="op-1")
    finally:
        writer.close()
    ledger.keys = {**ledger.keys, device: key}
    return key


def test_readings_signed_before_a_rotation_verify_under_the_earlier_key(ledger: Ledger, batch_leaves: int) -> None:
    """What a meter signed before it rotated, and sent after, verifies under the key it signed with."""
    device = "ps.d01_000002"
    held = ledger.readings(2, [device])  # signed, still in the outbox when the device rotates
    rotate(ledger, device, held[-1].reading.seq + 1)
    (height,) = seal(ledger, held + ledger.readings(2, [device]) + ledger.readings(3, LIVE))
    fast, slow = both(ledger)
    assert fast == slow and fast["ok"]
    assert deep(ledger).ok
    # A changed reading is named by its own key: the held ones before it still verify.
    seq = held[-1].reading.seq + 2
    sql(ledger, "UPDATE readings SET ts = ts + 1 WHERE device = ? AND seq = ?", device, seq)
    fast, slow = both(ledger)
    assert fast == slow and (fast["failed_block"], fast["failed_reading"]) == (height, f"{device}#{seq}")


def test_a_seq_the_new_key_signs_fails_under_the_earlier_one(ledger: Ledger) -> None:
    device = "ps.d01_000002"
    old, from_seq = ledger.keys[device], ledger.seqs[device] + 1
    rotate(ledger, device, from_seq)
    late = sign_reading(old, device=device, kind="parking", seq=from_seq, ts=T0, value=1)
    (height,) = seal(ledger, [LedgeredReading(late, T0)])
    assert deep(ledger).failure == Failure(height, "device signature does not verify", f"{device}#{from_seq}")


def test_a_rotation_without_from_seq_signs_every_later_reading(ledger: Ledger) -> None:
    """Chains sealed before rotations named a from_seq: the key in force is the latest, for any seq."""
    device = "E" * 64  # never rotated (wm-d01-000001 was, naming a from_seq: that span would still hold)
    old = ledger.keys[device]
    new = SigningKey.generate()
    writer = LedgerWriter.open(ledger.home)
    try:
        writer.commit(
            Batch(),
            [
                {
                    "entry": "device_key_rotated",
                    "device": device,
                    "public_key": new.verify_key.encode().hex(),
                    "previous_key": old.verify_key.encode().hex(),
                    "at": T0,
                }
            ],
        )
    finally:
        writer.close()
    seq = ledger.seqs[device] + 1
    late = sign_reading(old, device=device, kind="electricity", seq=seq, ts=T0, value=1)
    (height,) = seal(ledger, [LedgeredReading(late, T0)])
    assert deep(ledger).failure == Failure(height, "device signature does not verify", f"{device}#{seq}")


def test_deep_audit_reports_every_registry_disagreement(ledger: Ledger) -> None:
    clean = deep(ledger)
    assert clean.ok and clean.registry_checked and clean.disagreements == ()
    sql(ledger, "UPDATE devices SET kind = 'gas' WHERE device = 'wm-d01-000001'")
    sql(ledger, "UPDATE devices SET status = 'active', revoked_at = NULL WHERE device = ?", REVOKED)
    report = deep(ledger)
    assert not report.ok and report.failure is None and report.disagreements_found == 3
    assert [(d.row, d.column, d.table_says, d.chain_says) for d in report.disagreements] == [
        ("devices[device=g]", "status", "active", "revoked"),
        ("devices[device=g]", "revoked_at", None, ANY_INT),
        ("devices[device=wm-d01-000001]", "kind", "gas", "water"),
    ]
    assert report.as_dict()["failure"].startswith("registry tables disagree with the chain in 3 place(s)")
    fast, slow = both(ledger)  # the structural audit never reads the tables
    assert fast["ok"] and not fast["registry_checked"] and fast == slow


def test_registry_is_not_compared_when_the_chain_fails_first(ledger: Ledger) -> None:
    sql(ledger, "UPDATE devices SET kind = 'gas' WHERE device = 'wm-d01-000001'")
    sql(ledger, "UPDATE readings SET value = value + 1 WHERE device = 'wm-d01-000001' AND seq = 5")
    report = deep(ledger)
    assert report.failure is not None and not report.registry_checked and report.disagreements == ()


class _AnyInt:
    def __eq__(self, other: object) -> bool:
        return type(other) is int


ANY_INT = _AnyInt()


def test_the_registry_is_compared_a_partition_at_a_time_alike(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions (by a hash of each row's first key, both sides alike) bound memory, not the outcome."""
    sql(ledger, "UPDATE devices SET account = 'nobody' WHERE device = 'ps.d01_000002'")
    sql(ledger, "UPDATE device_keys SET since = 0 WHERE device = 'wm-d01-000001'")
    sql(ledger, "DELETE FROM tariff_versions")
    con = duckdb.connect(str(ledger.home.database), read_only=True)
    try:
        whole = registry_check.check_store(con)
        monkeypatch.setattr(registry_check, "PARTITION_ROWS", 1)
        parts = registry_check.check_store(con)
    finally:
        con.close()
    assert whole is not None and parts is not None
    assert whole.found == parts.found == 4
    assert sorted(map(str, whole.disagreements)) == sorted(map(str, parts.disagreements))
    assert {(d.table, d.column) for d in parts.disagreements} == {
        ("devices", "account"),
        ("device_keys", "since"),
        ("tariff_versions", None),
    }
