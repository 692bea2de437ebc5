"""What the chain implies beyond hashes and signatures (issue 15), as pure functions: no DuckDB.

- each (device, seq) is ledgered once (`audit.Ledgered`, `audit.check_unique`);
- a device's keys by seq and height (`audit.key_span`, `audit.apply_entry` with ledger/chain/keyspans.py);
- the registry tables are what the chain's entries make them (`registry_audit`).

The same rules against real DuckDB ledgers, and in both audit paths: tests/test_sqlaudit.py;
`cityledger verify` on tampered files: tests/test_tamper.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.audit import DUPLICATE, Failure, Ledgered, apply_entry, audit, check_unique, key_span
from ledger.chain.blocks import GENESIS_PREV, block_hash, make_header, sign_header
from ledger.chain.keyspans import KeySpan, key_for
from ledger.chain.protocol import canonical_json, sign_reading
from ledger.chain.registry_audit import TABLES, Disagreement, chain_rows, compare, disagreements

K1, K2, K3 = "11" * 32, "22" * 32, "33" * 32
T = 1_764_000_000_000


# --------------------------------------------------------------------------- each (device, seq) once


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 40)), max_size=120))
def test_ledgered_ranges_agree_with_a_set(readings: list[tuple[str, int]]) -> None:
    seen, ranges = set(), Ledgered()
    for device, seq in readings:
        assert ranges.add(device, seq) is ((device, seq) not in seen)
        seen.add((device, seq))
    for device, flat in ranges.ranges.items():
        # sorted, disjoint and never adjacent (adjacent ranges are merged): the fewest ranges there can be
        assert all(a <= b for a, b in zip(flat[::2], flat[1::2]))
        assert all(hi + 1 < lo for hi, lo in zip(flat[1::2], flat[2::2]))
        assert {s for lo, hi in zip(flat[::2], flat[1::2]) for s in range(lo, hi + 1)} == {
            s for d, s in seen if d == device
        }


def test_memory_grows_with_gaps_not_readings() -> None:
    ranges = Ledgered()
    for seq in [*range(1, 10_001), *range(10_003, 20_001)]:  # seqs 10,001-10,002 never came (written off)
        assert ranges.add("wm-1", seq)
    assert ranges.ranges == {"wm-1": [1, 10_000, 10_003, 20_000]}
    assert ranges.add("wm-1", 10_002) and ranges.add("wm-1", 10_001)  # late readings fill the gap: not twice
    assert ranges.ranges == {"wm-1": [1, 20_000]} and not ranges.add("wm-1", 10_001)


def reading(key: SigningKey, device: str, seq: int) -> Any:
    return sign_reading(key, device=device, kind="water", seq=seq, ts=T + seq, value=seq)


def test_check_unique_names_the_second_reading_in_leaf_order() -> None:
    key = SigningKey.generate()
    seen = Ledgered()
    first = [(0, {"entry": "note"}, b"{}"), (1, reading(key, "a", 1), None), (2, reading(key, "b", 1), None)]
    assert check_unique(7, first, seen) is None
    again = [(0, reading(key, "a", 2), None), (1, reading(key, "b", 1), None), (2, reading(key, "a", 1), None)]
    assert check_unique(8, again, seen) == Failure(8, DUPLICATE, "b#1")


# --------------------------------------------------------------------------- a chain in memory


def chain_of(ledger: SigningKey, blocks: list[list[Any]]) -> tuple[list[dict[str, Any]], Any]:
    """Blocks of leaves (entries as dicts, readings as Reading), hashed and signed as the writer does."""
    out, leaves, prev = [], {}, GENESIS_PREV
    for height, items in enumerate(blocks):
        stored = [(i, x, canonical_json(x)) if isinstance(x, dict) else (i, x, None) for i, x in enumerate(items)]
        hashes = [merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in stored]
        header = make_header(height=height, prev=prev, leaf_hashes=hashes, sealed_at=T + height, v=1)
        out.append({"height": height, "header": header, "sig": sign_header(ledger, header)})
        leaves[height] = stored
        prev = block_hash(header)
    return out, leaves.__getitem__


def enrol(device: str, key: SigningKey) -> dict[str, Any]:
    return {
        "entry": "device_enrolled",
        "device": device,
        "kind": "water",
        "district": "d01",
        "account": None,
        "public_key": key.verify_key.encode().hex(),
        "at": T,
    }


def rotation(device: str, key: SigningKey, from_seq: int | None) -> dict[str, Any]:
    named = {} if from_seq is None else {"from_seq": from_seq, "operator": "op-1"}
    return {
        "entry": "device_key_rotated",
        "device": device,
        "public_key": key.verify_key.encode().hex(),
        **named,
        "at": T,
    }


def run(blocks: list[list[Any]], deep: bool = True) -> Failure | None:
    ledger = SigningKey.generate()
    chain, leaves_of = chain_of(ledger, blocks)
    report = audit(chain, leaves_of, ledger.verify_key, deep=deep, workers=1)
    return report.failure


def test_the_python_audit_fails_a_reading_ledgered_twice_even_properly_signed() -> None:
    key = SigningKey.generate()
    one, two = reading(key, "a", 1), reading(key, "a", 2)
    assert run([[enrol("a", key)], [one, two], [reading(key, "a", 3), one]]) == Failure(2, DUPLICATE, "a#1")
    assert run([[enrol("a", key)], [one, two], [reading(key, "a", 3), one]], deep=False) == Failure(2, DUPLICATE, "a#1")


def test_a_late_reading_after_a_write_off_is_no_duplicate() -> None:
    key = SigningKey.generate()
    write_off = {
        "entry": "seqs_written_off",
        "device": "a",
        "from_seq": 2,
        "to_seq": 2,
        "reason": "lost",
        "operator": "op-1",
        "at": T,
    }
    assert (
        run([[enrol("a", key)], [reading(key, "a", 1), reading(key, "a", 3)], [write_off], [reading(key, "a", 2)]])
        is None
    )


def test_readings_verify_under_the_key_for_their_seq() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    held = [reading(old, "a", 2), reading(old, "a", 3)]  # signed before the rotation, sent after it
    assert (
        run([[enrol("a", old)], [reading(old, "a", 1)], [rotation("a", new, 4)], [*held, reading(new, "a", 4)]]) is None
    )
    assert run([[enrol("a", old)], [rotation("a", new, 4)], [reading(old, "a", 4)]]) == Failure(
        2, "device signature does not verify", "a#4"
    )
    # A rotation without from_seq (older chains): the new key signs every later reading.
    assert run([[enrol("a", old)], [rotation("a", new, None)], [reading(old, "a", 1)]]) == Failure(
        2, "device signature does not verify", "a#1"
    )


def test_key_spans_come_from_enrolments_and_rotations_only() -> None:
    assert key_span(enrol("a", SigningKey(b"\1" * 32)), 3) == KeySpan(
        SigningKey(b"\1" * 32).verify_key.encode().hex(), 0, 3
    )
    assert key_span({"entry": "device_key_rotated", "device": "a", "public_key": K2, "from_seq": 9}, 5) == KeySpan(
        K2, 9, 5
    )
    for bad in (
        {"entry": "device_key_rotated", "device": "a", "public_key": K2, "from_seq": "9"},
        {"entry": "device_key_rotated", "device": "a", "public_key": K2, "from_seq": -1},
        {"entry": "device_key_rotated", "device": "a", "public_key": K2, "from_seq": True},
        {"entry": "device_key_rotated", "device": "a", "public_key": "zz"},
        {"entry": "device_revoked", "device": "a", "public_key": K2},
    ):
        assert key_span(bad, 5) is None, bad
    keys: dict[str, tuple[KeySpan, ...]] = {}
    apply_entry(keys, {"entry": "device_enrolled", "device": "a", "public_key": K1}, 1)
    before = dict(keys)
    apply_entry(keys, {"entry": "device_key_rotated", "device": "a", "public_key": K2, "from_seq": 10}, 4)
    assert before["a"] == (KeySpan(K1, 0, 1),)  # a copy taken before is left as it was
    assert key_for(keys["a"], 9, 4) == K1 and key_for(keys["a"], 10, 4) == K2 and key_for(keys["a"], 10, 3) == K1


# --------------------------------------------------------------------------- the registry against the chain


def devices_row(device: str = "wm-1", **changes: Any) -> tuple[Any, ...]:
    row = {
        "device": device,
        "kind": "water",
        "district": "d01",
        "account": None,
        "public_key": K1,
        "status": "active",
        "enrolled_at": T,
        "revoked_at": None,
    } | changes
    return tuple(row.values())


ENROLLED = (
    3,
    {
        "entry": "device_enrolled",
        "device": "wm-1",
        "kind": "water",
        "district": "d01",
        "account": None,
        "public_key": K1,
        "at": T,
    },
)


def test_an_untouched_registry_agrees() -> None:
    assert disagreements([ENROLLED], {"devices": [devices_row()], "device_keys": [("wm-1", 3, K1, T, 0)]}) == []


def test_every_device_change_in_the_chain_is_followed() -> None:
    chain = [
        ENROLLED,
        (4, {"entry": "account_opened", "account": "hh-1", "class": "residential", "at": T + 1}),
        (5, {"entry": "device_account", "device": "wm-1", "account": "hh-1", "operator": "op-1"}),
        (
            6,
            {
                "entry": "device_key_rotated",
                "device": "wm-1",
                "public_key": K2,
                "previous_key": K1,
                "from_seq": 40,
                "operator": "op-1",
                "at": T + 2,
            },
        ),
        (7, {"entry": "device_suspended", "device": "wm-1", "at": T + 3}),
        (8, {"entry": "device_reinstated", "device": "wm-1", "at": T + 4}),
        (9, {"entry": "device_revoked", "device": "wm-1", "public_key": K2, "at": T + 5}),
    ]
    tables = {
        "devices": [devices_row(account="hh-1", public_key=K2, status="revoked", revoked_at=T + 5)],
        "device_keys": [("wm-1", 3, K1, T, 0), ("wm-1", 6, K2, T + 2, 40)],
        "accounts": [("hh-1", "residential", T + 1)],
    }
    assert disagreements(chain, tables) == []
    suspended = chain[:5]
    assert [str(d) for d in disagreements(suspended, {"devices": [devices_row(account="hh-1", public_key=K2)]})] == [
        "devices[device=wm-1]: status is 'active', the chain says 'suspended'"
    ]


def test_a_swapped_key_an_unrevoked_device_and_a_moved_meter_are_all_named() -> None:
    chain = [ENROLLED, (9, {"entry": "device_revoked", "device": "wm-1", "public_key": K1, "at": T + 5})]
    found = disagreements(
        chain, {"devices": [devices_row(public_key=K3, account="hh-2")], "device_keys": [("wm-1", 3, K3, T, 0)]}
    )
    assert [(d.table, d.column, d.table_says, d.chain_says) for d in found] == [
        ("devices", "account", "hh-2", None),
        ("devices", "public_key", K3, K1),
        ("devices", "status", "active", "revoked"),
        ("devices", "revoked_at", None, T + 5),
        ("device_keys", "public_key", K3, K1),
    ]
    assert str(found[1]) == f"devices[device=wm-1]: public_key is '{K3}', the chain says '{K1}'"
    assert found[4].row == "device_keys[device=wm-1, from_height=3]"


def test_missing_and_extra_rows_are_named() -> None:
    chain = [ENROLLED, (4, {"entry": "account_opened", "account": "hh-1", "class": "residential", "at": T})]
    found = disagreements(chain, {"devices": [], "accounts": [("hh-1", "residential", T), ("hh-9", "residential", 0)]})
    assert [str(d) for d in found] == [
        "devices[device=wm-1]: no such row, the chain says kind 'water', district 'd01', account None, "
        f"public_key '{K1}', status 'active', enrolled_at {T}, revoked_at None",
        "accounts[account=hh-9]: a row the chain does not have (customer_class 'residential', created_at 0)",
    ]
    assert found[0].as_dict()["table_says"] is None and found[1].as_dict()["row"] == {"account": "hh-9"}


def test_a_key_history_is_compared_row_by_row() -> None:
    chain = [
        ENROLLED,
        (6, {"entry": "device_key_rotated", "device": "wm-1", "public_key": K2, "at": T + 2}),
        (8, {"entry": "device_key_rotated", "device": "wm-1", "public_key": K3, "from_seq": 7, "at": T + 3}),
    ]
    table = next(t for t in TABLES if t.name == "device_keys")
    expected = chain_rows(table, chain)
    assert expected == {("wm-1", 3): [(K1, T, 0)], ("wm-1", 6): [(K2, T + 2, 0)], ("wm-1", 8): [(K3, T + 3, 7)]}
    rows = [("wm-1", 3, K1, T, 0), ("wm-1", 8, K3, T + 3, 1)]  # the middle key deleted, from_seq moved
    assert [str(d) for d in compare(table, expected, rows)] == [
        f"device_keys[device=wm-1, from_height=6]: no such row, the chain says public_key '{K2}', since {T + 2}, "
        "from_seq 0",
        "device_keys[device=wm-1, from_height=8]: from_seq is 1, the chain says 7",
    ]


def test_rows_without_a_unique_key_are_matched_as_many_times_as_they_occur() -> None:
    checkin = {"entry": "parking_checkin", "space": "ps-1", "account": "hh-1", "operator": "op-1"}
    chain = [(4, {**checkin, "at": T}), (5, {**checkin, "at": T + 60_000}), (6, {**checkin, "at": T})]
    table = next(t for t in TABLES if t.name == "parking_checkins")
    rows = [("ps-1", "hh-1", T), ("ps-1", "hh-1", T + 60_000), ("ps-1", "hh-1", T)]
    assert list(compare(table, chain_rows(table, chain), rows)) == []
    assert [d.chain_says for d in compare(table, chain_rows(table, chain), rows[:2])] == [
        {"account": "hh-1", "checked_in_at": T}
    ]
    changed = list(compare(table, chain_rows(table, chain), [rows[0], ("ps-1", "hh-2", T + 60_000), rows[2]]))
    assert [(d.column, d.table_says, d.chain_says) for d in changed] == [("account", "hh-2", "hh-1")]


def test_billing_and_operator_records_match_their_entries() -> None:
    body = '{"account":"hh-1","total":"12.50"}'
    digest = hashlib.sha256(body.encode()).hexdigest()
    chain = [
        (
            4,
            {
                "entry": "bill_issued",
                "account": "hh-1",
                "month": "2026-01",
                "total": "12.50",
                "bill_hash": digest,
                "at": T,
            },
        ),
        (
            5,
            {
                "entry": "adjustment",
                "id": "adj-1",
                "account": "hh-1",
                "amount": "-3.00",
                "reason": "leak",
                "operator": "op-1",
                "at": T,
            },
        ),
        (
            6,
            {
                "entry": "meter_replaced",
                "device": "wm-1",
                "ts": T,
                "old_final": 10,
                "new_initial": 0,
                "operator": "op-1",
                "at": T + 9,
            },
        ),
        (7, {"entry": "parking_zone", "space": "ps-1", "class": 2, "from": T, "operator": "op-1", "at": T}),
        (7, {"entry": "parking_lease", "space": "ps-1", "account": "hh-1", "from": T, "operator": "op-1", "at": T}),
        (8, {"entry": "tariffs_loaded", "version": 2, "sha256": "ab" * 32, "at": T}),
        (
            9,
            {
                "entry": "seqs_written_off",
                "device": "wm-1",
                "from_seq": 5,
                "to_seq": 6,
                "reason": "flash",
                "operator": "op-1",
                "at": T,
            },
        ),
    ]
    tables = {
        "bills": [("hh-1", "2026-01", T, "12.50", digest, digest, 4)],
        "adjustments": [("adj-1", "hh-1", "-3.00", "leak", "op-1", T, 5)],
        "meter_replacements": [("wm-1", T, 10, 0, "op-1")],
        "parking_zones": [("ps-1", 2, T)],
        "parking_leases": [("ps-1", "hh-1", T)],
        "tariff_versions": [(2, "ab" * 32, "ab" * 32)],
        "write_offs": [("wm-1", 5, 6, "flash", "op-1", T, 9)],
    }
    assert disagreements(chain, tables) == []
    tables["bills"] = [("hh-1", "2026-01", T, "12.50", digest, "cd" * 32, 4)]  # the body edited, its hash kept
    tables["write_offs"] = [("wm-1", 5, 60, "flash", "op-1", T, 9)]
    tables["tariff_versions"] = [(2, "ab" * 32, "ef" * 32)]
    assert [(d.table, d.column) for d in disagreements(chain, tables)] == [
        ("bills", "body_sha256"),
        ("tariff_versions", "source_sha256"),
        ("write_offs", "to_seq"),
    ]


def test_four_eyes_requests_follow_their_decisions() -> None:
    request = {
        "entry": "adjustment_requested",
        "id": "adj-2",
        "account": "hh-1",
        "amount": "900.00",
        "reason": "re-bill",
        "operator": "op-1",
        "limit": "500.00",
        "at": T,
    }
    chain = [
        (4, request),
        (6, {"entry": "adjustment_approved", "id": "adj-2", "operator": "op-2", "requested_by": "op-1", "at": T + 1}),
    ]
    approved = ("adj-2", "hh-1", "900.00", "re-bill", "op-1", T, 4, "approved", "op-2", T + 1)
    assert disagreements(chain, {"adjustment_requests": [approved]}) == []
    pending = disagreements(chain[:1], {"adjustment_requests": [approved]})
    assert [(d.column, d.table_says, d.chain_says) for d in pending] == [
        ("status", "approved", "pending"),
        ("decided_by", "op-2", None),
        ("decided_at", T + 1, None),
    ]


def test_district_heads_keep_the_latest_anchor_of_a_height() -> None:
    head = {"entry": "district_head", "district": "d01", "height": 40, "at": T}
    chain = [
        (3, {"entry": "district_added", "district": "d01", "ledger_key": K1, "at": T}),
        (5, {**head, "block": "aa" * 32}),
        (9, {**head, "block": "bb" * 32, "at": T + 1}),
    ]
    tables = {"districts": [("d01", K1, T, 3)], "district_heads": [("d01", 40, "bb" * 32, "bb" * 32, T + 1, 9)]}
    assert disagreements(chain, tables) == []
    tables["district_heads"] = [("d01", 40, "bb" * 32, "cc" * 32, T + 1, 9)]  # the header swapped, its hash kept
    assert [str(d) for d in disagreements(chain, tables)] == [
        f"district_heads[district=d01, height=40]: header_hash is '{'cc' * 32}', the chain says '{'bb' * 32}'"
    ]


def test_malformed_entries_never_crash_the_comparison() -> None:
    chain = [
        (3, {"entry": "device_enrolled", "device": ["wm-1"], "kind": {"x": 1}}),
        (4, {"entry": "device_revoked", "device": "nobody", "at": T}),
        (5, {"entry": "account_opened"}),
    ]
    found = disagreements(chain, {"devices": [], "accounts": []})
    assert [d.table for d in found] == ["devices", "accounts"]
    assert isinstance(found[0], Disagreement) and found[0].key == (("device", '["wm-1"]'),)


def test_a_disagreement_reads_as_a_sentence_and_as_json() -> None:
    d = Disagreement("accounts", (("account", "hh-1"),), "customer_class", "non-residential", "residential")
    assert str(d) == "accounts[account=hh-1]: customer_class is 'non-residential', the chain says 'residential'"
    assert d.as_dict() == {
        "table": "accounts",
        "row": {"account": "hh-1"},
        "column": "customer_class",
        "table_says": "non-residential",
        "chain_says": "residential",
        "text": str(d),
    }
