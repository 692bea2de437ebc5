"""What every route depends on: the app's shared state, the request's `Ctx`, and idempotent writes."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ledger.errors import Conflict, Refused, Unauthenticated
from ledger.http.callers import Callers, Ctx, RateLimits, bearer
from ledger.service.api import LedgerAPI

MAX_KEY = 200


@dataclass
class ApiState:
    ledger: Callable[[], LedgerAPI]
    callers: Callers
    limits: RateLimits = field(default_factory=RateLimits)
    _key_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock)

    def key_lock(self, token: str, key: str) -> threading.Lock:
        with self._locks_lock:
            if len(self._key_locks) > 10_000:
                self._key_locks = {k: v for k, v in self._key_locks.items() if v.locked()}
            return self._key_locks.setdefault((token, key), threading.Lock())


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def ctx(request: Request) -> Ctx:
    """The authenticated caller of this request, within its rate (401 and 429 otherwise)."""
    state = api_state(request)
    caller = state.callers.find(bearer(request))
    if caller is None:
        raise Unauthenticated("the token is unknown, expired or revoked")
    state.limits.take(caller.token)
    return Ctx(state.ledger(), caller, request)


CtxDep = Annotated[Ctx, Depends(ctx)]


def idempotent(c: Ctx, payload: BaseModel | None, run: Callable[[], Any], status: int = 201) -> JSONResponse:
    """Run a write once per Idempotency-Key: a repeat of the same request gets the first answer again
    (with `Idempotent-Replayed: true`), the key reused for another request gets 409."""
    key = c.request.headers.get("idempotency-key")
    if key is None:
        return JSONResponse(jsonable_encoder(run()), status_code=status)
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable():
        raise Refused(f"an Idempotency-Key is 1 to {MAX_KEY} printable characters")
    body = payload.model_dump_json() if payload is not None else ""
    fingerprint = hashlib.sha256(f"{c.request.method} {c.request.url.path}\n{body}".encode()).hexdigest()
    token = c.caller.token.id
    state = api_state(c.request)
    with state.key_lock(token, key):
        seen = c.ledger.idempotent_answer(token, key)
        if seen is not None:
            if seen["fingerprint"] != fingerprint:
                raise Conflict("this Idempotency-Key was used for a different request")
            return JSONResponse(
                json.loads(seen["body"]), status_code=seen["status"], headers={"Idempotent-Replayed": "true"}
            )
        answer = jsonable_encoder(run())
        c.ledger.remember_answer(token, key, fingerprint, status, json.dumps(answer))
    return JSONResponse(answer, status_code=status)
