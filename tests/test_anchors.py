"""The city anchor's pure core: which district heads it anchors, when it stops, and the auditor's check."""

from __future__ import annotations

import base64
import json
from typing import Any

from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.anchors import Anchor, Follower, Head, anchors_in, first_broken
from ledger.chain.blocks import GENESIS_PREV, block_hash, make_header, sign_header
from ledger.chain.protocol import canonical_json, signed_header_payload
from ledger.chain.witness import SignedHeader, parse_signed_header
from ledger.keys import public_hex


class Chain:
    """A district chain of empty-ish blocks, signed as a district's ingest signs them."""

    def __init__(self, district: str, key: SigningKey) -> None:
        self.district, self.key = district, key
        self.prev, self.height = GENESIS_PREV, -1

    def next(self, *, key: SigningKey | None = None, **extra: Any) -> bytes:
        self.height += 1
        header = make_header(
            height=self.height,
            prev=self.prev,
            leaf_hashes=[merkle.leaf_hash(b"x%d" % self.height)],
            sealed_at=1_764_000_000_000 + self.height,
            v=1,
            chain=self.district,
            **extra,
        )
        sig = sign_header(key or self.key, header)
        self.prev = block_hash(header)
        return signed_header_payload(self.prev, header, sig)


def _head(district: str, payload: bytes) -> Head:
    signed = parse_signed_header(payload)
    assert isinstance(signed, SignedHeader)
    return Head(district, signed)


def test_only_the_newest_head_of_each_district_is_anchored_and_then_nothing_until_it_moves() -> None:
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    a, b = Chain("d01", k1), Chain("d02", k2)
    f = Follower.resume({"d01": public_hex(k1), "d02": public_hex(k2)}, [])
    for _ in range(3):
        assert f.offer("d01", a.next(), "headers") is None
    assert f.offer("d02", b.next(), "headers") is None
    assert sorted((h.district, h.height) for h in f.take()) == [("d01", 2), ("d02", 0)]
    assert f.take() == []
    assert f.offer("d01", a.next(), "headers") is None
    assert [(h.district, h.height) for h in f.take()] == [("d01", 3)]


def test_every_key_hand_over_is_anchored_so_a_restarted_anchor_knows_the_new_key() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    a = Chain("d01", old)
    f = Follower.resume({"d01": public_hex(old)}, [])
    f.offer("d01", a.next(), "headers")
    f.offer("d01", a.next(next_key=public_hex(new)), "headers")  # signed by the old key, names the new one
    f.offer("d01", a.next(key=new), "headers")
    taken = f.take()
    assert [h.height for h in taken] == [1, 2]

    resumed = Follower.resume({"d01": public_hex(old)}, taken)
    assert resumed.offer("d01", a.next(key=new), "headers") is None
    assert [h.height for h in resumed.take()] == [3]


def test_a_fork_halts_that_district_with_an_alarm_and_leaves_the_others_anchored() -> None:
    k1, k2 = SigningKey.generate(), SigningKey.generate()
    a, b = Chain("d01", k1), Chain("d02", k2)
    f = Follower.resume({"d01": public_hex(k1), "d02": public_hex(k2)}, [])
    f.offer("d01", a.next(), "headers")
    f.offer("d01", a.next(), "headers")
    f.take()
    rival = Chain("d01", k1)
    rival.next()
    alarm = f.offer("d01", rival.next(note="other"), "headers")  # height 1 again, another block
    assert alarm is not None and alarm.kind == "fork"
    assert f.offer("d01", a.next(), "headers") is None  # halted: nothing more from d01 is anchored
    f.offer("d02", b.next(), "headers")
    assert [h.district for h in f.take()] == ["d02"]


def test_a_header_not_signed_by_the_districts_key_is_an_alarm_not_an_anchor() -> None:
    real, thief = SigningKey.generate(), SigningKey.generate()
    f = Follower.resume({"d01": public_hex(real)}, [])
    alarm = f.offer("d01", Chain("d01", thief).next(), "checkpoint")
    assert alarm is not None and alarm.kind == "bad_signature"
    assert f.take() == []


def test_a_header_from_a_district_the_city_does_not_have_is_refused_without_halting_anything() -> None:
    f = Follower.resume({}, [])
    alarm = f.offer("d09", Chain("d09", SigningKey.generate()).next(), "headers")
    assert alarm is not None and "not a district of this city" in alarm.detail
    assert f.halted == {} and f.take() == []


def test_the_city_chain_entries_name_the_district_keys_and_the_anchors() -> None:
    k = SigningKey.generate()
    head = _head("d01", Chain("d01", k).next())
    entries = [
        (
            1,
            "district_added",
            canonical_json(
                {"entry": "district_added", "district": "d01", "ledger_key": public_hex(k), "at": 5}
            ).decode(),
        ),
        (4, "district_head", json.dumps(head.entry(at=9))),
    ]
    keys, found = anchors_in(entries)
    assert keys == {"d01": public_hex(k)}
    assert found == [Anchor("d01", 0, head.hash, 4)]


def test_first_broken_names_a_truncated_or_rewritten_district_chain() -> None:
    anchors = [Anchor("d01", 3, "aa", 5), Anchor("d02", 7, "bb", 6), Anchor("d01", 9, "cc", 8)]
    held = {"d01": {3: "aa", 9: "cc"}, "d02": {7: "bb"}}
    assert first_broken(anchors, held) is None
    assert "no block 9" in (first_broken(anchors, {**held, "d01": {3: "aa"}}) or "")
    rewritten = first_broken(anchors, {**held, "d02": {7: "zz"}})
    assert rewritten is not None and rewritten.startswith("district d02 block 7 is zz") and "rewritten" in rewritten
    # In city order: the earlier anchor's problem is the one named.
    both = first_broken(anchors, {"d01": {3: "xx"}, "d02": {}})
    assert both is not None and both.startswith("district d01 block 3")


# ---------------------------------------------------------------- anchored receipts


def _anchored_city(headers_after: int = 1) -> tuple[dict[str, Any], str, str]:
    """(an anchored receipt, the city's key, the district's key) over a small made-up city."""
    from ledger.chain.anchored import build_anchored
    from ledger.chain.protocol import sign_reading
    from ledger.chain.receipts import build_receipt

    device, district, city = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    reading = sign_reading(device, device="wm-d01-000001", kind="water", seq=1, ts=1_764_000_000_000, value=5)
    leaves = [merkle.leaf_hash(reading.leaf_data()), merkle.leaf_hash(b"another reading")]
    header = make_header(height=1, prev="ab" * 32, leaf_hashes=leaves, sealed_at=1, v=1, chain="d01")
    receipt = build_receipt(
        reading, public_hex(device), header, sign_header(district, header), public_hex(district), leaves, 0
    )
    chain = Chain("d01", district)
    chain.prev, chain.height = block_hash(header), 1
    later = [parse_signed_header(chain.next()).header for _ in range(headers_after)]  # type: ignore[union-attr]
    entry = {"entry": "district_head", "district": "d01", "height": 1 + headers_after, "block": chain.prev, "at": 7}
    city_leaves = [
        merkle.leaf_hash(b"an earlier entry"),
        merkle.leaf_hash(canonical_json(entry)),
        merkle.leaf_hash(b"a later entry"),
    ]
    city_header = make_header(height=4, prev="cd" * 32, leaf_hashes=city_leaves, sealed_at=9, v=1)
    proof = {
        "entry": entry,
        "city_block": city_header,
        "city_block_sig": base64.b64encode(sign_header(city, city_header)).decode(),
        "city_ledger_key": public_hex(city),
        "leaf_index": 1,
        "proof": [h.hex() for h in merkle.inclusion_proof(city_leaves, 1)],
    }
    return build_anchored(receipt, later, proof), public_hex(city), public_hex(district)


def test_an_anchored_receipt_verifies_against_the_city_key_alone() -> None:
    from ledger.chain.anchored import anchored_ok, verify_anchored

    for after in (0, 1, 3):
        anchored, city_key, district_key = _anchored_city(after)
        checks = verify_anchored(canonical_json(anchored), city_key)
        assert anchored_ok(checks), checks
        assert [c.name for c in checks] == [
            "format",
            "device_signature",
            "inclusion",
            "block_signature",
            "link",
            "anchor_inclusion",
            "city_signature",
        ]
        refused = verify_anchored(canonical_json(anchored), district_key)
        assert not anchored_ok(refused) and refused[-1].name == "city_signature"


def test_an_anchored_receipt_with_any_part_changed_is_refused_at_that_step() -> None:
    from ledger.chain.anchored import anchored_ok, verify_anchored

    def refused_at(change: Any) -> str:
        anchored, city_key, _ = _anchored_city(2)
        change(anchored)
        checks = verify_anchored(json.dumps(anchored), city_key)
        assert not anchored_ok(checks)
        return checks[-1].name

    assert refused_at(lambda a: a["receipt"]["reading"].update(value=6)) == "device_signature"
    assert refused_at(lambda a: a["anchor"]["headers"][0].update(sealed_at=2)) == "link"
    assert refused_at(lambda a: a["anchor"]["headers"].pop()) == "link"
    assert refused_at(lambda a: a["anchor"]["entry"].update(district="d02")) == "link"
    assert refused_at(lambda a: a["receipt"]["block"].update(chain="d02")) == "block_signature"
    assert refused_at(lambda a: a["anchor"].update(leaf_index=0)) == "anchor_inclusion"
    assert refused_at(lambda a: a["anchor"]["proof"].reverse()) == "anchor_inclusion"
    assert refused_at(lambda a: a["anchor"]["city_block"].update(sealed_at=10)) == "city_signature"
    assert refused_at(lambda a: a["anchor"].update(city_block_sig="AAAA")) == "city_signature"
    assert refused_at(lambda a: a["anchor"].update(extra=1)) == "format"
    assert refused_at(lambda a: a.update(extra=1)) == "format"
