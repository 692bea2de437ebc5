"""The API's device registry and receipts against a real server over `build_city`'s data: lists and
pages, one device, enrolment (its broker password shown once, and working) and revocation, who may
do each, reads under a sharing grant, and receipts of both versions checked by the project's own
verifiers (ledger/chain/receipts.py, ledger/chain/tlogproof.py).

Tests that enrol devices enrol their own ids, so the city's devices stay as build_city made them.
"""

from __future__ import annotations

import json
from typing import Any

from nacl.signing import SigningKey
from pydantic import TypeAdapter

from ledger.chain.notes import parse_vkey
from ledger.chain.receipts import Receipt, receipt_ok, verify_receipt
from ledger.chain.tlogproof import tlog_proof_ok, verify_tlog_proof
from ledger.http.routes.devices import EnrolledOut, RevokedOut
from tests.support.api import ApiCity, logged, pages, refused
from tests.support.broker import wait_for
from tests.support.stack import SimDevice

CITY_DEVICES = {
    "wm-d02-000001",
    "em-d02-000001",
    "wm-d02-000002",
    "wm-d02-000003",
    "wm-d02-000004",
    "wm-d02-000005",
    "wm-d02-000006",
    "wm-d01-000001",
    "wm-d03-000001",
    "ps-d02-000001",
}


def enrolment(
    device: str, district: str = "d01", kind: str = "water", **extra: Any
) -> tuple[dict[str, Any], SigningKey]:
    key = SigningKey.generate()
    return {
        "device": device,
        "kind": kind,
        "district": district,
        "public_key": key.verify_key.encode().hex(),
        **extra,
    }, key


def secrets_in(doc: Any) -> set[str]:
    """Keys anywhere in a document that would hold a broker credential."""
    text = json.dumps(doc)
    return {k for k in ("mqtt_hash", "mqtt_password", "password") if f'"{k}"' in text}


# ---------------------------------------------------------------- devices


def test_devices_are_listed_in_the_callers_districts_and_paged(api_city: ApiCity) -> None:
    with api_city.client("op-all") as op:
        everything, count = pages(op, "/devices", limit=3)
        ids = [d["device"] for d in everything]
        assert CITY_DEVICES <= set(ids) and ids == sorted(set(ids)) and count == -(-len(ids) // 3)
        assert ids == sorted(d["device"] for d in api_city.stack.api.devices())
        d01 = op.get("/devices", params={"district": "d01", "limit": 500}).json()["items"]
        assert {d["district"] for d in d01} == {"d01"} and "wm-d01-000001" in [d["device"] for d in d01]
    with api_city.client("op-d02") as op:
        mine = op.get("/devices").json()["items"]
        assert {d["district"] for d in mine} == {"d02"} and "ps-d02-000001" in [d["device"] for d in mine]
        meter = next(d for d in mine if d["device"] == "wm-d02-000001")
        assert (meter["kind"], meter["account"], meter["status"], meter["online"]) == (
            "water",
            "hh-0001",
            "active",
            "online",
        )
        assert meter["enrolled_at"].endswith("Z") and meter["revoked_at"] is None and meter["revoked_at_ms"] is None
        assert secrets_in(mine) == set()
        assert refused(op.get("/devices", params={"district": "d01"}), 403)
        assert refused(op.get("/devices", params={"district": "D01!"}), 422)
        assert refused(op.get("/devices", params={"limit": 501}), 422)
        assert refused(op.get("/devices", params={"cursor": "eyJ4IjoxfQ"}), 422)  # {"x":1}: not one of ours


def test_one_device_with_its_newest_reading_and_never_its_password_hash(api_city: ApiCity) -> None:
    with api_city.client("op-d02") as op:
        r = op.get("/devices/wm-d02-000001")
        assert r.status_code == 200, r.text
        found = r.json()
        assert (found["district"], found["account"], found["online"]) == ("d02", "hh-0001", "online")
        assert found["public_key"] == api_city.city.keys["wm-d02-000001"].verify_key.encode().hex()
        assert found["last"]["seq"] > 9000 and found["last"]["ts"].endswith("Z")  # 400 days, hourly
        assert found["suspension"] is None and secrets_in(found) == set()
        assert refused(op.get("/devices/wm-d01-000001"), 403)
        assert refused(op.get("/devices/no-such-device"), 404)
        assert refused(op.get("/devices/bad$id"), 422)


def test_an_operator_enrols_a_device_which_then_connects_with_the_password_shown_once(api_city: ApiCity) -> None:
    body, key = enrolment("wm-d01-000101", account="hh-0003")
    with api_city.client("op-d02") as other:
        assert refused(other.post("/devices", json=body), 403)
    with api_city.client(api_city.agency("fleet-viewer", "d01:devices")) as reader:
        assert refused(reader.post("/devices", json=body), 403)  # read scope only
    with api_city.client("op-d01") as op:
        assert refused(op.post("/devices", json={**body, "kind": "steam"}), 422)
        assert refused(op.post("/devices", json={**body, "public_key": "zz" * 32}), 422)
        assert refused(op.post("/devices", json={**body, "account": "hh-9999"}), 422)
        assert refused(op.post("/devices", json={**body, "district": "ledger"}), 422)
        made = op.post("/devices", json=body)
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        login = made.json()
        assert login["device"] == login["mqtt_username"] == "wm-d01-000101" and len(login["mqtt_password"]) >= 16
        EnrolledOut.model_validate(login, strict=True)  # a write's answer skips FastAPI's check
        assert refused(op.post("/devices", json=body), 409)  # enrolled already
        shown = op.get("/devices/wm-d01-000101").json()
        assert (shown["status"], shown["account"], shown["district"]) == ("active", "hh-0003", "d01")
    device = SimDevice("wm-d01-000101", "water", "d01", key, login["mqtt_password"])
    api_city.stack.ledger_readings(device, 2)  # the broker takes the login, the ledger the readings


def test_an_enrolment_and_a_revocation_with_an_idempotency_key_happen_once(api_city: ApiCity) -> None:
    body, _ = enrolment("wm-d01-000102")
    with api_city.client("op-d01") as op:
        first = op.post("/devices", json=body, headers={"Idempotency-Key": "enrol-102"})
        again = op.post("/devices", json=body, headers={"Idempotency-Key": "enrol-102"})
        assert first.status_code == again.status_code == 201, first.text
        assert first.json()["mqtt_password"] and again.json()["mqtt_password"] is None  # never kept to repeat
        assert again.json()["block"] == first.json()["block"] and again.headers["idempotent-replayed"] == "true"
        other, _ = enrolment("wm-d01-000103")
        assert refused(op.post("/devices", json=other, headers={"Idempotency-Key": "enrol-102"}), 409)
        assert [d["device"] for d in api_city.stack.api.devices()].count("wm-d01-000102") == 1

    with api_city.client("op-d02") as other_op:
        assert refused(other_op.post("/devices/wm-d01-000102/revoke"), 403)
    with api_city.client("op-d01") as op:
        gone = op.post("/devices/wm-d01-000102/revoke", headers={"Idempotency-Key": "revoke-102"})
        replay = op.post("/devices/wm-d01-000102/revoke", headers={"Idempotency-Key": "revoke-102"})
        assert gone.status_code == replay.status_code == 200, gone.text
        assert replay.json() == gone.json() and gone.json()["operator"] == "op-d01"
        assert gone.json()["revoked_at"].endswith("Z")
        RevokedOut.model_validate(gone.json(), strict=True)
        assert refused(op.post("/devices/wm-d01-000102/revoke"), 409)  # a second revocation, without the key
        assert refused(op.post("/devices/no-such-device/revoke"), 404)
        assert op.get("/devices/wm-d01-000102").json()["status"] == "revoked"


def test_an_agency_reads_devices_under_a_grant_and_the_district_logs_it(api_city: ApiCity) -> None:
    token = api_city.agency("meter-audit", "d03:devices")
    grant = api_city.stack.api.grant_sharing("d02", "meter-audit", "devices", "10d", "op-d02")
    with api_city.client(token) as agency:
        assert agency.get("/devices/wm-d02-000001").status_code == 200
        listed = agency.get("/devices").json()["items"]
        assert {d["district"] for d in listed} == {"d02", "d03"}
        assert refused(agency.get("/devices/wm-d01-000001"), 403)
        body, _ = enrolment("wm-d02-000901", district="d02")
        assert refused(agency.post("/devices", json=body), 403)  # a grant is read-only
    rows = logged(api_city, "d02", "meter-audit")
    assert [(r["path"], r["grant"], r["records"]) for r in rows] == [
        ("/v1/devices/wm-d02-000001", grant["id"], 1),
        ("/v1/devices", grant["id"], sum(d["district"] == "d02" for d in listed)),
    ]


# ---------------------------------------------------------------- receipts


def test_a_receipt_fetched_over_http_verifies_with_the_projects_verifier(api_city: ApiCity) -> None:
    with api_city.client("op-d02") as op:
        r = op.get("/receipts/wm-d02-000001/42")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert op.get("/receipts/wm-d02-000001/42", params={"version": 1}).content == r.content
        assert refused(op.get("/receipts/wm-d01-000001/1"), 403)
        assert refused(op.get("/receipts/no-such-device/1"), 404)
        assert refused(op.get("/receipts/wm-d02-000001/999999999"), 404)
        assert refused(op.get("/receipts/wm-d02-000001/-1"), 422)
        assert refused(op.get("/receipts/wm-d02-000001/1", params={"version": 3}), 422)
    trusted = api_city.stack.api.ledger_key()
    checks = verify_receipt(r.content, trusted)
    assert receipt_ok(checks), checks
    receipt = TypeAdapter(Receipt).validate_python(r.json(), strict=True)
    assert (receipt["reading"]["device"], receipt["reading"]["seq"]) == ("wm-d02-000001", 42)
    forged = {**receipt, "reading": {**receipt["reading"], "value": receipt["reading"]["value"] + 1}}
    assert not receipt_ok(verify_receipt(forged, trusted))
    assert not receipt_ok(verify_receipt(r.content, "00" * 32))


def test_a_version_2_receipt_is_a_tlog_proof_that_verifies(api_city: ApiCity) -> None:
    def covered() -> bool:
        log = api_city.stack.status()["log"]
        return log["checkpoint_size"] is not None and log["checkpoint_size"] >= 100

    wait_for(covered, 30, "a published checkpoint over the city's first readings")
    with api_city.client("op-d02") as op:
        r = op.get("/receipts/wm-d02-000001/7", params={"version": 2})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        assert r.text.startswith("c2sp.org/tlog-proof@v1\n")
    device_key = api_city.city.keys["wm-d02-000001"].verify_key.encode().hex()
    ledger_keys = [parse_vkey(api_city.stack.api.log_vkey())]
    checks = verify_tlog_proof(r.text, device_key=device_key, ledger_keys=ledger_keys, policy=None)
    assert tlog_proof_ok(checks), checks
    other_key = SigningKey.generate().verify_key.encode().hex()
    assert not tlog_proof_ok(verify_tlog_proof(r.text, device_key=other_key, ledger_keys=ledger_keys, policy=None))


def test_an_agency_fetches_receipts_under_a_grant_and_the_district_logs_it(api_city: ApiCity) -> None:
    token = api_city.agency("proof-checker", "d03:receipts")
    grant = api_city.stack.api.grant_sharing("d02", "proof-checker", "receipts", "10d", "op-d02")
    with api_city.client(token) as agency:
        r = agency.get("/receipts/wm-d02-000002/3")
        assert r.status_code == 200, r.text
        assert refused(agency.get("/receipts/wm-d01-000001/3"), 403)
    assert receipt_ok(verify_receipt(r.content, api_city.stack.api.ledger_key()))
    rows = logged(api_city, "d02", "proof-checker")
    assert [(r["path"], r["grant"], r["records"]) for r in rows] == [("/v1/receipts/wm-d02-000002/3", grant["id"], 1)]


def test_no_device_answer_holds_a_broker_secret(api_city: ApiCity) -> None:
    """Every device read an operator of all districts can make, searched for a credential's key."""
    with api_city.client("op-all") as op:
        listed, _ = pages(op, "/devices")
        shown = [op.get(f"/devices/{d['device']}").json() for d in listed]
    assert secrets_in(listed) == secrets_in(shown) == set()
    assert all(isinstance(d["public_key"], str) and len(d["public_key"]) == 64 for d in shown)
