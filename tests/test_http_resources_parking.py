"""The API's parking against a real server over `build_city`'s data: occupancy per zone class over
time, and the stays a bill charges (an account's parking lines, a space's stays by payer), who may
read them, and reads under a sharing grant, which the granting district's access log records.

build_city's space ps-d02-000001 is leased to hh-0001 and taken 08:00 to 09:40 every morning of
the past 70 days; last month is issued.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ledger.http.wire import rfc3339
from tests.support.api import ApiCity, logged, refused

SPACE = "ps-d02-000001"
HOUR_MS = 3_600_000


def occupancy_params(api_city: ApiCity, days: int = 3, **extra: Any) -> dict[str, Any]:
    """From the hour `days` before build_city's now (buckets start at `from`) to now."""
    now = api_city.city.now
    return {"from": rfc3339(hour_before(now, days)), "to": rfc3339(now), **extra}


def hour_before(now: int, days: int) -> int:
    return (now - days * 24 * HOUR_MS) // HOUR_MS * HOUR_MS


def test_occupancy_per_zone_class_and_bucket_in_the_callers_districts(api_city: ApiCity) -> None:
    now = api_city.city.now
    with api_city.client("op-d02") as op:
        r = op.get("/parking/occupancy", params=occupancy_params(api_city, district="d02", bucket="1h"))
        assert r.status_code == 200, r.text
        body = r.json()
    start = hour_before(now, 3)
    assert (body["district"], body["start_ms"], body["end_ms"], body["bucket"]) == ("d02", start, now, "1h")
    expected = api_city.stack.api.view(
        "parking_occupancy", {"start": start, "end": now, "districts": ["d02"], "bucket_ms": HOUR_MS}
    )
    assert [(z["zone_class"], z["start_ms"], z["occupied"]) for z in body["zones"]] == [
        (z["zone_class"], z["start"], z["occupied"]) for z in expected
    ]
    taken = [z for z in body["zones"] if z["occupied"]]
    assert taken and all(0 < z["occupied"] <= 1 and z["spaces"] == 1 for z in taken)
    tz = dt.timezone(dt.timedelta(hours=8))  # build_city parks at 08:00 Asia/Shanghai
    assert {dt.datetime.fromtimestamp(z["start_ms"] / 1000, tz).hour for z in taken} == {8, 9}
    assert body["now"]["spaces"] == 1 and body["zones"][0]["start"].endswith("Z")


def test_occupancy_refuses_what_it_cannot_answer(api_city: ApiCity) -> None:
    with api_city.client("op-d01") as op:
        assert refused(op.get("/parking/occupancy", params=occupancy_params(api_city, district="d02")), 403)
        mine = op.get("/parking/occupancy", params=occupancy_params(api_city)).json()
        assert (mine["district"], mine["zones"], mine["now"]["spaces"]) == (None, [], 0)  # d01 has no spaces
        now = api_city.city.now
        backwards = {"from": rfc3339(now), "to": rfc3339(now - HOUR_MS)}
        assert refused(op.get("/parking/occupancy", params=backwards), 422)
        assert refused(op.get("/parking/occupancy", params=occupancy_params(api_city, bucket="2h")), 422)
        assert refused(op.get("/parking/occupancy", params=occupancy_params(api_city, 60, bucket="15m")), 422)
        for bad in ("yesterday", "²", "99999999999999999999", "2026-02-30T00:00:00Z", "2026-01-01T00:00:00"):
            assert refused(op.get("/parking/occupancy", params={"from": bad}), 422), bad


def test_an_accounts_parking_lines_are_its_bills(api_city: ApiCity) -> None:
    month = api_city.city.issued_month
    with api_city.client("op-d02") as op:
        r = op.get("/parking/sessions", params={"account": "hh-0001", "month": month})
        assert r.status_code == 200, r.text
        body = r.json()
        only = op.get("/parking/sessions", params={"account": "hh-0001", "month": month, "space": SPACE}).json()
    bill = api_city.stack.api.bill("hh-0001", month)
    billed = [line for line in bill["lines"] if line["type"] == "parking"]
    assert [x["line"] for x in body["lines"]] == billed and billed[0]["sessions"]
    assert {x["account"] for x in body["lines"]} == {"hh-0001"} and only["lines"] == body["lines"]
    assert all(s["start"][11:16] == "08:00" for s in billed[0]["sessions"])


def test_a_spaces_stays_are_by_who_pays_them(api_city: ApiCity) -> None:
    month = api_city.city.issued_month
    with api_city.client("op-d02") as op:
        r = op.get("/parking/sessions", params={"space": SPACE, "month": month})
        assert r.status_code == 200, r.text
        by_space = r.json()
        of_account = op.get("/parking/sessions", params={"account": "hh-0001", "month": month}).json()
    assert (by_space["space"], by_space["account"]) == (SPACE, None)
    assert by_space["lines"] == of_account["lines"]  # the lessee pays every stay of a leased space


def test_parking_sessions_refuse_what_they_cannot_answer(api_city: ApiCity) -> None:
    month = api_city.city.issued_month
    with api_city.client("op-d01") as op:
        assert refused(op.get("/parking/sessions", params={"account": "hh-0001", "month": month}), 403)
        assert refused(op.get("/parking/sessions", params={"space": SPACE, "month": month}), 403)
    with api_city.client("op-d02") as op:
        assert refused(op.get("/parking/sessions", params={"account": "hh-9999", "month": month}), 403)
        with api_city.client("op-all") as city:
            assert refused(city.get("/parking/sessions", params={"account": "hh-9999", "month": month}), 404)
        assert refused(op.get("/parking/sessions", params={"space": "ps-d02-999999", "month": month}), 404)
        assert refused(op.get("/parking/sessions", params={"space": "wm-d02-000001", "month": month}), 404)
        assert refused(op.get("/parking/sessions", params={"month": month}), 422)
        assert refused(op.get("/parking/sessions", params={"account": "hh-0001", "month": "2026-13"}), 422)
        assert refused(op.get("/parking/sessions", params={"account": "hh-0001"}), 422)


def test_an_agency_reads_parking_under_a_grant_and_the_district_logs_it(api_city: ApiCity) -> None:
    month = api_city.city.issued_month
    token = api_city.agency("traffic-lab", "d03:parking")
    grant = api_city.stack.api.grant_sharing("d02", "traffic-lab", "parking", "10d", "op-d02")
    with api_city.client(token) as agency:
        stays = agency.get("/parking/sessions", params={"space": SPACE, "month": month})
        assert stays.status_code == 200, stays.text
        full = agency.get("/parking/occupancy", params=occupancy_params(api_city, district="d02"))
        assert full.status_code == 200 and full.json()["zones"]
        assert refused(agency.get("/parking/sessions", params={"account": "hh-0003", "month": month}), 403)
    sessions = sum(len(x["line"]["sessions"]) for x in stays.json()["lines"])
    rows = logged(api_city, "d02", "traffic-lab")
    assert [(r["path"], r["grant"], r["records"]) for r in rows] == [
        ("/v1/parking/sessions", grant["id"], sessions),
        ("/v1/parking/occupancy", grant["id"], len(full.json()["zones"])),
    ]
    assert sessions > 0
