"""What the resource routes share: their parameters, problem answers, whose data a device or an
account is, a list's districts and its access-log lines, and page cursors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Path, Query

from ledger.chain.protocol import DEVICE_PATTERN, DISTRICT_PATTERN
from ledger.errors import NotFound, Refused
from ledger.http.callers import Ctx
from ledger.http.problems import PROBLEM_RESPONSE
from ledger.http.wire import decode_cursor, encode_cursor

DeviceId = Annotated[str, Path(pattern=DEVICE_PATTERN, examples=["wm-d02-000001"])]
District = Annotated[str | None, Query(pattern=DISTRICT_PATTERN, examples=["d02"])]
Cursor = Annotated[str | None, Query(min_length=1, max_length=400, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=500)]


def problems(*codes: int, what: str = "") -> dict[int | str, dict[str, Any]]:
    """The extra problem answers an operation may give, beside the common ones (401, 403, 422, 429, 503)."""
    said = {
        404: f"No such {what or 'thing'}",
        409: "The Idempotency-Key was used for another request, or the state forbids it",
        413: "The request body is too large",
    }
    return {code: {**PROBLEM_RESPONSE, "description": said[code]} for code in codes}


def list_scope(c: Ctx, dataset: str, district: str | None) -> list[str] | None:
    """The districts a list covers: the one asked for (403 unless allowed), else every district the
    caller may read (None: all of them; 403 for a caller who may read none)."""
    if district is not None:
        c.allow(dataset, district)
        return [district]
    scope = c.readable(dataset)
    if scope == []:
        c.allow(dataset, None)  # refused, and logged as a refusal
    return scope


def log_list(c: Ctx, dataset: str, scope: list[str] | None, districts: Iterable[str]) -> None:
    """Record a list's reads under grants: each granted district in scope, with its rows (0 too).
    A caller who reads every district by its own scope (`scope` None) reads under no grant."""
    if scope is None:
        return
    counts = Counter(districts)
    for district in scope:
        c.served(dataset, district, c.grant_for(dataset, district), counts[district])


def device_district(c: Ctx, device: str) -> str:
    """The district of an enrolled device (404 for an unknown one): it decides who may see it."""
    district = c.ledger.view("device_district", {"device": device})
    if not isinstance(district, str):
        raise NotFound(f"no device {device}")
    return district


def device_record(c: Ctx, device: str) -> dict[str, Any] | None:
    """A device's registry record (kind, district, account, status), or None: by the search view,
    which reads the registry and an hour of readings, where `device_detail` may scan all of its readings."""
    found = c.ledger.view("device_search", {"text": device, "limit": 500})["devices"]
    return next((d for d in found if d["device"] == device), None)


def cursor_of(cursor: str | None, *shape: type) -> list[Any] | None:
    """A cursor this API made, as the list of `shape` it holds; 422 for anything else."""
    if cursor is None:
        return None
    found = decode_cursor(cursor)
    if (
        isinstance(found, list)
        and len(found) == len(shape)
        and all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(found, shape))
    ):
        return found
    raise Refused("the cursor is not one this API gave out")


def next_cursor(rows: list[Any], limit: int, position: Any) -> str | None:
    """The cursor after a page read with `limit` + 1 rows: None when there was no extra row."""
    return encode_cursor(position(rows[limit - 1])) if len(rows) > limit else None


def account_grants(c: Ctx, dataset: str, account: str, write: bool = False) -> dict[str | None, str | None]:
    """Each district of an account's devices, with the grant a read rests on: 403 unless the caller may
    act on all of them. An account with no device (or none at all) is in no district: only a caller of
    every district may ask, and only such a caller learns (404) that an account does not exist."""
    districts: list[str] = list(c.ledger.view("account_districts", {"account": account}))
    if not districts:
        grant = c.allow(dataset, None, write)
        if c.ledger.view("account_profile", {"account": account}) is None:
            raise NotFound(f"no account {account}")
        return {None: grant}
    return {d: c.allow(dataset, d, write) for d in districts}


def served(c: Ctx, dataset: str, grants: dict[str | None, str | None], records: int) -> None:
    """Record a read about one account in the access log of each district it rests on a grant of."""
    for district, grant in grants.items():
        c.served(dataset, district, grant, records)
