"""Disputes: a citizen's complaint about a bill or a meter, and the answers to it, as threads of messages.

A dispute is its account's, and an account's data is its districts' (where its devices are): a
request about one needs every one of them, as an account's readings do. An account with no device
is in no district, so only a reader of every district may ask about it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from ledger.chain.protocol import DEVICE_PATTERN
from ledger.http.deps import CtxDep, idempotent
from ledger.http.routes.shared import (
    Cursor,
    District,
    Limit,
    account_grants,
    cursor_of,
    list_scope,
    next_cursor,
    problems,
    served,
)
from ledger.http.wire import stamped

router = APIRouter(tags=["disputes"])
DATASET = "disputes"

DisputeId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$", examples=["dsp-3f9c2a1b7e"])]
Account = Annotated[str | None, Query(pattern=DEVICE_PATTERN, examples=["hh-0001"])]
MESSAGE = r"\S"  # not blank


class MessageOut(BaseModel):
    at: str
    at_ms: int
    author: str = Field(description="the account (a citizen), an operator, or an agency")
    status: str = Field(description="the dispute's status this message set")
    message: str


class DisputeOut(BaseModel):
    id: str
    account: str
    subject: str | None
    opened_at: str
    opened_at_ms: int
    messages: list[MessageOut] = Field(description="oldest first")
    status: str = Field(description="open, answered or closed: its latest message's")


class DisputePageOut(BaseModel):
    items: list[DisputeOut]
    next: str | None = Field(description="the cursor of the next page; null: this is the last")


class OpenIn(BaseModel):
    account: str = Field(pattern=DEVICE_PATTERN, examples=["hh-0001"])
    subject: str = Field(min_length=1, max_length=200, pattern=MESSAGE, examples=["Meter wm-d02-000001"])
    message: str = Field(min_length=1, max_length=4000, pattern=MESSAGE, examples=["My bill doubled in March."])


class MessageIn(BaseModel):
    message: str = Field(min_length=1, max_length=4000, pattern=MESSAGE, examples=["We checked the meter: ..."])


@router.get("/disputes", response_model=DisputePageOut, responses=problems(404, what="account"))
def disputes(
    c: CtxDep, account: Account = None, district: District = None, cursor: Cursor = None, limit: Limit = 100
) -> Any:
    """Disputes, most recently active first: of one account, of the accounts with a device in one
    district, or of every district the caller may read."""
    after = cursor_of(cursor, int, str)
    found_in: dict[str | None, set[str]] = {}  # district -> the disputes read there, for its access log
    if account is not None:
        grants = account_grants(c, DATASET, account)
        rows = c.ledger.disputes(account=account) if district is None or district in grants else []
        found_in = {d: {x["id"] for x in rows} for d in grants}
    else:
        scope = list_scope(c, DATASET, district)
        grants = {d: c.grant_for(DATASET, d) for d in scope} if scope is not None else {}
        if not any(grants.values()):
            rows = c.ledger.disputes(districts=scope)
        else:  # district by district, to tell each granted district's log what it gave
            by_id: dict[str, Any] = {}
            for d in scope or ():
                here = c.ledger.disputes(districts=[d])
                found_in[d] = {x["id"] for x in here}
                by_id.update((x["id"], x) for x in here)
            rows = list(by_id.values())
    rows.sort(key=_order)
    if after is not None:
        rows = [d for d in rows if _order(d) > (-int(after[0]), str(after[1]))]
    page = rows[:limit]
    for where, grant in grants.items():
        c.served(DATASET, where, grant, sum(x["id"] in found_in.get(where, ()) for x in page))
    return {"items": stamped(page), "next": next_cursor(rows[: limit + 1], limit, _position)}


def _order(d: Any) -> tuple[int, str]:
    """Most recently active first, then by id: a page's position."""
    return -int(d["messages"][-1]["at"]), str(d["id"])


def _position(d: Any) -> list[Any]:
    return [int(d["messages"][-1]["at"]), d["id"]]


@router.get("/disputes/{dispute_id}", response_model=DisputeOut, responses=problems(404, what="dispute"))
def dispute(c: CtxDep, dispute_id: DisputeId) -> Any:
    """One dispute with all its messages."""
    found = c.ledger.dispute_thread(dispute_id)
    served(c, DATASET, account_grants(c, DATASET, found["account"]), 1)
    return stamped(found)


@router.post("/disputes", response_model=DisputeOut, status_code=201, responses=problems(404, 409, 413, what="account"))
def open_dispute(c: CtxDep, body: OpenIn) -> Any:
    """Open a dispute about an account, its first message written under the caller's name."""
    account_grants(c, DATASET, body.account, write=True)

    def run() -> Any:
        posted = c.ledger.dispute(body.account, c.actor(), body.message.strip(), None, "open", body.subject.strip())
        return stamped(c.ledger.dispute_thread(posted["id"]))

    return idempotent(c, body, run)


def _reply(status: str, verb: str) -> Callable[..., Any]:
    def reply(c: CtxDep, dispute_id: DisputeId, body: MessageIn) -> Any:
        account = c.ledger.dispute_thread(dispute_id)["account"]
        account_grants(c, DATASET, account, write=True)

        def run() -> Any:
            c.ledger.dispute(account, c.actor(), body.message.strip(), dispute_id, status)
            return stamped(c.ledger.dispute_thread(dispute_id))

        return idempotent(c, body, run, 200)

    reply.__name__ = verb
    reply.__doc__ = f"Add a message to the dispute under the caller's name, marking it {status}."
    return reply


for _status, _verb in (("answered", "answer"), ("closed", "close")):
    router.add_api_route(
        f"/disputes/{{dispute_id}}/{_verb}",
        _reply(_status, _verb),
        methods=["POST"],
        response_model=DisputeOut,
        responses=problems(404, 409, 413, what="dispute"),
        name=f"{_verb}_dispute",
    )
