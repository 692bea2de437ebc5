"""The API's callers against a real server: tokens, scopes, grants and the behaviour a client relies
on (problem documents, rate limits, body caps, idempotent writes, CORS, TLS)."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from broker.certs import ensure_certs
from ledger.http.wire import rfc3339
from tests.support.api import FAR, PROBLEM, ApiCity, start_api, stop_api
from tests.support.broker import wait_for


def grant_body(district: str, agency: str, dataset: str = "readings", until: str = "10d") -> dict[str, str]:
    return {"from_district": district, "to_agency": agency, "dataset": dataset, "until": until}


def refusals(api_city: ApiCity, district: str) -> list[dict]:
    return api_city.stack.api.access_log(district, 0, FAR, grants_only=False)["items"]


def test_health_needs_no_token_and_status_needs_one(api_city: ApiCity) -> None:
    with api_city.client(None) as anon:
        assert anon.get("/health").json()["status"] == "ok"
        r = anon.get("/status")
        assert r.status_code == 401
        assert r.headers["content-type"] == PROBLEM and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["status"] == 401 and r.json()["type"].startswith("urn:cityledger:problem:")
    with api_city.client("clt_0123456789ab_" + "x" * 43) as forged:
        assert forged.get("/status").status_code == 401
    with api_city.client("op-d01") as op:
        body = op.get("/status").json()
        assert body["height"] >= 0 and body["ingest"]["running"] is True
        assert body["ingest"]["started_at"].endswith("Z") and isinstance(body["ingest"]["started_at_ms"], int)


def test_unknown_routes_and_methods_are_problem_documents(api_city: ApiCity) -> None:
    with api_city.client("op-d01") as op:
        missing = op.get("/no-such-thing")
        assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
        wrong = op.put("/status")
        assert wrong.status_code == 405 and wrong.json()["status"] == 405


def test_an_operator_grants_only_for_their_own_district_and_a_refusal_is_logged(api_city: ApiCity) -> None:
    api_city.agency("atlas-gis", "d03:parking")
    before = len(refusals(api_city, "d02"))
    with api_city.client("op-d01") as op:
        denied = op.post("/sharing/grants", json=grant_body("d02", "atlas-gis"))
        assert denied.status_code == 403 and denied.headers["content-type"] == PROBLEM
        made = op.post("/sharing/grants", json=grant_body("d01", "atlas-gis"))
        assert made.status_code == 201, made.text
    logged = refusals(api_city, "d02")[before:]
    assert [(r["principal"], r["status"], r["path"]) for r in logged] == [("op-d01", 403, "/v1/sharing/grants")]
    grant = made.json()
    assert grant["until"].endswith("Z") and grant["until_ms"] > grant["granted_at_ms"]
    # The register: the district's operator and the agency see the grant; another district's operator does not.
    with api_city.client("op-d01") as op:
        assert grant["id"] in [g["id"] for g in op.get("/sharing/grants").json()]
    with api_city.client("op-d02") as other:
        assert grant["id"] not in [g["id"] for g in other.get("/sharing/grants").json()]
        assert other.get("/sharing/grants", params={"district": "d01"}).status_code == 403
    with api_city.client(api_city.agency("atlas-gis", "d03:parking")) as agency:
        assert [g["id"] for g in agency.get("/sharing/grants").json()] == [grant["id"]]
    # Revoked by its district: gone from the live register, and the revocation is sealed.
    height = api_city.stack.api.status()["height"]
    with api_city.client("op-d02") as other:
        assert other.delete(f"/sharing/grants/{grant['id']}").status_code == 403
    with api_city.client("op-d01") as op:
        gone = op.delete(f"/sharing/grants/{grant['id']}")
        assert gone.status_code == 200 and gone.json()["revoked_at_ms"] > 0
        assert op.delete(f"/sharing/grants/{grant['id']}").status_code == 422  # revoked already
        assert op.delete("/sharing/grants/g-000000000000").status_code == 404
    assert api_city.stack.api.status()["height"] > height
    [row] = [g for g in api_city.stack.api.sharing_grants("d01") if g["id"] == grant["id"]]
    assert row["revoked_by"] == "op-d01"


def test_a_grant_to_an_unknown_agency_or_of_a_bad_dataset_is_refused(api_city: ApiCity) -> None:
    with api_city.client("op-d01") as op:
        assert op.post("/sharing/grants", json=grant_body("d01", "nobody-here")).status_code == 404
        assert op.post("/sharing/grants", json=grant_body("d01", "atlas-gis", "weather")).status_code == 422
        assert op.post("/sharing/grants", json=grant_body("d01", "atlas-gis", until="2001-01-01")).status_code == 422
        bad = op.post("/sharing/grants", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM


def test_a_write_with_an_idempotency_key_happens_once(api_city: ApiCity) -> None:
    api_city.agency("river-board", "d03:parking")
    key = {"Idempotency-Key": "grant-river-board-1"}
    with api_city.client("op-d01") as op:
        first = op.post("/sharing/grants", json=grant_body("d01", "river-board"), headers=key)
        again = op.post("/sharing/grants", json=grant_body("d01", "river-board"), headers=key)
        other = op.post("/sharing/grants", json=grant_body("d01", "river-board", "bills"), headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409 and other.headers["content-type"] == PROBLEM
    assert [g["id"] for g in api_city.stack.api.sharing_grants(agency="river-board")] == [first.json()["id"]]


def test_each_token_has_its_rate_and_is_told_when_to_retry(api_city: ApiCity) -> None:
    with api_city.client(api_city.agency("slow-poller", "d01:readings", rate=3)) as agency:
        answers = [agency.get("/status") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1 and answers[-1].headers["content-type"] == PROBLEM
    with api_city.client("op-d01") as op:  # another token is not held back
        assert op.get("/status").status_code == 200


def test_a_body_over_the_cap_is_refused_before_it_is_read(api_city: ApiCity) -> None:
    with api_city.client("op-d01") as op:
        big = op.post(
            "/sharing/grants", content=b"{" + b" " * 100_000 + b"}", headers={"content-type": "application/json"}
        )
        assert big.status_code == 413 and big.headers["content-type"] == PROBLEM

        def chunks():  # no Content-Length: counted as it streams in
            for _ in range(20):
                yield b" " * 10_000

        streamed = op.post("/sharing/grants", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_a_revoked_token_stops_working(api_city: ApiCity) -> None:
    token = api_city.agency("short-lived", "d01:readings")
    with api_city.client(token) as agency:
        assert agency.get("/status").status_code == 200
        token_id = token.split("_")[1]
        api_city.stack.api.revoke_token(token_id, "op-all")
        wait_for(lambda: agency.get("/status").status_code == 401, 10, "the revoked token refused")
    assert [t["revoked_at"] is not None for t in api_city.stack.api.api_tokens("short-lived")] == [True]


def test_the_cli_makes_tokens_shown_once_and_lists_them_without_secrets(api_city: ApiCity) -> None:
    made = api_city.stack.cli_json("agencies", "add", "pay-co", "--scope", "all:payments:write", "--json")
    assert made["token"].startswith("clt_") and made["scopes"] == ["all:payments:write"]
    listed = api_city.stack.cli("agencies", "list", "pay-co", check=True).stdout
    assert made["id"] in listed and made["token"] not in listed and made["token"].split("_", 2)[2] not in listed
    refused = api_city.stack.cli("agencies", "add", "pay-co", "--scope", "d01:weather")
    assert refused.returncode == 2 and "not weather" in refused.stderr and "readings" in refused.stderr
    with api_city.client(made["token"]) as agency:
        assert agency.get("/status").status_code == 200


def test_cors_is_off_unless_configured(api_city: ApiCity, tmp_path) -> None:
    origin = {"Origin": "https://gis.example", "Access-Control-Request-Method": "GET"}
    with api_city.client("op-d01") as op:
        assert "access-control-allow-origin" not in op.get("/status", headers=origin).headers
    proc, url = start_api(api_city.stack.env, tmp_path / "cors.log", "--cors-origin", "https://gis.example")
    try:
        r = httpx.options(url + "/status", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://gis.example"
        other = httpx.options(url + "/status", headers={**origin, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        stop_api(proc)


def test_tls_with_the_brokers_certificate(api_city: ApiCity, tmp_path) -> None:
    trusted = ssl.create_default_context(cafile=str(ensure_certs(api_city.stack.home).ca))
    proc, url = start_api(api_city.stack.env, tmp_path / "tls.log", "--tls", scheme="https", verify=trusted)
    try:
        assert url.startswith("https://")
        r = httpx.get(url + "/status", headers={"Authorization": f"Bearer {api_city.tokens['op-d01']}"}, verify=trusted)
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/health", timeout=5)
    finally:
        stop_api(proc)


def test_a_grant_used_until_it_expires_then_refused_and_both_logged(api_city: ApiCity) -> None:
    token = api_city.agency("tide-office", "d03:parking")
    soon = rfc3339(int(time.time() * 1000) + 8_000)  # the grant ends in eight seconds
    grant = api_city.stack.api.grant_sharing("d02", "tide-office", "readings", soon, "op-d02")
    path = "/devices/wm-d02-000001/readings"
    start = int(time.time() * 1000) - 2 * 86_400_000
    with api_city.client(token) as agency:
        used = wait_for(
            lambda: (r := agency.get(path, params={"from": start})).status_code == 200 and r, 10, "the grant"
        )
        wait_for(
            lambda: agency.get(path, params={"from": start}).status_code == 403, 30, "the grant to expire", every=0.5
        )
    log = [r for r in refusals(api_city, "d02") if r["principal"] == "tide-office"]
    assert (log[0]["grant"], log[0]["status"], log[0]["records"]) == (grant["id"], 200, len(used.json()["items"]))
    assert log[-1]["status"] == 403 and log[-1]["grant"] is None


def test_a_token_past_its_expiry_is_refused(api_city: ApiCity) -> None:
    soon = rfc3339(int(time.time() * 1000) + 5_000)
    token = api_city.agency("brief-visitor", "d01:readings", expires=soon)
    with api_city.client(token) as agency:
        assert agency.get("/status").status_code == 200
        wait_for(lambda: agency.get("/status").status_code == 401, 30, "the token to expire", every=0.5)


def test_an_operators_token_follows_the_districts_they_look_after(api_city: ApiCity) -> None:
    api_city.stack.api.add_operator(operator="op-move", name="Moves desks", districts="d01")
    token = api_city.stack.api.issue_token(kind="operator", principal="op-move")["token"]
    with api_city.client(token) as op:
        assert op.get("/sharing/grants", params={"district": "d01"}).status_code == 200
        assert op.get("/sharing/grants", params={"district": "d03"}).status_code == 403
        moved = api_city.stack.cli_json(
            "operators", "set-districts", "op-move", "--districts", "d03", "--operator", "op-all"
        )
        assert moved["districts"] == ["d03"]
        wait_for(lambda: op.get("/sharing/grants", params={"district": "d03"}).status_code == 200, 10, "the new scope")
        assert op.get("/sharing/grants", params={"district": "d01"}).status_code == 403
    [row] = [o for o in api_city.stack.api.operators() if o["operator"] == "op-move"]
    assert row["districts"] == ["d03"]
