"""Readings over the API against a real server: keyset pages that add up to the ledger's own count,
the same rows as CSV and Parquet, scopes, grants and the access log, and bad input answered 422."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import anyio
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger.billing.tariffs import UNITS
from ledger.http.app import make_app
from ledger.http.routes import readings as routes
from ledger.http.wire import encode_cursor, rfc3339
from ledger.service.rpc import RemoteLedger
from tests.support.api import FAR, PROBLEM, ApiCity
from tests.support.broker import wait_for

HOUR = 3_600_000
DAY = 24 * HOUR
WATER = "wm-d02-000001"  # hourly for 400 days, account hh-0001 (which also holds em-d02-000001)


def key(item: dict[str, Any]) -> tuple[int, str, int]:
    return item["ts_ms"], item["device"], item["seq"]


def all_pages(client: httpx.Client, path: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every item of a listing, following `next`; and how many pages it took."""
    items: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        r = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            return items, pages
        assert pages < 1000, "the listing does not end"


def ledgered(api_city: ApiCity, device: str, start: int, end: int) -> list[tuple[int, str, int]]:
    """A device's readings in [start, end) by the dashboard's own query: what the pages must add up to."""
    found = api_city.stack.api.view(
        "device_readings", {"device": device, "start": start, "end": end - 1, "max_points": 10**6}
    )
    assert found["thinned"] is False and found["count"] == len(found["points"])
    return [(p["ts"], device, p["seq"]) for p in found["points"]]


def span(api_city: ApiCity, days_back: int, days: int) -> tuple[int, int]:
    end = api_city.city.now - days_back * DAY
    return end - days * DAY, end


def access_rows(api_city: ApiCity, district: str, principal: str) -> list[dict[str, Any]]:
    rows = api_city.stack.api.access_log(district, 0, FAR, False, None, 10_000)["items"]
    return [r for r in rows if r["principal"] == principal]


def test_pages_hold_every_reading_in_the_range_once_and_in_order(api_city: ApiCity) -> None:
    start, end = span(api_city, 3, 30)
    expected = ledgered(api_city, WATER, start, end)
    assert len(expected) == 30 * 24
    with api_city.client("op-d02") as op:
        items, pages = all_pages(
            op, f"/devices/{WATER}/readings", {"from": rfc3339(start), "to": rfc3339(end), "limit": 97}
        )
    assert pages == -(-len(expected) // 97)
    assert [key(i) for i in items] == expected  # the same readings, each once, in (ts, device, seq) order
    first = items[0]
    assert first["ts"] == rfc3339(first["ts_ms"]) and first["received_at"] == rfc3339(first["received_at_ms"])
    assert first["district"] == "d02" and first["kind"] == "water" and first["height"] >= 0
    assert first["unit"] == UNITS["water"][0]
    assert first["quantity"] == f"{first['value'] // 1000}.{first['value'] % 1000:03d}"


def test_from_and_to_take_rfc3339_with_an_offset_or_epoch_ms_and_to_is_exclusive(api_city: ApiCity) -> None:
    _, end = span(api_city, 10, 1)
    end -= end % HOUR  # the meter reads on the hour: a reading at exactly `to`
    start = end - DAY
    expected = ledgered(api_city, WATER, start, end)
    with api_city.client("op-d02") as op:
        path = f"/devices/{WATER}/readings"
        by_ms = op.get(path, params={"from": start, "to": end}).json()
        local = dt.datetime.fromtimestamp(start / 1000, dt.timezone(dt.timedelta(hours=8)))
        by_offset = op.get(path, params={"from": local.isoformat(), "to": rfc3339(end)}).json()
        after = op.get(path, params={"from": rfc3339(end)[:-1] + "+00:00", "to": end + HOUR}).json()
    assert local.isoformat().endswith("+08:00")
    assert [key(i) for i in by_ms["items"]] == expected == [key(i) for i in by_offset["items"]]
    assert len(expected) == 24 and expected[0][0] == start and expected[-1][0] == end - HOUR
    assert [i["ts_ms"] for i in after["items"]] == [end]


def test_an_account_lists_the_meters_it_holds_in_one_order(api_city: ApiCity) -> None:
    start, end = span(api_city, 1, 12)
    expected = sorted(ledgered(api_city, WATER, start, end) + ledgered(api_city, "em-d02-000001", start, end))
    with api_city.client("op-d02") as op:
        items, pages = all_pages(op, "/accounts/hh-0001/readings", {"from": start, "to": end, "limit": 250})
    assert pages > 1 and [key(i) for i in items] == expected
    assert {(i["device"], i["unit"]) for i in items} == {(WATER, "m3"), ("em-d02-000001", "kWh")}


def test_a_meter_that_changes_hands_brings_its_district_and_not_its_past(api_city: ApiCity) -> None:
    """wm-d03-000001 (d03, no account) goes to hh-0002 (d02), then to hh-0004. Readings from while
    nobody held it are its holder's, so hh-0002 sees them; hh-0004 took it over from hh-0002, so it
    sees none of them. Whoever holds it needs d03 as well as d02."""
    api = api_city.stack.api
    start, end = span(api_city, 0, 5)
    d03 = ledgered(api_city, "wm-d03-000001", start, end)
    assert d03
    api.assign_account("wm-d03-000001", "hh-0002", "op-all")
    with api_city.client("op-all") as everyone, api_city.client("op-d02") as op:
        items, _ = all_pages(everyone, "/accounts/hh-0002/readings", {"from": start, "to": end, "limit": 1000})
        assert [key(i) for i in items] == sorted(ledgered(api_city, "wm-d02-000002", start, end) + d03)
        refused = op.get("/accounts/hh-0002/readings", params={"from": start, "to": end})
        assert refused.status_code == 403 and refused.headers["content-type"] == PROBLEM

        api.assign_account("wm-d03-000001", "hh-0004", "op-all")
        items, _ = all_pages(everyone, "/accounts/hh-0004/readings", {"from": start, "to": end, "limit": 1000})
        assert [key(i) for i in items] == ledgered(api_city, "wm-d02-000003", start, end)
        assert op.get("/accounts/hh-0004/readings", params={"from": start, "to": end}).status_code == 403
        assert op.get("/accounts/hh-0002/readings", params={"from": start, "to": end}).status_code == 200


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def parquet_rows(content: bytes) -> tuple[list[dict[str, Any]], int]:
    """Rows with times back as RFC 3339 (as JSON has them), and the file's number of row groups."""
    f = pq.ParquetFile(io.BytesIO(content))
    table = f.read()
    for name in ("ts", "received_at"):
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(pa.int64()))
    rows = table.to_pylist()
    for row in rows:
        row["ts"], row["received_at"] = rfc3339(row["ts"]), rfc3339(row["received_at"])
    return rows, f.metadata.num_row_groups


def as_text(item: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in item.items()}


@pytest.mark.parametrize("path", [f"/devices/{WATER}/readings", "/devices/ps-d02-000001/readings"])
def test_csv_and_parquet_hold_the_same_rows_as_json(api_city: ApiCity, path: str) -> None:
    start, end = span(api_city, 2, 20)
    with api_city.client("op-d02") as op:
        items, _ = all_pages(op, path, {"from": start, "to": end, "limit": 100})
        as_csv = op.get(path, params={"from": start, "to": end, "format": "csv"})
        as_parquet = op.get(path, params={"from": start, "to": end, "format": "parquet"})
    assert items
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in as_csv.headers["content-disposition"]
    assert csv_rows(as_csv.text) == [as_text(i) for i in items]
    assert as_csv.text.splitlines()[0].split(",") == list(items[0])
    assert as_parquet.headers["content-type"] == "application/vnd.apache.parquet"
    rows, _ = parquet_rows(as_parquet.content)
    assert rows == items
    assert int(as_csv.headers["readings-count"]) == int(as_parquet.headers["readings-count"]) == len(items)


def test_a_parking_space_has_a_state_not_a_quantity(api_city: ApiCity) -> None:
    start, end = span(api_city, 1, 5)
    with api_city.client("op-d02") as op:
        items = op.get("/devices/ps-d02-000001/readings", params={"from": start, "to": end}).json()["items"]
    assert items and {(i["value"], i["quantity"], i["unit"]) for i in items} == {(0, None, None), (1, None, None)}


class InProcess:
    """The app in this process over the running ingest's socket, so a test can change its limits."""

    def __init__(self, api_city: ApiCity) -> None:
        self.app = make_app(lambda: RemoteLedger(api_city.stack.home.rpc_socket))
        self.headers = {"Authorization": f"Bearer {api_city.tokens['op-d02']}"}

    def get(self, path: str, params: dict[str, Any]) -> httpx.Response:
        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app/v1", headers=self.headers) as c:
                r = await c.get(path, params=params)
                await r.aread()
                return r

        return anyio.run(fetch)


@pytest.fixture
def in_process(api_city: ApiCity) -> InProcess:
    return InProcess(api_city)


def test_a_download_streams_page_by_page_one_row_group_each(
    api_city: ApiCity, in_process: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "STREAM_PAGE", 500)
    start, end = span(api_city, 1, 100)
    expected = ledgered(api_city, WATER, start, end)
    params = {"from": start, "to": end}
    as_parquet = in_process.get(f"/devices/{WATER}/readings", params={**params, "format": "parquet"})
    as_csv = in_process.get(f"/devices/{WATER}/readings", params={**params, "format": "csv"})
    assert as_parquet.status_code == 200, as_parquet.text
    rows, groups = parquet_rows(as_parquet.content)
    assert [(r["ts_ms"], r["device"], r["seq"]) for r in rows] == expected
    assert groups == -(-len(expected) // 500) and groups > 1
    assert [(int(r["ts_ms"]), r["device"], int(r["seq"])) for r in csv_rows(as_csv.text)] == expected


def test_a_download_over_the_cap_is_refused_before_it_starts(
    api_city: ApiCity, in_process: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, end = span(api_city, 1, 10)
    monkeypatch.setattr(routes, "MAX_DOWNLOAD_ROWS", 10 * 24 - 1)
    for fmt in ("csv", "parquet"):
        r = in_process.get(f"/devices/{WATER}/readings", params={"from": start, "to": end, "format": fmt})
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
        assert "at most 239" in r.json()["detail"]
    # JSON pages are not downloads: the same range pages as ever.
    assert in_process.get(f"/devices/{WATER}/readings", params={"from": start, "to": end}).status_code == 200
    monkeypatch.setattr(routes, "MAX_DOWNLOAD_ROWS", 10 * 24)
    r = in_process.get(f"/devices/{WATER}/readings", params={"from": start, "to": end, "format": "csv"})
    assert r.status_code == 200 and len(csv_rows(r.text)) == 10 * 24


def test_an_operator_reads_only_their_districts(api_city: ApiCity) -> None:
    start, end = span(api_city, 1, 2)
    with api_city.client("op-d01") as op:
        own = op.get("/devices/wm-d01-000001/readings", params={"from": start, "to": end})
        assert own.status_code == 200 and own.json()["items"]
        for path in (f"/devices/{WATER}/readings", "/accounts/hh-0001/readings"):
            for fmt in ("json", "csv", "parquet"):
                r = op.get(path, params={"from": start, "to": end, "format": fmt})
                assert r.status_code == 403 and r.headers["content-type"] == PROBLEM, (path, fmt)
                assert r.json()["status"] == 403 and "readings" in r.json()["detail"]


def test_an_agency_reads_under_a_grant_each_read_logged_until_it_is_revoked(api_city: ApiCity) -> None:
    agency = "water-audit"
    start, end = span(api_city, 1, 4)
    path, params = f"/devices/{WATER}/readings", {"from": start, "to": end, "limit": 50}
    with api_city.client(api_city.agency(agency, "d01:readings")) as client:
        refused = client.get(path, params=params)
        assert refused.status_code == 403 and refused.headers["content-type"] == PROBLEM
        assert client.get("/devices/wm-d01-000001/readings", params=params).status_code == 200
        assert access_rows(api_city, "d01", agency) == []  # its own scope: nothing to log

        grant = api_city.stack.api.grant_sharing("d02", agency, "readings", "10d", "op-d02")
        wait_for(lambda: client.get(path, params=params).status_code == 200, 10, "the grant honoured")
        before = len(access_rows(api_city, "d02", agency))
        page = client.get(path, params=params).json()
        download = client.get(path, params={"from": start, "to": end, "format": "csv"})
        account = client.get("/accounts/hh-0001/readings", params={"from": start, "to": end, "limit": 10_000})
        assert len(page["items"]) == 50 and download.status_code == 200 and account.status_code == 200
        logged = access_rows(api_city, "d02", agency)[before:]
        assert [(r["grant"], r["status"], r["dataset"], r["path"], r["records"]) for r in logged] == [
            (grant["id"], 200, "readings", f"/v1{path}", 50),
            (grant["id"], 200, "readings", f"/v1{path}", len(csv_rows(download.text))),
            (grant["id"], 200, "readings", "/v1/accounts/hh-0001/readings", len(account.json()["items"])),
        ]
        assert logged[1]["records"] == 4 * 24 and logged[2]["records"] > 4 * 24

        api_city.stack.api.revoke_sharing(grant["id"], "op-d02")
        wait_for(lambda: client.get(path, params=params).status_code == 403, 10, "the revoked grant refused")
        after = client.get(path, params={**params, "format": "parquet"})
        assert after.status_code == 403 and after.headers["content-type"] == PROBLEM
    refusals = [r for r in access_rows(api_city, "d02", agency) if r["status"] == 403]
    assert refusals and all(r["grant"] is None and r["records"] == 0 for r in refusals)


def test_unknown_devices_and_accounts_are_404(api_city: ApiCity) -> None:
    with api_city.client("op-all") as op:
        for path in ("/devices/wm-d09-999999/readings", "/accounts/hh-9999/readings"):
            r = op.get(path, params={"from": "2026-01-01T00:00:00Z"})
            assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, path
            assert r.json()["status"] == 404


@pytest.mark.parametrize(
    "params",
    [
        {},  # from is required
        {"from": "yesterday"},
        {"from": "2026-13-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00"},  # no offset
        {"from": "²"},  # a digit int() does not take
        {"from": "0001-01-01T00:00:00+14:00"},  # before 1970
        {"from": "99999999999999999999"},  # past 9999
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},  # to before from
        {"from": "2024-01-01T00:00:00Z", "to": "2025-01-02T00:00:01Z"},  # more than 366 days
        {"from": "2026-01-01T00:00:00Z", "limit": 0},
        {"from": "2026-01-01T00:00:00Z", "limit": 10_001},
        {"from": "2026-01-01T00:00:00Z", "format": "xml"},
        {"from": "2026-01-01T00:00:00Z", "cursor": "not a cursor"},
        {"from": "2026-01-01T00:00:00Z", "cursor": encode_cursor([1, 2, 3])},  # base64 JSON, not ours
        {"from": "2026-01-01T00:00:00Z", "cursor": encode_cursor([1, "a", 1, 2**63])},  # past BIGINT
        {"from": "2026-01-01T00:00:00Z", "cursor": encode_cursor([1, "a b", 1, 1])},  # not a device
    ],
)
def test_bad_input_is_422(api_city: ApiCity, params: dict[str, Any]) -> None:
    with api_city.client("op-d02") as op:
        r = op.get(f"/devices/{WATER}/readings", params=params)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
    assert r.json()["status"] == 422
