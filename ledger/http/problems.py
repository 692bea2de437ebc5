"""Errors as RFC 9457 problem documents: the one shape every failure of the API takes.

Each family of ledger/errors.py has its status; anything else is a bug, answered 500 with
no detail and logged with its trace (never the request's credentials).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from ledger.errors import (
    Busy,
    Conflict,
    LedgerError,
    NotAllowed,
    NotFound,
    RateLimited,
    Refused,
    TooLarge,
    Unauthenticated,
    Unavailable,
    family,
)

log = logging.getLogger("cityledger.http")
MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:cityledger:problem:"

# Most specific first: the first class the error is an instance of gives its status.
STATUS: tuple[tuple[type[LedgerError], int], ...] = (
    (Unauthenticated, 401),
    (NotAllowed, 403),
    (Conflict, 409),
    (TooLarge, 413),
    (RateLimited, 429),
    (NotFound, 404),
    (Refused, 422),
    (Busy, 503),
    (Unavailable, 503),
)


class Problem(BaseModel):
    """RFC 9457: `type` names the kind of problem, `detail` this occurrence."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


PROBLEM_RESPONSE: dict[str, Any] = {"model": Problem, "content": {MEDIA_TYPE: {}}}
# Every operation may answer these; each route adds its own (404, 409, 413) where it can.
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {**PROBLEM_RESPONSE, "description": HTTPStatus(code).phrase}
    for code in (400, 401, 403, 413, 422, 429, 500, 503)
}


def problem(
    status: int, detail: str | None, instance: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    phrase = HTTPStatus(status).phrase
    body = {
        "type": TYPE_BASE + phrase.lower().replace(" ", "-").replace("'", ""),
        "title": phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def status_of(exc: BaseException) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    kind = family(exc)
    return next((status for cls, status in STATUS if cls is kind), 500)


def install(app: FastAPI) -> None:
    """Answer every error as a problem document."""

    @app.exception_handler(LedgerError)
    async def ledger_error(request: Request, exc: LedgerError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        if status == 503 and headers is None:
            headers = {"Retry-After": "1"}
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="cityledger"'}
        return problem(status, str(exc), request.url.path, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return problem(422, "the request does not match the API's schema", request.url.path, errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), request.url.path, dict(exc.headers or {}) or None)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            return problem(500, "internal error: the ledger's log has the details", request.url.path)
        return problem(status, str(exc), request.url.path)
