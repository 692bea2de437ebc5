"""The API as an ASGI app: the routes under /v1, problem documents, body caps, CORS when configured."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.home import Home
from ledger.http import metrics, problems
from ledger.http.callers import Callers
from ledger.http.deps import ApiState
from ledger.http.routes import anomalies, bills, devices, disputes, parking, readings, receipts, sharing, status
from ledger.service.api import LedgerAPI, local_api
from ledger.service.rpc import RemoteLedger

MAX_BODY = 64 * 1024  # bytes: the largest write (an enrolment, a payment) is well under 1 KiB
VERSION = "1"


class BodyCap:
    """Refuse a request body over `limit` bytes with 413, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        if declared is not None:  # within the cap, as declared: uvicorn stops reading at that length
            await self.app(scope, receive, send)
            return
        # Chunked: read it whole (at most `limit` bytes), then hand it on.
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._refuse(scope, send)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = problems.problem(413, f"a request body is at most {self.limit} bytes", scope["path"])
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


LEDGER_CALLS = int(os.environ.get("CITYLEDGER_API_LEDGER_CALLS", "4"))


def ledger_for(home: Home) -> Callable[[], LedgerAPI]:
    """The ingest's API over its socket while ingest runs, else the file opened per call. At most
    LEDGER_CALLS calls are in the ingest at once; the rest wait here, so that however many clients
    the API has, the ingest's sealer keeps its share of the process (docs/api.md)."""
    remote = RemoteLedger(home.rpc_socket, in_flight=LEDGER_CALLS)

    def ledger() -> LedgerAPI:
        return remote if home.rpc_socket.exists() else local_api(home)

    return ledger


def make_app(
    ledger: Callable[[], LedgerAPI], cors_origins: Sequence[str] = (), extra: Sequence[Callable[[FastAPI], Any]] = ()
) -> FastAPI:
    app = FastAPI(
        title="cityledger",
        version=VERSION,
        summary="The city's ledger of utility and parking readings, bills and proofs.",
        description=(
            "Every request carries `Authorization: Bearer <token>` (`cityledger agencies add`, "
            "`cityledger operators token`). Errors are RFC 9457 problem documents; lists page with "
            "opaque cursors; times are RFC 3339 with epoch milliseconds beside them (`*_ms`); money is a "
            "decimal string; writes take an `Idempotency-Key`."
        ),
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        responses=problems.COMMON_RESPONSES,
    )
    app.state.api = ApiState(ledger, Callers(ledger))
    problems.install(app)
    metrics.install(app)
    for module in (status, readings, bills, anomalies, devices, disputes, parking, receipts, sharing):
        app.include_router(module.router, prefix="/v1")
    for hook in extra:
        hook(app)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(BodyCap)
    return app
