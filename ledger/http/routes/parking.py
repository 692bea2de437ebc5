"""Parking: how full the spaces were, per zone class over time, and the stays a bill charges.

Occupancy is the district's (or every district the caller reads); a space's stays are its
district's; an account's parking lines are its bill's, so they need every district the account
is in, as its readings do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ledger.billing.bills import ParkingLine
from ledger.chain.protocol import DEVICE_PATTERN
from ledger.clock import now_ms
from ledger.errors import NotFound, Refused
from ledger.http.deps import CtxDep
from ledger.http.routes.shared import District, account_grants, device_record, list_scope, problems, served
from ledger.http.wire import parse_time, rfc3339

router = APIRouter(prefix="/parking", tags=["parking"])
DATASET = "parking"

HOUR_MS = 3_600_000
BUCKETS: dict[str, int] = {"15m": HOUR_MS // 4, "1h": HOUR_MS, "6h": 6 * HOUR_MS, "1d": 24 * HOUR_MS}
MAX_BUCKETS = 2000  # a month of 15-minute buckets is 2976: ask for a month in hours, a year in days
MONTH = r"^[12][0-9]{3}-(0[1-9]|1[0-2])$"

Time = Annotated[str | None, Query(min_length=1, max_length=40, examples=["2026-01-01T00:00:00Z"])]
From = Annotated[str | None, Query(alias="from", min_length=1, max_length=40, examples=["2026-01-01T00:00:00Z"])]
Name = Annotated[str | None, Query(pattern=DEVICE_PATTERN)]


class ZoneBucketOut(BaseModel):
    zone_class: int
    start: str = Field(description="the bucket's start; it lasts `bucket`")
    start_ms: int
    occupied: float | None = Field(description="the share of the time the zone's reporting spaces were taken")
    reporting: int = Field(description="spaces that reported in the bucket")
    spaces: int = Field(description="spaces of the zone class in scope")


class SpacesNowOut(BaseModel):
    spaces: int
    taken: int = Field(description="spaces whose last report (within the past hour) said taken")
    reporting: int = Field(description="spaces that reported within the past hour")


class OccupancyOut(BaseModel):
    district: str | None = Field(description="null: every district the caller may read")
    start: str
    start_ms: int
    end: str
    end_ms: int
    bucket: str
    zones: list[ZoneBucketOut] = Field(description="per zone class and bucket, buckets with reports only")
    now: SpacesNowOut


class AccountLineOut(BaseModel):
    account: str | None = Field(description="who pays these stays; null: nobody (no lease, no check-in)")
    line: ParkingLine = Field(description="the stays as the bill prices them (local times)")


class SessionsOut(BaseModel):
    month: str
    account: str | None
    space: str | None
    lines: list[AccountLineOut] = Field(description="a line per space and payer, stays that start in the month")


@router.get("/occupancy", response_model=OccupancyOut)
def occupancy(
    c: CtxDep,
    district: District = None,
    start: From = None,
    end: Annotated[str | None, Query(alias="to", min_length=1, max_length=40)] = None,
    bucket: Literal["15m", "1h", "6h", "1d"] = "1h",
) -> Any:
    """The share of the time spaces were taken, per zone class and bucket in [`from`, `to`) (default:
    the past day), and how many are taken now: of one district, or every district the caller reads."""
    stop = parse_time(end, "to") if end is not None else now_ms()
    begin = parse_time(start, "from") if start is not None else stop - 24 * HOUR_MS
    if stop <= begin:
        raise Refused("`to` must be after `from`")
    size = BUCKETS[bucket]
    if (stop - begin + size - 1) // size > MAX_BUCKETS:
        raise Refused(f"at most {MAX_BUCKETS} buckets: a longer `bucket` or a shorter range")
    scope = list_scope(c, DATASET, district)
    rows = c.ledger.view("parking_occupancy", {"start": begin, "end": stop, "districts": scope, "bucket_ms": size})
    now = c.ledger.view("parking_today", {"districts": scope})
    for d in scope or ():  # an aggregate: each granted district gave to every row
        c.served(DATASET, d, c.grant_for(DATASET, d), len(rows))
    return {
        "district": district,
        "start": rfc3339(begin),
        "start_ms": begin,
        "end": rfc3339(stop),
        "end_ms": stop,
        "bucket": bucket,
        "zones": [{**z, "start": rfc3339(z["start"]), "start_ms": z["start"]} for z in rows],
        "now": now,
    }


@router.get("/sessions", response_model=SessionsOut, responses=problems(404, what="account or parking space"))
def sessions(
    c: CtxDep,
    month: Annotated[str, Query(pattern=MONTH, examples=["2026-03"])],
    account: Name = None,
    space: Name = None,
) -> Any:
    """The parking stays of a month, priced as its bills price them: the parking lines of an account's
    bill (of one `space` of it, if named), or a space's stays, each with who pays them."""
    if account is None and space is None:
        raise Refused("name an `account`, a `space`, or both")
    district = None
    if space is not None:
        found = device_record(c, space)
        if found is None or found["kind"] != "parking":
            raise NotFound(f"no parking space {space}")
        district = found["district"]
    if account is not None:
        grants = account_grants(c, DATASET, account)
        lines = [
            {"account": account, "line": line}
            for line in c.ledger.view("parking_lines", {"account": account, "month": month})
            if space is None or line["device"] == space
        ]
    else:
        grants = {district: c.allow(DATASET, district)}
        lines = [
            {"account": payer or None, "line": line} for payer, line in c.ledger.space_stays(str(space), month).items()
        ]
    served(c, DATASET, grants, sum(len(x["line"]["sessions"]) for x in lines))
    return {"month": month, "account": account, "space": space, "lines": lines}
