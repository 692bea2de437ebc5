"""Payments against issued bills on a real DuckDB ledger (issue 19): each one a sealed entry with
its row, refused when it cannot be right, a bill's balance following them, and `verify --deep`
naming a payment, a token or a sharing grant changed in its table alone."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ledger.billing.bills import Bill
from ledger.chain.registry_audit import TABLES, chain_rows
from ledger.clock import now_ms
from ledger.errors import Conflict, NotFound, Refused
from ledger.home import Home
from ledger.service.api import LedgerAPI, local_api
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import payments as payment_ops
from ledger.service.operations import sharing as sharing_ops
from ledger.service.writer import LedgerWriter

PROVIDER = "alipay-city"  # an agency's name: payments are recorded under the caller's name


def draft(account: str, name: str, month: str, total: str) -> Bill:
    """A bill as billing drafts it, with no lines: what it totals is all a balance needs."""
    return {
        "account": account,
        "name": name,
        "customer_class": "residential",
        "month": month,
        "currency": "CNY",
        "timezone": "Asia/Shanghai",
        "tariff_version": 1,
        "lines": [],
        "total": total,
        "status": "draft",
    }


class Books:
    """A ledger with two accounts and issued bills: hh-0001 owes 120.00 for 2026-01 and is owed
    5.00 for 2026-02 (a credit); hh-0002's 2026-01 bill is 0.00."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        initialize(self.home)
        self.writer = LedgerWriter.open(self.home)
        self.api: LedgerAPI = local_api(self.home, self.writer)
        billing_ops.add_account(self.writer, "hh-0001", "Li Na")
        billing_ops.add_account(self.writer, "hh-0002", "Zhou Min")
        billing_ops.issue_bills(
            self.writer,
            "2026-01",
            [draft("hh-0001", "Li Na", "2026-01", "120.00"), draft("hh-0002", "Zhou Min", "2026-01", "0.00")],
        )
        billing_ops.issue_bills(self.writer, "2026-02", [draft("hh-0001", "Li Na", "2026-02", "-5.00")])

    def pay(self, amount: str, reference: str, account: str = "hh-0001", month: str = "2026-01") -> Any:
        return self.api.record_payment(account, month, amount, reference, now_ms() - 60_000, PROVIDER)

    def entries(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        rows = self.writer.store.con.execute(
            "SELECT height, body FROM entries WHERE type = ? ORDER BY height, idx", [kind]
        ).fetchall()
        return [(h, json.loads(b)) for h, b in rows]

    def sql(self, statement: str, *args: object) -> list[tuple[Any, ...]]:
        return self.writer.store.con.execute(statement, list(args)).fetchall()

    def balance(self, month: str, account: str = "hh-0001") -> Any:
        return next(b for b in self.api.balances(account) if b["month"] == month)


@pytest.fixture
def books(tmp_path: Path) -> Iterator[Books]:
    b = Books(tmp_path / "home")
    try:
        yield b
    finally:
        b.writer.close()


# ---------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "total, paid, status",
    [
        ("120.00", "0.00", "unpaid"),
        ("120.00", "0.01", "partly paid"),
        ("120.00", "120.00", "paid"),
        ("120.00", "120.01", "overpaid"),
        ("0.00", "0.00", "paid"),  # nothing was owed
        ("-5.00", "0.00", "overpaid"),  # a credit: the city owes the account
    ],
)
def test_the_status_is_what_is_left_to_pay(total: str, paid: str, status: str) -> None:
    assert payment_ops.status_of(Decimal(total), Decimal(paid)) == status


# ---------------------------------------------------------------- recording


def test_a_payment_is_sealed_as_an_entry_with_its_row_and_the_balance_follows(books: Books) -> None:
    assert books.balance("2026-01")["status"] == "unpaid"
    paid_at = now_ms() - 3_600_000
    first = books.api.record_payment("hh-0001", "2026-01", "20", "tx-1", paid_at, PROVIDER)
    assert (first["amount"], first["recorded_by"], first["paid_at"]) == ("20.00", PROVIDER, paid_at)
    assert first["bill"] | {"hash": "", "height": 0, "issued_at": 0} == {
        "month": "2026-01",
        "total": "120.00",
        "paid": "20.00",
        "balance": "100.00",
        "status": "partly paid",
        "payments": 1,
        "hash": "",
        "height": 0,
        "issued_at": 0,
    }
    [(height, entry)] = books.entries("payment_recorded")
    issued = books.sql("SELECT hash FROM bills WHERE account = 'hh-0001' AND month = '2026-01'")[0][0]
    assert height == first["height"] == books.writer.height
    assert books.sql("SELECT hash FROM blocks WHERE height = ?", height)[0][0] == first["block"]
    assert entry == {
        "entry": "payment_recorded",
        "id": first["id"],
        "account": "hh-0001",
        "month": "2026-01",
        "amount": "20.00",
        "reference": "tx-1",
        "recorded_by": PROVIDER,
        "paid_at": paid_at,
        "bill_hash": issued,
        "at": first["recorded_at"],
    }
    row = {k: v for k, v in first.items() if k not in ("block", "bill")}
    assert books.api.payments("hh-0001") == [row] == books.api.payments("hh-0001", "2026-01")
    assert books.api.payments("hh-0001", "2026-02") == []

    second = books.pay("100.00", "tx-2")
    assert (second["bill"]["paid"], second["bill"]["balance"], second["bill"]["status"]) == ("120.00", "0.00", "paid")
    third = books.pay("0.50", "tx-3")
    assert (third["bill"]["balance"], third["bill"]["status"]) == ("-0.50", "overpaid")
    assert [p["reference"] for p in books.api.payments("hh-0001")] == ["tx-1", "tx-2", "tx-3"]
    assert books.balance("2026-01") == third["bill"]


def test_balances_list_every_issued_bill_newest_first(books: Books) -> None:
    books.pay("30.00", "tx-1")
    listed = books.api.balances("hh-0001")
    assert [(b["month"], b["total"], b["paid"], b["balance"], b["status"], b["payments"]) for b in listed] == [
        ("2026-02", "-5.00", "0.00", "-5.00", "overpaid", 0),
        ("2026-01", "120.00", "30.00", "90.00", "partly paid", 1),
    ]
    issued = {m["month"]: m for m in books.api.bills("hh-0001")}
    assert all(b["hash"] == issued[b["month"]]["hash"] for b in listed)
    assert [(b["month"], b["status"]) for b in books.api.balances("hh-0002")] == [("2026-01", "paid")]


def test_an_issued_bill_comes_with_its_payments_and_balance(books: Books) -> None:
    books.pay("20.00", "tx-1")
    statement = books.api.statement("hh-0001", "2026-01")
    assert statement["bill"]["status"] == "issued" and statement["bill"]["total"] == "120.00"
    assert statement["bill"]["hash"] == books.balance("2026-01")["hash"]
    assert [p["reference"] for p in statement["payments"]] == ["tx-1"]
    assert (statement["total"], statement["paid"], statement["balance"], statement["status"]) == (
        "120.00",
        "20.00",
        "100.00",
        "partly paid",
    )


def test_a_draft_month_has_its_bill_as_it_stands_and_nothing_to_pay_yet(books: Books) -> None:
    adjustment = billing_ops.adjust(books.writer, "hh-0001", "7.50", "a fee", "op-li")
    tz = ZoneInfo(books.api.timezone())
    month = dt.datetime.fromtimestamp(adjustment["created_at"] / 1000, tz).strftime("%Y-%m")
    statement = books.api.statement("hh-0001", month)
    assert statement["bill"]["status"] == "draft" and [line["type"] for line in statement["bill"]["lines"]] == [
        "adjustment"
    ]
    assert (statement["total"], statement["paid"], statement["balance"], statement["status"]) == (
        "7.50",
        "0.00",
        "7.50",
        "draft",
    )
    with pytest.raises(Refused, match="no bill for .* was issued"):
        books.pay("7.50", "tx-draft", month=month)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"account": "hh-9999"}, NotFound, "unknown account"),
        ({"month": "2025-12"}, Refused, "no bill for 2025-12 was issued"),
        ({"month": "2026-1"}, Refused, "a month is YYYY-MM"),
        ({"amount": "0"}, Refused, "must not be zero"),
        ({"amount": "-20.00"}, Refused, "a refund is not a payment"),
        ({"amount": "1.005"}, Refused, "at most two"),
        ({"amount": "1e3"}, Refused, "at most two"),
        ({"amount": " 20"}, Refused, "at most two"),
        ({"reference": ""}, Refused, "reference"),
        ({"reference": "tx 1"}, Refused, "reference"),
        ({"paid_at": now_ms() + 3_600_000}, Refused, "paid_at"),
        ({"paid_at": 0}, Refused, "paid_at"),
        ({"recorded_by": "not a name!"}, Refused, "recorded by"),
    ],
)
def test_a_payment_that_cannot_be_right_is_refused_and_seals_nothing(
    books: Books, change: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {
        "account": "hh-0001",
        "month": "2026-01",
        "amount": "20.00",
        "reference": "tx-1",
        "paid_at": now_ms() - 60_000,
        "recorded_by": PROVIDER,
    }
    height = books.writer.height
    with pytest.raises(error, match=match):
        books.api.record_payment(**(args | change))
    assert books.writer.height == height and books.sql("SELECT count(*) FROM payments") == [(0,)]
    books.api.record_payment(**args)  # the same payment, as it should be, is taken
    assert books.writer.height == height + 1


def test_a_reference_is_taken_once_per_account(books: Books) -> None:
    books.pay("20.00", "tx-1")
    height = books.writer.height
    with pytest.raises(Conflict, match="already has the reference 'tx-1'"):
        books.pay("20.00", "tx-1")
    with pytest.raises(Conflict):
        books.pay("35.00", "tx-1", month="2026-02")  # another month, the same provider's transaction
    assert books.writer.height == height
    books.pay("20.00", "tx-1", account="hh-0002")  # another account's payment may share it
    assert [p["account"] for p in books.api.payments("hh-0002")] == ["hh-0002"]


def test_an_unknown_account_is_not_found(books: Books) -> None:
    for read in (books.api.payments, books.api.balances):
        with pytest.raises(NotFound):
            read("hh-9999")
    with pytest.raises(NotFound):
        books.api.statement("hh-9999", "2026-01")
    with pytest.raises(Refused, match="YYYY-MM"):
        books.api.statement("hh-0001", "2026-13")


def test_the_cli_records_a_payment_and_lists_the_balances(tmp_path: Path) -> None:
    books = Books(tmp_path / "home")
    books.writer.close()  # the CLI opens the file itself, as it does while no ingest runs

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "ledger.cli", "--home", str(books.home.root), "payments", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    record = ["record", "--account", "hh-0001", "--month", "2026-01", "--amount", "45.5", "--reference", "tx-9"]
    out = cli(*record, "--operator", "op-li")
    assert out.returncode == 0, out.stderr
    recorded = json.loads(out.stdout)
    assert (recorded["amount"], recorded["recorded_by"], recorded["bill"]["balance"]) == ("45.50", "op-li", "74.50")
    again = cli(*record, "--operator", "op-li")
    assert again.returncode != 0 and "already has the reference 'tx-9'" in again.stderr
    listed = json.loads(cli("list", "hh-0001", "--balances").stdout)
    assert [(b["month"], b["paid"], b["status"]) for b in listed] == [
        ("2026-02", "0.00", "overpaid"),
        ("2026-01", "45.50", "partly paid"),
    ]
    assert [p["id"] for p in json.loads(cli("list", "hh-0001", "--month", "2026-01").stdout)] == [recorded["id"]]


# ---------------------------------------------------------------- verify --deep


def test_verify_deep_agrees_after_payments_and_names_each_table_changed_alone(books: Books) -> None:
    """A payment, a token and a sharing grant changed in their tables alone: the chain still says what
    they were, and `verify --deep` names each change (the chain audit alone cannot see them)."""
    w = books.writer
    payment = books.pay("20.00", "tx-1")
    books.pay("15.00", "tx-2")
    agency = sharing_ops.issue_token(w, "agency", "water-bureau", ["d01:readings"], operator="op-li")
    other = sharing_ops.issue_token(w, "agency", "water-bureau", ["d02:readings"], operator="op-li")
    sharing_ops.revoke_token(w, other["id"], operator="op-li")
    grant = sharing_ops.grant(w, "d01", "water-bureau", "bills", "30d", "op-li")
    gone = sharing_ops.grant(w, "d01", "water-bureau", "payments", "30d", "op-li")
    sharing_ops.revoke_grant(w, gone["id"], "op-li")
    clean = books.api.verify(deep=True)
    assert clean["ok"] and clean["registry_checked"] and clean["disagreements"] == [], clean

    books.sql("UPDATE payments SET amount = '200.00' WHERE id = ?", payment["id"])
    books.sql("DELETE FROM payments WHERE reference = 'tx-2'")
    books.sql("UPDATE api_tokens SET secret_hash = ? WHERE id = ?", "0" * 64, agency["id"])
    books.sql("UPDATE api_tokens SET revoked_at = NULL WHERE id = ?", other["id"])
    books.sql("UPDATE sharing_grants SET until = until + 86400000 WHERE id = ?", grant["id"])
    books.sql("UPDATE sharing_grants SET revoked_at = NULL, revoked_by = NULL WHERE id = ?", gone["id"])
    report = books.api.verify(deep=True)
    assert not report["ok"] and report["failed_block"] is None
    found = {(d["table"], tuple(d["row"].values()), d["column"]) for d in report["disagreements"]}
    assert found == {
        ("payments", (payment["id"],), "amount"),
        ("payments", (books.entries("payment_recorded")[1][1]["id"],), None),
        ("api_tokens", (agency["id"],), "secret_hash"),
        ("api_tokens", (other["id"],), "revoked_at"),
        ("sharing_grants", (grant["id"],), "until"),
        ("sharing_grants", (gone["id"],), "revoked_at"),
        ("sharing_grants", (gone["id"],), "revoked_by"),
    }, report["disagreements"]
    texts = [d["text"] for d in report["disagreements"]]
    assert f"payments[id={payment['id']}]: amount is '200.00', the chain says '20.00'" in texts
    assert any(t.startswith("payments[id=") and "no such row, the chain says account 'hh-0001'" in t for t in texts)


def test_the_chain_revokes_a_token_and_a_grant_once() -> None:
    """As the tables do (UPDATE ... WHERE revoked_at IS NULL): a second revocation entry changes nothing."""
    tokens = next(t for t in TABLES if t.name == "api_tokens")
    issued = {
        "entry": "api_token_issued",
        "token": "abc",
        "kind": "agency",
        "principal": "water-bureau",
        "scopes": ["d01:readings:read", "d02:bills:read"],
        "expires_at": 9,
        "rate_per_minute": 600,
        "secret_sha256": "ff",
        "at": 1,
    }
    revoked = [(5, {"entry": "api_token_revoked", "token": "abc", "at": 3})]
    revoked.append((6, {"entry": "api_token_revoked", "token": "abc", "at": 4}))
    assert chain_rows(tokens, [(4, issued), *revoked]) == {
        ("abc",): [("agency", "water-bureau", "d01:readings:read\nd02:bills:read", "ff", 1, 9, 3, 600, 4)]
    }
    malformed = chain_rows(tokens, [(4, {**issued, "scopes": [["all"], 1]})])
    assert malformed[("abc",)][0][2] == '[["all"], 1]'  # as JSON text: compared, never a crash

    grants = next(t for t in TABLES if t.name == "sharing_grants")
    granted = {
        "entry": "sharing_granted",
        "grant": "g-1",
        "from_district": "d01",
        "to_agency": "water-bureau",
        "dataset": "bills",
        "until": 99,
        "operator": "op-li",
        "at": 2,
    }
    ends = [(8, {"entry": "sharing_revoked", "grant": "g-1", "operator": "op-wang", "at": 5})]
    ends.append((9, {"entry": "sharing_revoked", "grant": "g-1", "operator": "op-li", "at": 6}))
    assert chain_rows(grants, [(7, granted), *ends]) == {
        ("g-1",): [("d01", "water-bureau", "bills", 2, 99, "op-li", 7, 5, "op-wang")]
    }
