"""Anomalies as operators work them: list, show, acknowledge, resolve, dismiss. An anomaly's district
decides who may; every action is appended to its history (ledger/anomalies/investigations.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from ledger.http.deps import CtxDep, idempotent
from ledger.http.routes.shared import Cursor, District, Limit, cursor_of, list_scope, log_list, next_cursor, problems
from ledger.http.wire import rfc3339, stamped

router = APIRouter(tags=["anomalies"])
DATASET = "anomalies"

AnomalyId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$", examples=["an-3f9c2a1b7e"])]
Status = Literal["open", "acknowledged", "resolved", "dismissed"]


class ReadingRef(BaseModel):
    """A ledgered reading: GET /v1/receipts/{device}/{seq} proves it."""

    device: str
    seq: int


class AnomalyOut(BaseModel):
    id: str
    key: str = Field(description="the condition it stands for; one anomaly per condition while it lasts")
    type: str = Field(description="what a detector found: leak, rollback, spike, silent, ...")
    device: str
    account: str | None
    district: str
    raised_at: str
    raised_at_ms: int
    status: str = Field(description="open, acknowledged, resolved or dismissed")
    window_start: str | None = Field(description="when the condition began, as the detector saw it")
    window_start_ms: int | None
    window_end: str | None
    window_end_ms: int | None
    severity: str | None = Field(description="low, medium or high")
    evidence: list[ReadingRef] = Field(description="the ledgered readings it rests on")
    detail: str | None
    updated_at: str
    updated_at_ms: int


class AnomalyEventOut(BaseModel):
    at: str
    at_ms: int
    status: str = Field(description="open (raised), updated (by a detector), acknowledged, resolved or dismissed")
    operator: str | None = Field(description='who acted: "detector" when raised, null for an update')
    note: str | None
    window_end: str | None
    window_end_ms: int | None
    severity: str | None
    detail: str | None


class AnomalyDetailOut(AnomalyOut):
    history: list[AnomalyEventOut] = Field(description="every event, oldest first")


class AnomalyPageOut(BaseModel):
    items: list[AnomalyOut]
    next: str | None = Field(description="the cursor of the next page; null: this is the last")


class ActionIn(BaseModel):
    note: str | None = Field(
        default=None, max_length=2000, description="why: required to resolve or dismiss", examples=["meter replaced"]
    )


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """An anomaly as the API shows it: every time as RFC 3339 beside its epoch ms (the detector's
    window too), and its evidence as readings a receipt can prove."""
    return dict(stamped(_windows(doc)))


def _windows(doc: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    for key in ("window_start", "window_end"):
        if key in out:
            ms = out[key]
            out[key], out[key + "_ms"] = (None if ms is None else rfc3339(ms)), ms
    if "evidence" in out:
        out["evidence"] = [{"device": str(d), "seq": int(s)} for d, s in out["evidence"]]
    if "history" in out:
        out["history"] = [_windows(e) for e in out["history"]]
    return out


@router.get("/anomalies", response_model=AnomalyPageOut)
def anomalies(
    c: CtxDep,
    district: District = None,
    status: Status | None = None,
    kind: Annotated[
        str | None, Query(pattern=r"^[a-z_]{1,40}$", description="the anomaly's type: leak, rollback, spike, ...")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Any:
    """Anomalies newest raised first, of one district or of every district the caller may read."""
    scope = list_scope(c, DATASET, district)
    before = cursor_of(cursor, int, str)
    rows = c.ledger.anomaly_page(
        status, kind, scope, before[0] if before else None, before[1] if before else "", limit + 1
    )
    log_list(c, DATASET, scope, (a["district"] for a in rows[:limit]))
    return {
        "items": [shown(dict(a)) for a in rows[:limit]],
        "next": next_cursor(rows, limit, lambda a: [a["raised_at"], a["id"]]),
    }


@router.get("/anomalies/{anomaly_id}", response_model=AnomalyDetailOut, responses=problems(404, what="anomaly"))
def anomaly(c: CtxDep, anomaly_id: AnomalyId) -> Any:
    """One anomaly with its evidence and every event of its history."""
    found = c.ledger.anomaly(anomaly_id)
    grant = c.allow(DATASET, found["district"])
    c.served(DATASET, found["district"], grant, 1)
    return shown(dict(found))


def _action(status: str, verb: str) -> Callable[..., Any]:
    def act(c: CtxDep, anomaly_id: AnomalyId, body: ActionIn) -> Any:
        c.allow(DATASET, c.ledger.anomaly(anomaly_id)["district"], write=True)
        return idempotent(
            c, body, lambda: shown(dict(c.ledger.act_on_anomaly(anomaly_id, status, c.actor(), body.note))), 200
        )

    act.__name__ = verb
    act.__doc__ = (
        f"Mark the anomaly {status}, recorded under the caller's name (422 if its state does not allow it"
        f"{'' if status == 'acknowledged' else ', or without a note'})."
    )
    return act


for _status, _verb in (("acknowledged", "ack"), ("resolved", "resolve"), ("dismissed", "dismiss")):
    router.add_api_route(
        f"/anomalies/{{anomaly_id}}/{_verb}",
        _action(_status, _verb),
        methods=["POST"],
        response_model=AnomalyDetailOut,
        responses=problems(404, 409, 413, what="anomaly"),
        name=_verb,
    )
