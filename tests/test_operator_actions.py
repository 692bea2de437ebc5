"""Operators' actions on a real DuckDB ledger (issue 15.2 and 15.5): money entered as money,
four eyes above the approval limit, every action sealed under an operator's id, write-offs
and key rotations that refuse what would corrupt the chain."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from ledger.billing.rules import parse_amount
from ledger.chain.keyspans import KeySpan, key_for
from ledger.chain.protocol import ack_payload, parse_ack, parse_written_off, sign_reading
from ledger.chain.records import Batch, LedgeredReading
from ledger.errors import Refused
from ledger.home import Home
from ledger.ingest.intake import SeqState
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import parking as parking_ops
from ledger.service.operations.billing import DEFAULT_ADJUSTMENT_LIMIT
from ledger.service.writer import EnrolmentError, LedgerWriter

T0 = 1_764_000_000_000


# ---------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    "text, value",
    [("12.50", "12.50"), ("-3", "-3.00"), ("0.01", "0.01"), ("-0.5", "-0.50"), ("999999999999.99", "999999999999.99")],
)
def test_amounts_a_clerk_would_write_are_taken_exactly(text: str, value: str) -> None:
    assert parse_amount(text) == Decimal(value) and str(parse_amount(text)) == value


@pytest.mark.parametrize(
    "text",
    [
        "1e9",
        "1E3",
        "-0.001",
        "+5",
        " 5",
        "5 ",
        "-0",
        "0.00",
        "1,000",
        "١٢",
        "NaN",
        "Infinity",
        "5.",
        ".5",
        "--5",
        "00.1",
        "1000000000000",
        "",
        "¥5",
        "0x10",
    ],
)
def test_amounts_with_exponents_sign_tricks_or_fractions_of_a_fen_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="amount"):
        parse_amount(text)


def test_a_key_signs_from_its_from_seq_and_the_earlier_one_before_it() -> None:
    spans = [KeySpan("k1", 0, 1), KeySpan("k2", 8, 20), KeySpan("k3", 15, 30)]
    assert [key_for(spans, seq) for seq in (1, 7, 8, 14, 15, 99)] == ["k1", "k1", "k2", "k2", "k3", "k3"]
    assert key_for(spans, 15, height=25) == "k2"  # a reading sealed before k3 was rotated in
    legacy = [KeySpan("k1", 0, 1), KeySpan("k2", 0, 10)]  # a rotation before rotations named a seq
    assert key_for(legacy, 3, height=5) == "k1" and key_for(legacy, 3, height=12) == "k2"


def test_a_written_off_range_moves_the_ack_only_when_it_meets_the_prefix() -> None:
    state = SeqState(3, [8])
    state.settle_range(6, 7)  # beyond a gap at 4-5: settled, but the ack stays
    assert state.hwm == 3 and 4 not in state and 7 in state
    state.settle_range(4, 5)
    assert state.hwm == 8 and state.above == set()


def test_an_ack_names_a_write_off_and_older_parsers_still_read_it() -> None:
    payload = ack_payload(9, "ab", (4, 6))
    assert parse_ack(payload) == (9, "ab") and parse_written_off(payload) == (4, 6)
    assert parse_written_off(ack_payload(9, "ab")) is None
    assert parse_written_off(b'{"seq":9,"block":"ab","written_off":[6,4]}') is None


# ---------------------------------------------------------------- the ledger


class City:
    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        initialize(self.home)
        self.writer = LedgerWriter.open(self.home)
        self.key = SigningKey.generate()
        billing_ops.add_account(self.writer, "hh-0001", "Li Na")
        self.writer.enroll_device("wm-d01-000001", "water", "d01", self.key.verify_key.encode().hex(), "hh-0001")
        self.writer.enroll_device("ps-d01-000001", "parking", "d01", SigningKey.generate().verify_key.encode().hex())

    def readings(self, *seqs: int) -> None:
        rows = [sign_reading(self.key, device="wm-d01-000001", kind="water", seq=s, ts=T0 + s, value=s) for s in seqs]
        self.writer.commit(Batch(readings=[LedgeredReading(r, r.ts) for r in rows]))

    def entries(self, kind: str) -> list[dict[str, Any]]:
        rows = self.writer.store.con.execute(
            "SELECT body FROM entries WHERE type = ? ORDER BY height, idx", [kind]
        ).fetchall()
        return [json.loads(r[0]) for r in rows]


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    c = City(tmp_path / "home")
    try:
        yield c
    finally:
        c.writer.close()


def test_a_correction_above_the_limit_waits_for_a_second_operator(city: City) -> None:
    w = city.writer
    assert billing_ops.adjustment_limit(w) == DEFAULT_ADJUSTMENT_LIMIT
    small = billing_ops.adjust(w, "hh-0001", "-12.50", "meter read high", "op-li")
    big = billing_ops.adjust(w, "hh-0001", "-2500.00", "a year of estimated reads", "op-li")
    assert small["status"] == "sealed" and big["status"] == "pending"
    sealed = lambda: [a["id"] for a in city.entries("adjustment")]  # noqa: E731
    assert sealed() == [small["id"]]  # nothing above the limit reaches a bill before approval

    with pytest.raises(Refused, match="another operator must approve"):
        billing_ops.decide_adjustment(w, big["id"], "op-li", approve=True)
    approved = billing_ops.decide_adjustment(w, big["id"], "op-wang", approve=True, note="checked the meter log")
    assert approved["status"] == "approved" and sealed() == [small["id"], big["id"]]
    [approval] = city.entries("adjustment_approved")
    assert (approval["id"], approval["operator"], approval["requested_by"]) == (big["id"], "op-wang", "op-li")
    assert city.entries("adjustment")[-1]["approved_by"] == "op-wang"
    with pytest.raises(Refused, match="already approved"):
        billing_ops.decide_adjustment(w, big["id"], "op-zhao", approve=False)
    assert local_api(city.home, w).verify(deep=True)["ok"]


def test_a_rejected_or_withdrawn_correction_is_never_sealed(city: City) -> None:
    w = city.writer
    billing_ops.set_adjustment_limit(w, "100", "op-boss")
    assert (
        billing_ops.adjustment_limit(w) == Decimal("100.00")
        and city.entries("adjustment_limit")[0]["operator"] == "op-boss"
    )
    first = billing_ops.adjust(w, "hh-0001", "150", "typo", "op-li")
    second = billing_ops.adjust(w, "hh-0001", "-101.00", "refund", "op-li")
    assert billing_ops.decide_adjustment(w, first["id"], "op-li", approve=False)["status"] == "rejected"  # withdrawn
    assert (
        billing_ops.decide_adjustment(w, second["id"], "op-wang", approve=False, note="no evidence")["status"]
        == "rejected"
    )
    assert city.entries("adjustment") == [] and len(city.entries("adjustment_rejected")) == 2
    assert billing_ops.adjustment_requests(w) == [] and len(billing_ops.adjustment_requests(w, None)) == 2


def test_bad_amounts_are_refused_before_anything_is_sealed(city: City) -> None:
    height = city.writer.height
    for amount in ("1e9", "-0.001", "+5"):
        with pytest.raises(Refused, match="write it like 12.50"):
            billing_ops.adjust(city.writer, "hh-0001", amount, "typo", "op-li")
    with pytest.raises(Refused, match="operator"):
        billing_ops.adjust(city.writer, "hh-0001", "5", "typo", "")
    assert city.writer.height == height


def test_every_operator_action_names_its_operator(city: City) -> None:
    w = city.writer
    city.readings(1, 2)
    billing_ops.assign_account(w, "wm-d01-000001", None, "op-a")
    parking_ops.set_zone(w, "ps-d01-000001", 2, T0, "op-b")
    parking_ops.lease(w, "ps-d01-000001", "hh-0001", T0, "op-c")
    parking_ops.checkin(w, "ps-d01-000001", "hh-0001", T0 + 1, "op-d")
    billing_ops.record_replacement(w, "wm-d01-000001", T0 + 5, 2, 0, "op-e")
    billing_ops.adjust(w, "hh-0001", "1.00", "fee", "op-f")
    w.write_off("wm-d01-000001", 3, 4, "lost", "op-g")
    w.rotate_device_key("wm-d01-000001", SigningKey.generate().verify_key.encode().hex(), 5, "op-h")
    w.set_budget_policy(rate=5, operator="op-i")
    w.revoke_device("wm-d01-000001", "op-j")
    billing_ops.add_account(w, "hh-0002", "Zhou Min", operator="op-k")
    billing_ops.load_tariffs(
        w, w.store.con.execute("SELECT source FROM tariff_versions").fetchone()[0] + "\n", operator="op-l"
    )
    named = {
        kind: city.entries(kind)[-1]["operator"]
        for kind in (
            "device_account",
            "parking_zone",
            "parking_lease",
            "parking_checkin",
            "meter_replaced",
            "adjustment",
            "seqs_written_off",
            "device_key_rotated",
            "budget_policy",
            "device_revoked",
            "account_opened",
            "tariffs_loaded",
        )
    }
    assert list(named.values()) == [f"op-{c}" for c in "abcdefghijkl"]
    assert "operator" not in city.entries("account_opened")[0]  # hh-0001, opened by the set-up itself
    with pytest.raises(Refused, match="operator"):
        parking_ops.lease(w, "ps-d01-000001", None, T0, "not an id!")


def test_write_offs_refuse_what_is_ledgered_overlaps_and_slips(city: City) -> None:
    w = city.writer
    city.readings(1, 2, 5)
    with pytest.raises(EnrolmentError, match="seqs 5 ledgered"):
        w.write_off("wm-d01-000001", 3, 6, "lost", "op-li")
    w.write_off("wm-d01-000001", 3, 4, "lost", "op-li")
    with pytest.raises(EnrolmentError, match="already written off"):
        w.write_off("wm-d01-000001", 4, 4, "lost", "op-li")
    with pytest.raises(EnrolmentError, match="at most"):
        w.write_off("wm-d01-000001", 10, 10 + 100_000, "lost", "op-li")
    with pytest.raises(EnrolmentError, match="reason"):
        w.write_off("wm-d01-000001", 7, 7, " ", "op-li")
    # The ack (the settled prefix) passes the write-off when ingest starts from the file.
    assert w.store.seq_state()["wm-d01-000001"] == (5, [])


def test_a_rotation_must_start_past_what_is_ledgered(city: City) -> None:
    city.readings(1, 2, 3)
    new = SigningKey.generate().verify_key.encode().hex()
    for bad in (3, 0):
        with pytest.raises(EnrolmentError, match="from-seq"):
            city.writer.rotate_device_key("wm-d01-000001", new, bad, "op-li")
    city.writer.rotate_device_key("wm-d01-000001", new, 4, "op-li")
    rec = city.writer.registry["wm-d01-000001"]
    assert rec.key_for(3) == city.key.verify_key.encode().hex() and rec.key_for(4) == new


def test_the_cli_names_the_operator_from_the_environment(city: City) -> None:
    city.writer.close()
    env = {"CITYLEDGER_HOME": str(city.home.root), "CITYLEDGER_OPERATOR": "op-env", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "adjust",
            "--account",
            "hh-0001",
            "--amount",
            "2000",
            "--reason",
            "re-bill",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "pending" and "another operator must approve" in out.stderr
    city.writer = LedgerWriter.open(city.home)
    assert city.entries("adjustment_requested")[0]["operator"] == "op-env"
