"""The API's callers against a real server: tokens, scopes, grants made, used, expired, revoked and logged."""

from __future__ import annotations

from tests.support.api import ApiCity


def test_health_needs_no_token_and_status_needs_one(api_city: ApiCity) -> None:
    with api_city.client(None) as anon:
        assert anon.get("/health").json()["status"] == "ok"
        r = anon.get("/status")
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 401
    with api_city.client("op-d01") as op:
        body = op.get("/status").json()
        assert body["height"] >= 0 and body["ingest"]["running"] is True
