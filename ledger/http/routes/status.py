"""Health (for load balancers, no token) and the ledger's status (any token)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ledger.clock import now_ms
from ledger.http.deps import CtxDep, api_state
from ledger.http.wire import rfc3339, stamped

router = APIRouter(tags=["status"])


class Health(BaseModel):
    status: str  # ok | unavailable
    ledger: str  # reachable | unreachable
    detail: str | None = None
    at: str
    at_ms: int


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request) -> Any:
    """Whether the API can reach the ledger. No token: this is what a load balancer asks."""
    now = now_ms()
    try:
        api_state(request).ledger().ledger_key()
    except Exception as exc:  # any failure to reach the ledger is what this endpoint reports
        body = Health(status="unavailable", ledger="unreachable", detail=type(exc).__name__, at=rfc3339(now), at_ms=now)
        return JSONResponse(body.model_dump(), status_code=503)
    return Health(status="ok", ledger="reachable", at=rfc3339(now), at_ms=now)


@router.get("/status", response_model=dict[str, Any])
def status(c: CtxDep) -> Any:
    """The ledger's totals, head, ingest, jobs, supervised parts and transparency log (`cityledger status`)."""
    return stamped(dict(c.ledger.status()))
