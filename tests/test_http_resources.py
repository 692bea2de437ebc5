"""The API's anomalies and disputes against a real server over `build_city`'s data: lists and pages,
one by one, the writes (acknowledge, resolve, dismiss; open, answer, close), who may do each, and
reads under a sharing grant, which the granting district's access log records.

The module shares one city: each test writes only to what it owns (its own anomaly, dispute,
agency), so that no test depends on another's order or outcome. Devices and receipts are in
test_http_resources_devices.py, parking in test_http_resources_parking.py.
"""

from __future__ import annotations

from ledger.http.routes.anomalies import AnomalyDetailOut
from ledger.http.routes.disputes import DisputeOut
from ledger.http.wire import encode_cursor
from tests.support.api import FAR, ApiCity, logged, pages, refused


def test_a_token_with_no_scope_on_a_dataset_may_not_list_it(api_city: ApiCity) -> None:
    with api_city.client(api_city.agency("readings-only", "d01:readings")) as agency:
        for path in ("/anomalies", "/devices", "/disputes", "/parking/occupancy"):
            assert refused(agency.get(path), 403), path
    refusals = [
        r for r in api_city.stack.api.access_log(None, 0, FAR, False)["items"] if r["principal"] == "readings-only"
    ]
    assert sorted(r["path"] for r in refusals) == [
        "/v1/anomalies",
        "/v1/devices",
        "/v1/disputes",
        "/v1/parking/occupancy",
    ]


# ---------------------------------------------------------------- anomalies


def test_anomalies_are_listed_in_the_callers_districts_and_paged(api_city: ApiCity) -> None:
    d01, d02 = api_city.city.anomalies["d01"], api_city.city.anomalies["d02"]
    with api_city.client("op-all") as op:
        everything, _ = pages(op, "/anomalies")
        ids = [a["id"] for a in everything]
        assert {d01, d02} <= set(ids) and len(ids) == len(set(ids))
        one_by_one, count = pages(op, "/anomalies", limit=1)
        assert [a["id"] for a in one_by_one] == ids and count == len(ids)
        assert [a["id"] for a in op.get("/anomalies", params={"district": "d02"}).json()["items"]] == [d02]
        leaks = op.get("/anomalies", params={"kind": "leak"}).json()["items"]
        assert [a["id"] for a in leaks] == [d02] and leaks[0]["type"] == "leak"
        tamper = op.get("/anomalies", params={"kind": "tamper", "district": "d01"}).json()["items"]
        assert [a["id"] for a in tamper] == [d01]
    with api_city.client("op-d01") as op:
        mine = op.get("/anomalies").json()
        assert [a["id"] for a in mine["items"]] == [d01] and mine["next"] is None
        first = mine["items"][0]
        assert first["district"] == "d01" and first["raised_at"].endswith("Z")
        assert first["window_start_ms"] < first["window_end_ms"] and first["window_end"].endswith("Z")
        assert first["evidence"] and all(set(e) == {"device", "seq"} for e in first["evidence"])
        assert refused(op.get("/anomalies", params={"district": "d02"}), 403)
        assert refused(op.get("/anomalies", params={"status": "forgotten"}), 422)
        assert refused(op.get("/anomalies", params={"limit": 0}), 422)
        assert refused(op.get("/anomalies", params={"kind": "Leak!"}), 422)
        assert refused(op.get("/anomalies", params={"cursor": "not a cursor"}), 422)
        assert refused(op.get("/anomalies", params={"cursor": encode_cursor(["x"])}), 422)


def test_one_anomaly_with_its_history_in_its_district_only(api_city: ApiCity) -> None:
    d02 = api_city.city.anomalies["d02"]
    with api_city.client("op-d02") as op:
        r = op.get(f"/anomalies/{d02}")
        assert r.status_code == 200, r.text
        found = r.json()
        assert found["device"] == "wm-d02-000001" and found["account"] == "hh-0001"
        assert found["detail"] == "night flow never below 8 L/h for 2 nights"
        raised = found["history"][0]
        assert (raised["status"], raised["operator"]) == ("open", "detector") and raised["at"].endswith("Z")
        assert raised["at_ms"] == found["raised_at_ms"]
        assert refused(op.get("/anomalies/an-0000000000"), 404)
        assert refused(op.get("/anomalies/not%20an%20id"), 422)
    with api_city.client("op-d01") as other:
        assert refused(other.get(f"/anomalies/{d02}"), 403)


def test_an_operator_works_an_anomaly_through_to_resolved(api_city: ApiCity) -> None:
    d02 = api_city.city.anomalies["d02"]
    with api_city.client("op-d01") as other:
        assert refused(other.post(f"/anomalies/{d02}/ack", json={}), 403)
    with api_city.client(api_city.agency("leak-readers", "d02:anomalies")) as reader:
        assert refused(reader.post(f"/anomalies/{d02}/ack", json={}), 403)  # read scope only
    with api_city.client("op-d02") as op:
        acked = op.post(f"/anomalies/{d02}/ack", json={})
        assert acked.status_code == 200, acked.text
        assert acked.json()["status"] == "acknowledged" and acked.json()["history"][-1]["operator"] == "op-d02"
        AnomalyDetailOut.model_validate(acked.json(), strict=True)  # a write's answer skips FastAPI's check
        assert refused(op.post(f"/anomalies/{d02}/resolve", json={}), 422)  # a resolution says why
        assert refused(op.post(f"/anomalies/{d02}/resolve", json={"note": "x" * 2001}), 422)
        done = op.post(f"/anomalies/{d02}/resolve", json={"note": "pipe fixed"})
        assert done.status_code == 200 and done.json()["status"] == "resolved"
        assert refused(op.post(f"/anomalies/{d02}/dismiss", json={"note": "too late"}), 422)  # resolved already
        assert refused(op.post("/anomalies/an-0000000000/ack", json={}), 404)
    history = api_city.stack.api.anomaly(d02)["history"]
    assert [(e["status"], e["operator"], e["note"]) for e in history[-2:]] == [
        ("acknowledged", "op-d02", None),
        ("resolved", "op-d02", "pipe fixed"),
    ]


def test_an_acknowledgement_with_an_idempotency_key_is_made_once(api_city: ApiCity) -> None:
    d01 = api_city.city.anomalies["d01"]
    key = {"Idempotency-Key": "ack-d01-once"}
    with api_city.client("op-d01") as op:
        first = op.post(f"/anomalies/{d01}/ack", json={"note": "looking"}, headers=key)
        again = op.post(f"/anomalies/{d01}/ack", json={"note": "looking"}, headers=key)
        other = op.post(f"/anomalies/{d01}/ack", json={"note": "something else"}, headers=key)
        unkeyed = op.post(f"/anomalies/{d01}/ack", json={"note": "looking"})
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert refused(other, 409)
    assert refused(unkeyed, 422)  # without the key it is a second request, and the state forbids it
    history = api_city.stack.api.anomaly(d01)["history"]
    assert [e["status"] for e in history].count("acknowledged") == 1


def test_an_agency_reads_anomalies_under_a_grant_and_the_district_logs_it(api_city: ApiCity) -> None:
    d01, d02 = api_city.city.anomalies["d01"], api_city.city.anomalies["d02"]
    token = api_city.agency("anomaly-watch", "d03:anomalies")
    grant = api_city.stack.api.grant_sharing("d02", "anomaly-watch", "anomalies", "10d", "op-d02")
    with api_city.client(token) as agency:
        one = agency.get(f"/anomalies/{d02}")
        assert one.status_code == 200, one.text
        listed = agency.get("/anomalies").json()["items"]
        assert d02 in [a["id"] for a in listed] and {a["district"] for a in listed} <= {"d02", "d03"}
        assert refused(agency.get(f"/anomalies/{d01}"), 403)  # no grant from d01
        assert refused(agency.post(f"/anomalies/{d02}/ack", json={}), 403)  # a grant is read-only
    rows = logged(api_city, "d02", "anomaly-watch")
    assert [(r["path"], r["grant"], r["status"], r["records"]) for r in rows] == [
        (f"/v1/anomalies/{d02}", grant["id"], 200, 1),
        ("/v1/anomalies", grant["id"], 200, sum(a["district"] == "d02" for a in listed)),
    ]
    assert logged(api_city, "d03", "anomaly-watch") == []  # its own scope: not a read under a grant
    with api_city.client(api_city.agency("anomaly-other", "d03:anomalies")) as ungranted:
        assert refused(ungranted.get(f"/anomalies/{d02}"), 403)


# ---------------------------------------------------------------- disputes


def test_disputes_are_listed_for_the_accounts_in_the_callers_districts(api_city: ApiCity) -> None:
    d01 = api_city.city.disputes["d01"]
    with api_city.client("op-d01") as op:
        mine = [d["id"] for d in op.get("/disputes").json()["items"]]
        assert d01 in mine
        of_account = op.get("/disputes", params={"account": "hh-0003"}).json()["items"]
        assert d01 in [d["id"] for d in of_account] and {d["account"] for d in of_account} == {"hh-0003"}
        assert refused(op.get("/disputes", params={"account": "hh-0001"}), 403)  # a d02 household
        assert refused(op.get("/disputes", params={"district": "d02"}), 403)
        assert refused(op.get("/disputes", params={"account": "hh-9999"}), 403)  # a district cannot probe
        with api_city.client("op-all") as city:
            assert refused(city.get("/disputes", params={"account": "hh-9999"}), 404)
        assert refused(op.get("/disputes", params={"account": "no spaces"}), 422)
    with api_city.client("op-d02") as other:
        assert d01 not in [d["id"] for d in other.get("/disputes").json()["items"]]


def test_one_dispute_with_its_messages(api_city: ApiCity) -> None:
    d01 = api_city.city.disputes["d01"]
    with api_city.client("op-d01") as op:
        r = op.get(f"/disputes/{d01}")
        assert r.status_code == 200, r.text
        found = r.json()
        assert (found["account"], found["subject"]) == ("hh-0003", "Meter wm-d01-000001")
        first = found["messages"][0]
        assert (first["author"], first["message"]) == ("hh-0003", "My meter reads twice what I use.")
        assert found["opened_at"].endswith("Z") and found["opened_at_ms"] == first["at_ms"]
        assert refused(op.get("/disputes/dsp-0000000000"), 404)
        assert refused(op.get("/disputes/" + "x" * 65), 422)
    with api_city.client("op-d02") as other:
        assert refused(other.get(f"/disputes/{d01}"), 403)


def test_an_operator_opens_answers_and_closes_a_dispute(api_city: ApiCity) -> None:
    with api_city.client("op-d01") as other:
        body = {"account": "hh-0001", "subject": "Parking fee", "message": "Charged twice."}
        assert refused(other.post("/disputes", json=body), 403)
    with api_city.client("op-d02") as op:
        assert refused(op.post("/disputes", json={"account": "hh-0001", "subject": "x", "message": "   "}), 422)
        assert refused(op.post("/disputes", json={"account": "hh-0001", "message": "no subject"}), 422)
        assert refused(op.post("/disputes", json={"account": "hh-9999", "subject": "x", "message": "y"}), 403)
        with api_city.client("op-all") as city:
            assert refused(city.post("/disputes", json={"account": "hh-9999", "subject": "x", "message": "y"}), 404)
        made = op.post("/disputes", json={"account": "hh-0001", "subject": "Parking fee", "message": "Charged twice."})
        assert made.status_code == 201, made.text
        dispute = made.json()
        assert dispute["status"] == "open" and [m["author"] for m in dispute["messages"]] == ["op-d02"]
        DisputeOut.model_validate(dispute, strict=True)  # a write's answer skips FastAPI's check
        answered = op.post(f"/disputes/{dispute['id']}/answer", json={"message": "We refund one."})
        assert answered.status_code == 200 and answered.json()["status"] == "answered"
        assert refused(op.post(f"/disputes/{dispute['id']}/close", json={"message": ""}), 422)
        closed = op.post(f"/disputes/{dispute['id']}/close", json={"message": "Refunded."})
        assert closed.status_code == 200 and closed.json()["status"] == "closed"
        assert refused(op.post("/disputes/dsp-0000000000/answer", json={"message": "?"}), 404)
        listed = op.get("/disputes", params={"account": "hh-0001"}).json()["items"]
    assert [d["id"] for d in listed if d["id"] == dispute["id"]] == [dispute["id"]]
    [stored] = [d for d in api_city.stack.api.disputes(account="hh-0001") if d["id"] == dispute["id"]]
    assert [(m["status"], m["message"]) for m in stored["messages"]] == [
        ("open", "Charged twice."),
        ("answered", "We refund one."),
        ("closed", "Refunded."),
    ]
    with api_city.client("op-d01") as other:
        assert refused(other.post(f"/disputes/{dispute['id']}/answer", json={"message": "not mine"}), 403)


def test_opening_a_dispute_with_an_idempotency_key_opens_one(api_city: ApiCity) -> None:
    body = {"account": "hh-0001", "subject": "Water bill, once", "message": "The March bill is high."}
    key = {"Idempotency-Key": "open-water-bill-1"}
    with api_city.client("op-d02") as op:
        first = op.post("/disputes", json=body, headers=key)
        again = op.post("/disputes", json=body, headers=key)
        other = op.post("/disputes", json={**body, "message": "Another complaint."}, headers=key)
    assert first.status_code == again.status_code == 201, first.text
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert refused(other, 409)
    same = [d for d in api_city.stack.api.disputes(account="hh-0001") if d["subject"] == body["subject"]]
    assert [d["id"] for d in same] == [first.json()["id"]]


def test_disputes_page_by_last_activity(api_city: ApiCity) -> None:
    with api_city.client("op-all") as op:
        for n in range(3):
            made = op.post("/disputes", json={"account": "hh-0003", "subject": f"Page {n}", "message": "..."})
            assert made.status_code == 201
        everything = op.get("/disputes", params={"account": "hh-0003"}).json()
        assert everything["next"] is None and len(everything["items"]) >= 4
        one_by_one, _ = pages(op, "/disputes", account="hh-0003", limit=1)
        assert [d["id"] for d in one_by_one] == [d["id"] for d in everything["items"]]
        last = [d["messages"][-1]["at_ms"] for d in one_by_one]
        assert last == sorted(last, reverse=True)


def test_an_agency_reads_a_dispute_under_a_grant_and_the_district_logs_it(api_city: ApiCity) -> None:
    d01 = api_city.city.disputes["d01"]
    token = api_city.agency("ombudsman", "d03:disputes")
    grant = api_city.stack.api.grant_sharing("d01", "ombudsman", "disputes", "10d", "op-d01")
    with api_city.client(token) as agency:
        assert agency.get(f"/disputes/{d01}").status_code == 200
        listed = agency.get("/disputes", params={"district": "d01"}).json()["items"]
        assert d01 in [d["id"] for d in listed]
        assert refused(agency.get("/disputes", params={"district": "d02"}), 403)
        assert refused(agency.post(f"/disputes/{d01}/answer", json={"message": "we look into it"}), 403)
    rows = logged(api_city, "d01", "ombudsman")
    assert [(r["path"], r["grant"], r["records"]) for r in rows] == [
        (f"/v1/disputes/{d01}", grant["id"], 1),
        ("/v1/disputes", grant["id"], len(listed)),
    ]
