"""Bills and payments over the real API (issue 19): a payment recorded by a provider is a ledger
entry and the bill's balance follows it; retries are safe under an Idempotency-Key; scopes, grants
and bad input are answered 403, 404, 409 and 422; `verify --deep` still agrees afterwards."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.support.api import ApiCity

PROVIDER = "city-pay"


@pytest.fixture(scope="module")
def provider(api_city: ApiCity) -> str:
    """A payment provider's token: it records payments anywhere, and reads bills to know what is owed."""
    return api_city.agency(PROVIDER, "all:payments:write", "all:bills")


def ref() -> str:
    return f"tx-{uuid.uuid4().hex[:16]}"


def issued(c: httpx.Client, month: str, account: str = "hh-0001") -> dict[str, Any]:
    r = c.get(f"/accounts/{account}/bills")
    assert r.status_code == 200, r.text
    return next(b for b in r.json() if b["month"] == month)


def pay(c: httpx.Client, amount: str, month: str, account: str = "hh-0001", **headers: str) -> httpx.Response:
    body = {"account": account, "month": month, "amount": amount, "reference": ref()}
    return c.post("/payments", json=body, headers=headers)


def with_reference(api_city: ApiCity, account: str, reference: str) -> list[dict[str, Any]]:
    return [p for p in api_city.stack.api.payments(account) if p["reference"] == reference]


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


def test_a_payment_is_a_ledger_entry_and_the_balance_follows(api_city: ApiCity, provider: str) -> None:
    month = api_city.city.issued_month
    with api_city.client(provider) as c:
        before = issued(c, month)
        r = pay(c, "12.34", month)
        assert r.status_code == 201, r.text
        out = r.json()
        assert (out["account"], out["month"], out["amount"], out["recorded_by"]) == (
            "hh-0001",
            month,
            "12.34",
            PROVIDER,
        )
        assert out["paid_at"].endswith("Z") and isinstance(out["paid_at_ms"], int)
        paid = Decimal(before["paid"]) + Decimal("12.34")
        assert out["bill"]["paid"] == str(paid) and out["bill"]["payments"] == before["payments"] + 1
        assert out["bill"]["balance"] == str(Decimal(before["total"]) - paid)
        assert out["bill"]["status"] in ("partly paid", "paid", "overpaid") and out["bill"]["total"] == before["total"]
        assert issued(c, month) == out["bill"]

        [block] = api_city.stack.api.view("blocks_page", {"before": out["height"] + 1, "limit": 1})
        assert (block["height"], block["hash"], block["entries"]) == (out["height"], out["block"], "payment_recorded")

        listed = c.get("/accounts/hh-0001/payments", params={"month": month}).json()
        assert {k: v for k, v in out.items() if k not in ("block", "bill")} in listed
        statement = c.get(f"/accounts/hh-0001/bills/{month}").json()
        assert statement["bill"]["status"] == "issued" and statement["bill"]["hash"] == before["hash"]
        assert [p["id"] for p in statement["payments"]] == [p["id"] for p in listed]
        assert (statement["paid"], statement["balance"], statement["status"]) == (
            out["bill"]["paid"],
            out["bill"]["balance"],
            out["bill"]["status"],
        )


def test_the_same_idempotency_key_replays_the_first_answer_and_records_one_payment(
    api_city: ApiCity, provider: str
) -> None:
    month = api_city.city.issued_month
    key = str(uuid.uuid4())
    body = {"account": "hh-0003", "month": month, "amount": "5.00", "reference": ref()}
    with api_city.client(provider) as c:
        before = issued(c, month, "hh-0003")
        first = c.post("/payments", json=body, headers={"Idempotency-Key": key})
        again = c.post("/payments", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == again.status_code == 201, again.text
        assert again.headers.get("idempotent-replayed") == "true" and "idempotent-replayed" not in first.headers
        assert again.json() == first.json()
        assert len(with_reference(api_city, "hh-0003", body["reference"])) == 1
        assert Decimal(issued(c, month, "hh-0003")["paid"]) == Decimal(before["paid"]) + Decimal("5.00")

        other = c.post("/payments", json={**body, "amount": "6.00"}, headers={"Idempotency-Key": key})
        assert "different request" in assert_problem(other, 409)["detail"]
        twice = c.post("/payments", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert "already has the reference" in assert_problem(twice, 409)["detail"]
        assert len(with_reference(api_city, "hh-0003", body["reference"])) == 1


def test_scopes_decide_who_reads_bills_and_who_records_payments(api_city: ApiCity) -> None:
    month = api_city.city.issued_month
    body = {"account": "hh-0001", "month": month, "amount": "1.00", "reference": ref()}
    with api_city.client("op-d01") as d01, api_city.client("op-d02") as d02:
        assert_problem(d01.get("/accounts/hh-0001/bills"), 403)  # hh-0001's meters are in d02
        assert_problem(d01.get(f"/accounts/hh-0001/bills/{month}"), 403)
        assert_problem(d01.get("/accounts/hh-0001/payments"), 403)
        assert_problem(d01.post("/payments", json=body), 403)
        assert d02.get("/accounts/hh-0001/bills").status_code == 200
        assert d01.get("/accounts/hh-0003/bills").status_code == 200
        refusals = d02.get("/sharing/access-log", params={"district": "d02", "refusals": "true"}).json()["items"]
        assert any(
            r["principal"] == "op-d01" and r["path"] == "/v1/accounts/hh-0001/bills" and r["status"] == 403
            for r in refusals
        )
    district_only = api_city.agency("d01-pay", "d01:payments:write", "d01:bills")
    read_only = api_city.agency("pay-reader", "all:payments", "all:bills")
    bills_only = api_city.agency("bill-reader", "all:bills")
    with api_city.client(district_only) as c:
        assert_problem(c.post("/payments", json=body), 403)
        assert c.post("/payments", json={**body, "account": "hh-0003"}).status_code == 201
    with api_city.client(read_only) as c:
        assert_problem(c.post("/payments", json=body), 403)
        assert c.get("/accounts/hh-0001/payments").status_code == 200
    with api_city.client(bills_only) as c:
        assert_problem(c.get("/accounts/hh-0001/payments"), 403)
        assert c.get("/accounts/hh-0001/bills").status_code == 200
    assert with_reference(api_city, "hh-0001", body["reference"]) == []


def test_a_read_under_a_sharing_grant_is_logged_with_its_records(api_city: ApiCity) -> None:
    agency = api_city.agency("bill-auditor", "d03:readings")
    grant = api_city.stack.api.grant_sharing("d02", "bill-auditor", "bills", "30d", "op-d02")
    with api_city.client(agency) as c:
        r = c.get("/accounts/hh-0001/bills")
        assert r.status_code == 200 and r.json(), r.text
        assert_problem(c.get("/accounts/hh-0001/payments"), 403)  # the grant shares bills, not payments
        assert_problem(c.get("/accounts/hh-0003/bills"), 403)  # nor d01's
    with api_city.client("op-d02") as d02:
        log = d02.get("/sharing/access-log", params={"district": "d02"}).json()["items"]
    [read] = [row for row in log if row["grant"] == grant["id"]]
    assert (read["principal"], read["path"], read["dataset"], read["records"]) == (
        "bill-auditor",
        "/v1/accounts/hh-0001/bills",
        "bills",
        len(r.json()),
    )


@pytest.mark.parametrize("amount", ["0", "0.00", "-1.00", "1.005", "1e3", "", "12,50", " 12", 12.5])
def test_an_amount_that_is_not_money_is_422_and_records_nothing(
    api_city: ApiCity, provider: str, amount: object
) -> None:
    body = {"account": "hh-0001", "month": api_city.city.issued_month, "amount": amount, "reference": ref()}
    with api_city.client(provider) as c:
        assert_problem(c.post("/payments", json=body), 422)
    assert with_reference(api_city, "hh-0001", str(body["reference"])) == []


def test_other_bad_payments_are_refused(api_city: ApiCity, provider: str) -> None:
    month = api_city.city.issued_month
    good = {"account": "hh-0001", "month": month, "amount": "1.00", "reference": ref()}
    now = dt.datetime.fromtimestamp(api_city.city.now / 1000, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    with api_city.client(provider) as c:
        assert "no bill for" in assert_problem(c.post("/payments", json={**good, "month": now}), 422)["detail"]
        for bad in (
            {"month": "2026-13"},
            {"reference": "has space"},
            {"paid_at": "yesterday"},
            {"paid_at": "2999-01-01T00:00:00Z"},
            {"extra": "member"},
        ):
            assert_problem(c.post("/payments", json={**good, **bad}), 422)
        assert_problem(c.post("/payments", json={**good, "account": "hh-9999"}), 404)
    assert with_reference(api_city, "hh-0001", good["reference"]) == []


def test_an_unknown_account_is_404_to_the_city_and_403_to_a_district(api_city: ApiCity) -> None:
    month = api_city.city.issued_month
    with api_city.client("op-all") as c:
        for path in ("/accounts/hh-9999/bills", f"/accounts/hh-9999/bills/{month}", "/accounts/hh-9999/payments"):
            assert_problem(c.get(path), 404)
        assert_problem(c.get("/accounts/hh-0001/bills/2026-00"), 422)
    with api_city.client("op-d01") as c:
        assert_problem(c.get("/accounts/hh-9999/bills"), 403)  # it cannot probe which accounts exist


def test_a_draft_month_has_its_bill_as_it_stands(api_city: ApiCity) -> None:
    month = dt.datetime.fromtimestamp(api_city.city.now / 1000, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    with api_city.client("op-d02") as c:
        r = c.get(f"/accounts/hh-0001/bills/{month}")
    assert r.status_code == 200, r.text
    out = r.json()
    bill = out["bill"]
    assert (bill["status"], bill["month"], out["status"], out["payments"]) == ("draft", month, "draft", [])
    assert "hash" not in bill and "issued_at" not in bill
    assert {line["type"] for line in bill["lines"]} >= {"utility", "parking"}
    assert Decimal(bill["total"]) == sum(Decimal(line["amount"]) for line in bill["lines"]) > 0
    assert out["total"] == out["balance"] == bill["total"] and out["paid"] == "0.00"


def test_verify_deep_agrees_with_the_tables_after_payments(api_city: ApiCity, provider: str) -> None:
    with api_city.client(provider) as c:
        assert pay(c, "3.21", api_city.city.issued_month, "hh-0003").status_code == 201
    assert api_city.stack.api.payments("hh-0003")
    out = api_city.stack.cli("verify", "--deep")
    assert out.returncode == 0 and "registry tables agree with the chain" in out.stdout, out.stdout + out.stderr


def test_the_openapi_document_describes_the_operations(api_city: ApiCity) -> None:
    with api_city.client(None) as anon:
        doc = anon.get("/openapi.json").json()
    post = doc["paths"]["/v1/payments"]["post"]
    assert {"201", "403", "404", "409", "422"} <= set(post["responses"])
    assert "Idempotency-Key" in post["description"]
    for path in (
        "/v1/accounts/{account}/bills",
        "/v1/accounts/{account}/bills/{month}",
        "/v1/accounts/{account}/payments",
    ):
        assert {"200", "403", "404"} <= set(doc["paths"][path]["get"]["responses"])
