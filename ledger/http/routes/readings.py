"""A device's or an account's readings in a time range: JSON pages, or the whole range as CSV or Parquet.

Pages are keyset pages in (ts, device, seq) order (ledger/store/reading_pages.py): the cursor
holds the last position and the block height the first page read up to, so a listing's
pages are one consistent set. A download streams the whole range page by page from the
ledger, after counting it, so one that would be too large is refused before its first byte.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ledger.billing.tariffs import UNITS
from ledger.chain.protocol import DEVICE_PATTERN, INT64_MAX, KINDS, valid_device_id
from ledger.clock import now_ms
from ledger.errors import Refused, TooLarge
from ledger.http.callers import Ctx
from ledger.http.deps import CtxDep
from ledger.http.formats import CSV_MEDIA_TYPE, PARQUET_MEDIA_TYPE, CsvPages, ParquetPages, reading_doc
from ledger.http.problems import PROBLEM_RESPONSE
from ledger.http.wire import decode_cursor, encode_cursor, parse_time
from ledger.service.api import ReadingPosition, ReadingSource  # the ledger API's own types: http opens no store

log = logging.getLogger("cityledger.http")
router = APIRouter(tags=["readings"])

DATASET = "readings"
DAY_MS = 86_400_000
MAX_SPAN_DAYS = 366  # a year and a leap day: a year's bill, or a year's comparison, in one request
STREAM_PAGE = 10_000  # rows a download asks the ledger for at a time (one Parquet row group each)
MAX_DOWNLOAD_ROWS = 2_000_000  # a year of a 96-a-day meter is 35,136 rows; this is ~57 such meters, ~200 MB of CSV
COUNT_HEADER = "Readings-Count"


class ReadingOut(BaseModel):
    device: str
    seq: int
    kind: str = Field(description=", ".join(KINDS))
    ts: str = Field(description="when the device read its register (RFC 3339)")
    ts_ms: int
    value: int = Field(description="the register as ledgered, in base units (litres, watt-hours); parking: 0 or 1")
    quantity: str | None = Field(description="`value` in `unit`, an exact decimal; null for parking")
    unit: str | None = Field(description=f"{' or '.join(sorted({u for u, _ in UNITS.values()}))}; null for parking")
    received_at: str = Field(description="when the ledger received it (RFC 3339)")
    received_at_ms: int
    height: int = Field(description="the block it is sealed in")
    district: str


class ReadingsPageOut(BaseModel):
    items: list[ReadingOut]
    next: str | None = Field(description="the cursor of the next page; null: this is the last")


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of readings (JSON), or the whole range (CSV, Parquet)",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            PARQUET_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
        "headers": {
            COUNT_HEADER: {"description": "rows in a CSV or Parquet download", "schema": {"type": "integer"}},
        },
    },
    404: {**PROBLEM_RESPONSE, "description": "No such device or account"},
    413: {**PROBLEM_RESPONSE, "description": f"A download of more than {MAX_DOWNLOAD_ROWS} rows"},
}

Device = Annotated[str, Path(pattern=DEVICE_PATTERN, examples=["wm-d02-000001"])]
Account = Annotated[str, Path(pattern=DEVICE_PATTERN, examples=["hh-0001"])]
TIME_PATTERN = r"^([0-9]{1,16}|[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?([Zz]|[+-][0-9]{2}:[0-9]{2}))?)$"
From = Annotated[
    str,
    Query(
        alias="from",
        max_length=40,
        pattern=TIME_PATTERN,
        description="RFC 3339 (a date is its midnight UTC) or epoch ms",
        examples=["2026-01-01T00:00:00Z"],
    ),
]
To = Annotated[
    str | None,
    Query(max_length=40, pattern=TIME_PATTERN, description="RFC 3339 or epoch ms, not included; default: now"),
]
Cursor = Annotated[str | None, Query(max_length=300, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Query(ge=1, le=10_000)]
Format = Literal["json", "csv", "parquet"]


@router.get("/devices/{device}/readings", response_model=ReadingsPageOut, responses=RESPONSES)
def device_readings(
    c: CtxDep,
    device: Device,
    start: From,
    to: To = None,
    cursor: Cursor = None,
    limit: Limit = 1000,
    format: Format = "json",
) -> Any:
    """A device's readings with `from` <= ts < `to` (default now; at most 366 days), oldest first.
    JSON: `limit` a page, then `next` as `cursor`. CSV and Parquet: the whole range in one download."""
    span = _span(start, to)
    sources = c.ledger.reading_sources(device=device)
    return _listing(c, sources, span, cursor, limit, format, f"readings-{device}")


@router.get("/accounts/{account}/readings", response_model=ReadingsPageOut, responses=RESPONSES)
def account_readings(
    c: CtxDep,
    account: Account,
    start: From,
    to: To = None,
    cursor: Cursor = None,
    limit: Limit = 1000,
    format: Format = "json",
) -> Any:
    """The readings of the meters an account holds, each from when the account took it over, with
    `from` <= ts < `to` (as for a device). Needs every district the meters are in."""
    span = _span(start, to)
    sources = c.ledger.reading_sources(account=account)
    return _listing(c, sources, span, cursor, limit, format, f"readings-{account}")


def _span(start_text: str, end_text: str | None) -> tuple[int, int]:
    """[from, to) in epoch ms: to after from, at most MAX_SPAN_DAYS apart."""
    start = parse_time(start_text, "from")
    end = parse_time(end_text, "to") if end_text is not None else now_ms() + 1
    if end <= start:
        raise Refused("`to` must be after `from`")
    if end - start > MAX_SPAN_DAYS * DAY_MS:
        raise Refused(f"a request spans at most {MAX_SPAN_DAYS} days: ask for the rest in another")
    return start, end


def _position(cursor: str | None) -> tuple[ReadingPosition | None, int | None]:
    """(where the last page ended, the height the listing reads up to) from a cursor this API made."""
    if cursor is None:
        return None, None
    found = decode_cursor(cursor)
    if (
        isinstance(found, list)
        and len(found) == 4
        and all(isinstance(x, int) and not isinstance(x, bool) for x in (found[0], found[2], found[3]))
        and isinstance(found[1], str)
        and valid_device_id(found[1])
        and 0 <= found[0] <= INT64_MAX
        and 0 <= found[2] <= INT64_MAX
        and -1 <= found[3] <= INT64_MAX
    ):
        return {"ts": found[0], "device": found[1], "seq": found[2]}, found[3]
    raise Refused("the cursor is not one this API gave out")


def _grants(c: Ctx, sources: list[ReadingSource]) -> dict[str | None, str | None]:
    """Each district the listing reads, with the grant the read rests on; 403 unless all are allowed.
    An account with no meters is in no district: only a reader of every district may ask."""
    if not sources:
        return {None: c.allow(DATASET, None)}
    return {d: c.allow(DATASET, d) for d in sorted({s["district"] for s in sources})}


def _served(c: Ctx, grants: dict[str | None, str | None], counts: Counter[str]) -> None:
    """Record the read in each district's access log (reads under a grant), with its records there."""
    for district, grant in grants.items():
        c.served(DATASET, district, grant, counts[district] if district is not None else 0)


def _listing(
    c: Ctx,
    sources: list[ReadingSource],
    span: tuple[int, int],
    cursor: str | None,
    limit: int,
    fmt: str,
    filename: str,
) -> Any:
    grants = _grants(c, sources)
    after, as_of = _position(cursor)
    start, end = span
    if fmt == "json":
        page = c.ledger.readings_page(sources, start, end, after, limit, as_of)
        _served(c, grants, _districts(page["items"]))
        last = page["next"]
        return {
            "items": [reading_doc(r) for r in page["items"]],
            "next": None if last is None else encode_cursor([last["ts"], last["device"], last["seq"], page["as_of"]]),
        }
    total = c.ledger.readings_count(sources, start, end, after, as_of)
    if total["count"] > MAX_DOWNLOAD_ROWS:
        raise TooLarge(
            f"{total['count']} readings in this range: a download holds at most {MAX_DOWNLOAD_ROWS}."
            " Ask for a shorter range, or page through it with format=json"
        )
    encoder: _Pages = CsvPages() if fmt == "csv" else ParquetPages()
    download = _Download(c, grants, sources, start, end, after, total["as_of"])
    return StreamingResponse(
        download.stream(encoder),
        media_type=CSV_MEDIA_TYPE if fmt == "csv" else PARQUET_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}.{fmt}"',
            COUNT_HEADER: str(total["count"]),
        },
    )


def _districts(rows: Iterable[Mapping[str, Any]]) -> Counter[str]:
    return Counter(r["district"] for r in rows)


class _Pages(Protocol):
    def start(self) -> bytes: ...
    def page(self, docs: list[dict[str, Any]]) -> bytes: ...
    def finish(self) -> bytes: ...


class _Download:
    """One download: pages read from the ledger as of one block and encoded as they come. The read
    is recorded once, before the last bytes go out; a download cut short records what was sent."""

    def __init__(
        self,
        c: Ctx,
        grants: dict[str | None, str | None],
        sources: list[ReadingSource],
        start: int,
        end: int,
        after: ReadingPosition | None,
        as_of: int,
    ) -> None:
        self.c, self.grants, self.sources = c, grants, sources
        self.start, self.end, self.after, self.as_of = start, end, after, as_of
        self.sent: Counter[str] = Counter()
        self.recorded = False

    def stream(self, encoder: _Pages) -> Iterator[bytes]:
        try:
            yield encoder.start()
            position = self.after
            while True:
                page = self.c.ledger.readings_page(
                    self.sources, self.start, self.end, position, STREAM_PAGE, self.as_of
                )
                chunk = encoder.page([reading_doc(r) for r in page["items"]])
                counts = _districts(page["items"])
                position = page["next"]
                if position is None:
                    self.sent += counts
                    self._record()
                    yield chunk + encoder.finish()
                    return
                yield chunk
                self.sent += counts
        finally:
            if not self.recorded:  # cut short: the client left, or the ledger failed mid-way
                try:
                    self._record()
                except Exception:  # the response is already gone; the failure is the ledger's to log
                    log.exception("could not record a cut-short download of %s", self.c.request.url.path)

    def _record(self) -> None:
        self.recorded = True
        _served(self.c, self.grants, self.sent)
