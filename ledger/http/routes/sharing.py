"""The sharing register (grants from a district to an agency) and the access log of reads under them."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ledger.chain.protocol import DISTRICT_PATTERN
from ledger.clock import now_ms
from ledger.errors import NotFound
from ledger.http.deps import CtxDep, idempotent
from ledger.http.wire import parse_time, stamped
from ledger.people.tokens import DATASETS

router = APIRouter(prefix="/sharing", tags=["sharing"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such grant for this caller"}}


class GrantOut(BaseModel):
    id: str
    from_district: str
    to_agency: str
    dataset: str
    granted_at: str
    granted_at_ms: int
    until: str
    until_ms: int
    revoked_at: str | None
    revoked_at_ms: int | None
    operator: str
    height: int
    revoked_by: str | None


class GrantIn(BaseModel):
    from_district: str = Field(pattern=DISTRICT_PATTERN, examples=["d01"])
    to_agency: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", examples=["water-bureau"])
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    until: str = Field(description="YYYY-MM-DD, or a number of days like 30d", examples=["30d"])


class AccessOut(BaseModel):
    cursor: str
    at: str
    at_ms: int
    token: str
    principal: str
    method: str
    path: str
    dataset: str
    district: str | None
    grant: str | None
    status: int
    records: int


class AccessPageOut(BaseModel):
    items: list[AccessOut]
    next: str | None


@router.get("/grants", response_model=list[GrantOut])
def grants(c: CtxDep, district: Annotated[str | None, Query(pattern=DISTRICT_PATTERN)] = None) -> Any:
    """Grants made by the districts this caller looks after, or made to this agency."""
    if c.is_operator:
        if district is not None:
            c.allow("sharing", district)
        mine = c.readable("sharing")
        rows = [g for g in c.ledger.sharing_grants(district=district) if mine is None or g["from_district"] in mine]
    else:
        rows = [g for g in c.ledger.sharing_grants(district=district, agency=c.principal)]
    return stamped(rows)


@router.post("/grants", response_model=GrantOut, status_code=201)
def grant(c: CtxDep, body: GrantIn) -> Any:
    """Let an agency read one dataset of one district until a date (a ledger entry)."""
    c.allow("sharing", body.from_district, write=True)
    return idempotent(
        c,
        body,
        lambda: stamped(
            c.ledger.grant_sharing(body.from_district, body.to_agency, body.dataset, body.until, c.actor())
        ),
    )


@router.delete("/grants/{grant_id}", response_model=dict[str, Any], responses=NOT_FOUND)
def revoke(c: CtxDep, grant_id: str) -> Any:
    """End a grant now (a ledger entry); reads under it are refused from then on."""
    found = [g for g in c.ledger.sharing_grants() if g["id"] == grant_id]
    if not found:
        raise NotFound(f"no grant {grant_id!r}")
    c.allow("sharing", found[0]["from_district"], write=True)
    return idempotent(c, None, lambda: stamped(c.ledger.revoke_sharing(grant_id, c.actor())), status=200)


@router.get(
    "/access-log",
    response_model=AccessPageOut,
    responses={200: {"content": {"text/csv": {}}}},
)
def access_log(
    c: CtxDep,
    district: Annotated[str, Query(pattern=DISTRICT_PATTERN)],
    since: str = "0",
    until: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    refusals: bool = False,
    format: Literal["json", "csv"] = "json",
) -> Any:
    """Who read this district's data under a grant (and, with `refusals`, who was refused): when,
    what and how many records. CSV streams the whole period at once."""
    c.allow("sharing", district)
    start, end = parse_time(since, "since"), parse_time(until, "until") if until else now_ms() + 1
    if format == "json":
        return stamped(c.ledger.access_log(district, start, end, not refusals, cursor, limit))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["at", "at_ms", "token", "principal", "method", "path", "dataset", "district", "grant", "status", "records"]
    )
    page_cursor = cursor
    while True:
        page = c.ledger.access_log(district, start, end, not refusals, page_cursor, 10_000)
        for row in stamped(page["items"]):
            writer.writerow(
                [
                    row[k]
                    for k in (
                        "at",
                        "at_ms",
                        "token",
                        "principal",
                        "method",
                        "path",
                        "dataset",
                        "district",
                        "grant",
                        "status",
                        "records",
                    )
                ]
            )
        page_cursor = page["next"]
        if page_cursor is None:
            break
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="access-{district}.csv"'},
    )
