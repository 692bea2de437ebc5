"""What the API answers about its own callers: tokens, sharing grants and the access log
(ledger/service/operations/sharing.py)."""

from __future__ import annotations

from typing_extensions import TypedDict

from ledger.documents import document


@document
class TokenIssued(TypedDict):
    """A token just made. `token` is shown this once: only its hash is kept."""

    id: str
    token: str
    kind: str  # agency | operator
    principal: str
    scopes: list[str]  # DISTRICTS:DATASETS:MODE
    expires_at: int
    rate_per_minute: int
    block: str


@document
class TokenDoc(TypedDict):
    id: str
    kind: str
    principal: str
    scopes: list[str]
    created_at: int
    expires_at: int
    revoked_at: int | None
    rate_per_minute: int


@document
class GrantDoc(TypedDict):
    id: str
    from_district: str
    to_agency: str
    dataset: str
    granted_at: int
    until: int
    revoked_at: int | None
    operator: str
    height: int
    revoked_by: str | None


@document
class CallerDoc(TypedDict):
    """Who a presented token belongs to, with the grants made to it (none for an operator)."""

    token: TokenDoc
    grants: list[GrantDoc]


@document
class TokenRevoked(TypedDict):
    id: str
    revoked_at: int
    block: str


@document
class GrantRevoked(TypedDict):
    id: str
    revoked_at: int
    block: str


@document
class AccessDoc(TypedDict):
    """One line of the access log: a read under a grant, or a request refused for its scope."""

    cursor: str
    at: int
    token: str
    principal: str
    method: str
    path: str
    dataset: str
    district: str | None
    grant: str | None
    status: int
    records: int


@document
class AccessPage(TypedDict):
    items: list[AccessDoc]
    next: str | None


@document
class Remembered(TypedDict):
    """The answer kept for an Idempotency-Key."""

    fingerprint: str
    status: int
    body: str
