"""Who is calling, and may they: the token on each request, its rate, its scope and its grants.

`Ctx` is what every route receives. Its `allow` asks the pure rule (ledger/people/tokens.py);
a refusal is logged (the ledger's access log and this process's log, never the token's
secret) and answered 403. A read that rests on a sharing grant is written to the access
log, with the number of records it returned, before its last byte is sent.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from ledger.clock import now_ms
from ledger.errors import NotAllowed, RateLimited, Unauthenticated
from ledger.people.tokens import Allowed, Grant, TokenRecord, decide, districts_readable, parse_scope
from ledger.service.api import LedgerAPI
from ledger.service.results.access import AccessDoc, CallerDoc

log = logging.getLogger("cityledger.http")
CALLER_TTL_S = 1.0  # a revoked token may be honoured for up to this long after its revocation is sealed


@dataclass(frozen=True, slots=True)
class Caller:
    token: TokenRecord
    grants: tuple[Grant, ...]

    @classmethod
    def of(cls, doc: CallerDoc) -> Caller:
        t = doc["token"]
        record = TokenRecord(
            t["id"],
            t["kind"],
            t["principal"],
            tuple(parse_scope(s) for s in t["scopes"]),
            t["created_at"],
            t["expires_at"],
            t["revoked_at"],
            t["rate_per_minute"],
        )
        grants = tuple(
            Grant(
                g["id"], g["from_district"], g["to_agency"], g["dataset"], g["granted_at"], g["until"], g["revoked_at"]
            )
            for g in doc["grants"]
        )
        return cls(record, grants)


class Callers:
    """Tokens seen in the last second, so that a burst of requests costs one lookup."""

    def __init__(self, ledger: Callable[[], LedgerAPI], ttl_s: float = CALLER_TTL_S) -> None:
        self._ledger, self._ttl = ledger, ttl_s
        self._seen: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    def find(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).hexdigest()  # the secret is not kept in memory as given
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(key)
            if hit and now - hit[0] < self._ttl:
                return hit[1]
        doc = self._ledger().api_caller(token)
        found = Caller.of(doc) if doc else None
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = (now, found)
        return found


class RateLimits:
    """A token bucket per token: `rate_per_minute` requests a minute, bursts of up to that many."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # token id -> (tokens left, at)
        self._lock = threading.Lock()

    def take(self, token: TokenRecord) -> None:
        rate = token.rate_per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            left, at = self._buckets.get(token.id, (float(token.rate_per_minute), now))
            left = min(float(token.rate_per_minute), left + (now - at) * rate)
            if left < 1.0:
                self._buckets[token.id] = (left, now)
                wait = math.ceil((1.0 - left) / rate)
                raise RateLimited(f"more than {token.rate_per_minute} requests a minute: retry in {wait} s", wait)
            self._buckets[token.id] = (left - 1.0, now)


@dataclass
class Ctx:
    """One request: the ledger, the caller, and the decisions made for it."""

    ledger: LedgerAPI
    caller: Caller
    request: Request
    _logged: list[AccessDoc] = field(default_factory=list)

    @property
    def principal(self) -> str:
        return self.caller.token.principal

    @property
    def is_operator(self) -> bool:
        return self.caller.token.kind == "operator"

    def allow(self, dataset: str, district: str | None, write: bool = False) -> str | None:
        """The grant a permitted request rests on (None: the token's own scope); else 403, logged."""
        verdict = decide(self.caller.token, self.caller.grants, district, dataset, write, now_ms())
        if isinstance(verdict, Allowed):
            return verdict.grant
        self._log(dataset, district, None, 403, 0)
        log.warning(
            "refused %s %s for token %s (%s): %s",
            self.request.method,
            self.request.url.path,
            self.caller.token.id,
            self.principal,
            verdict.reason,
        )
        raise NotAllowed(verdict.reason)

    def readable(self, dataset: str) -> list[str] | None:
        """The districts whose `dataset` this caller may read (None: all)."""
        found = districts_readable(self.caller.token, self.caller.grants, dataset, now_ms())
        return None if found is None else list(found)

    def grant_for(self, dataset: str, district: str) -> str | None:
        """The grant a read of `district` rests on, for a list across districts (None: own scope)."""
        if any(s.covers(district, dataset, False) for s in self.caller.token.scopes):
            return None
        verdict = decide(self.caller.token, self.caller.grants, district, dataset, False, now_ms())
        return verdict.grant if isinstance(verdict, Allowed) else None

    def served(self, dataset: str, district: str | None, grant: str | None, records: int) -> None:
        """Record a read made under a grant (reads under the token's own scope are not logged)."""
        if grant is not None:
            self._log(dataset, district, grant, 200, records)

    def _log(self, dataset: str, district: str | None, grant: str | None, status: int, records: int) -> None:
        row: AccessDoc = {
            "cursor": "",
            "at": now_ms(),
            "token": self.caller.token.id,
            "principal": self.principal,
            "method": self.request.method,
            "path": self.request.url.path,
            "dataset": dataset,
            "district": district,
            "grant": grant,
            "status": status,
            "records": records,
        }
        self.ledger.record_access([row])

    def actor(self) -> str:
        """Who a write is recorded under: the operator's id, or the agency's name."""
        return self.principal


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send `Authorization: Bearer <token>` (`cityledger agencies add` makes one)")
    return token.strip()
