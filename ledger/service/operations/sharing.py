"""The API's callers and the sharing register: tokens for agencies and operators, grants from
a district to an agency, and the access log of reads made under them.

Issuing or revoking a token and making or revoking a grant are ledger entries, sealed with
their table rows: the register of who may see what is as tamper-evident as the readings
(`verify --deep` compares the tables with the entries, ledger/chain/registry_audit.py). A
token's entry carries the SHA-256 of its secret, never the secret: swapping the hash in the
table to let in a token of one's own shows up in that comparison. The access log is the
ledger's own record of reads, kept in a table: it says who read, not what the city is.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import replace

from ledger.clock import now_ms
from ledger.errors import NotFound, Refused
from ledger.people import tokens as rules
from ledger.people.auth import ALL_DISTRICTS
from ledger.people.tokens import Grant, TokenRecord
from ledger.service.results.access import (
    AccessDoc,
    AccessPage,
    CallerDoc,
    GrantDoc,
    GrantRevoked,
    Remembered,
    TokenDoc,
    TokenIssued,
    TokenRevoked,
)
from ledger.service.writer import LedgerWriter, named
from ledger.store import access
from ledger.store import people as store_people
from ledger.store.store import Store

MAX_PAGE = 10_000
IDEMPOTENCY_DAYS = 7  # how long a write's answer is kept for a repeat of its Idempotency-Key


def _refused(exc: rules.ScopeError) -> Refused:
    return Refused(str(exc))


def issue_token(
    writer: LedgerWriter,
    kind: str,
    principal: str,
    scopes: Sequence[str] = (),
    expires: str = f"{rules.DEFAULT_TTL_DAYS}d",
    rate_per_minute: int = rules.DEFAULT_RATE_PER_MINUTE,
    operator: str | None = None,
) -> TokenIssued:
    """A new token: an agency's with the scopes given, or an operator's with the operator's districts."""
    by = named(operator)
    now = now_ms()
    try:
        expires_at = rules.parse_until(expires, now)
        if kind == "agency":
            rules.check_name(principal)
            parsed = tuple(rules.parse_scope(s) for s in scopes)
            if not parsed:
                raise rules.ScopeError("an agency's token needs at least one --scope DISTRICTS:DATASETS[:write]")
        elif kind == "operator":
            if scopes:
                raise rules.ScopeError("an operator's token has the operator's districts; it takes no --scope")
            found = store_people.operator(writer.store, principal)
            if found is None:
                raise NotFound(f"no operator {principal!r}")
            parsed = (rules.Scope(tuple(found[1].split(",")), (rules.ALL,), True),)
        else:
            raise rules.ScopeError(f"a token is for an agency or an operator, not {kind!r}")
    except rules.ScopeError as exc:
        raise _refused(exc) from None
    if not 1 <= rate_per_minute <= 100_000:
        raise Refused("a rate limit is 1 to 100000 requests a minute")
    token_id, token, secret_hash = rules.new_token()
    texts = [s.text() for s in parsed]
    row = (token_id, kind, principal, "\n".join(texts), now, expires_at, None, rate_per_minute)
    with writer.lock:
        height = writer.height + 1
        sealed = writer.seal(
            {
                "entry": "api_token_issued",
                "token": token_id,
                "kind": kind,
                "principal": principal,
                "scopes": texts,
                "expires_at": expires_at,
                "rate_per_minute": rate_per_minute,
                "secret_sha256": secret_hash,
                **by,
                "at": now,
            },
            lambda s: access.add_token(s, row, secret_hash, height),
        )
    return {
        "id": token_id,
        "token": token,
        "kind": kind,
        "principal": principal,
        "scopes": texts,
        "expires_at": expires_at,
        "rate_per_minute": rate_per_minute,
        "block": sealed.hash,
    }


def revoke_token(writer: LedgerWriter, token_id: str, operator: str | None = None) -> TokenRevoked:
    by = named(operator)
    with writer.lock:
        found = access.token(writer.store, token_id)
        if found is None:
            raise NotFound(f"no token {token_id!r}")
        if found[0][6] is not None:
            raise Refused(f"token {token_id} was revoked already")
        at = now_ms()
        sealed = writer.seal(
            {"entry": "api_token_revoked", "token": token_id, **by, "at": at},
            lambda s: access.revoke_token(s, token_id, at),
        )
    return {"id": token_id, "revoked_at": at, "block": sealed.hash}


def _record(row: access.TokenRow) -> TokenRecord:
    tid, kind, principal, scopes, created, expires, revoked, rate = row
    return TokenRecord(
        tid,
        kind,
        principal,
        tuple(rules.parse_scope(s) for s in scopes.splitlines() if s),
        created,
        expires,
        revoked,
        rate,
    )


def token_doc(t: TokenRecord) -> TokenDoc:
    return {
        "id": t.id,
        "kind": t.kind,
        "principal": t.principal,
        "scopes": [s.text() for s in t.scopes],
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
        "rate_per_minute": t.rate_per_minute,
    }


def token_list(store: Store, principal: str | None = None) -> list[TokenDoc]:
    return [token_doc(_record(t)) for t in access.tokens(store, principal)]


def caller(store: Store, token: str, now: int) -> CallerDoc | None:
    """The live token this text is, with its holder's grants; None for anything else."""
    parts = rules.split_token(token)
    if parts is None:
        return None
    found = access.token(store, parts[0])
    if found is None or not rules.secret_matches(found[1], parts[1]):
        return None
    record = _record(found[0])
    if record.kind == "operator":  # an operator's token covers the operator's districts as they are now
        operator = store_people.operator(store, record.principal)
        if operator is None:
            return None
        record = replace(record, scopes=(rules.Scope(tuple(operator[1].split(",")), (rules.ALL,), True),))
    if not record.live(now):
        return None
    grants = access.grants(store, agency=record.principal) if record.kind == "agency" else []
    return {"token": token_doc(record), "grants": [_grant_doc(g) for g in grants]}


def _grant_doc(row: access.GrantRow) -> GrantDoc:
    gid, district, agency, dataset, granted_at, until, revoked_at, operator, height, revoked_by = row
    return {
        "id": gid,
        "from_district": district,
        "to_agency": agency,
        "dataset": dataset,
        "granted_at": granted_at,
        "until": until,
        "revoked_at": revoked_at,
        "operator": operator,
        "height": height,
        "revoked_by": revoked_by,
    }


def grant(
    writer: LedgerWriter, from_district: str, to_agency: str, dataset: str, until: str, operator: str
) -> GrantDoc:
    """Let `to_agency` read `dataset` of `from_district` until `until` (a ledger entry)."""
    by = named(operator)
    now = now_ms()
    try:
        rules.check_name(to_agency)
        rules.check_dataset(dataset)
        until_at = rules.parse_until(until, now)
        [district] = rules.parse_scope(f"{from_district}:{dataset}").districts
    except rules.ScopeError as exc:
        raise _refused(exc) from None
    if district == rules.ALL:
        raise Refused("a grant is from one district")
    if not access.tokens(writer.store, to_agency):
        raise NotFound(f"no agency {to_agency!r}: `cityledger agencies add {to_agency} --scope ...` first")
    g = Grant("g-" + secrets.token_hex(6), district, to_agency, dataset, now, until_at)
    with writer.lock:
        height = writer.height + 1
        writer.seal(
            {
                "entry": "sharing_granted",
                "grant": g.id,
                "from_district": district,
                "to_agency": to_agency,
                "dataset": dataset,
                "until": until_at,
                **by,
                "at": now,
            },
            lambda s: access.add_grant(s, g.id, district, to_agency, dataset, now, until_at, operator, height),
        )
    return _grant_doc((g.id, district, to_agency, dataset, now, until_at, None, operator, height, None))


def revoke_grant(writer: LedgerWriter, grant_id: str, operator: str) -> GrantRevoked:
    by = named(operator)
    with writer.lock:
        found = [g for g in access.grants(writer.store) if g[0] == grant_id]
        if not found:
            raise NotFound(f"no grant {grant_id!r}")
        if found[0][6] is not None:
            raise Refused(f"grant {grant_id} was revoked already")
        at = now_ms()
        sealed = writer.seal(
            {"entry": "sharing_revoked", "grant": grant_id, **by, "at": at},
            lambda s: access.revoke_grant(s, grant_id, at, operator),
        )
    return {"id": grant_id, "revoked_at": at, "block": sealed.hash}


def grant_list(store: Store, district: str | None = None, agency: str | None = None) -> list[GrantDoc]:
    return [_grant_doc(g) for g in access.grants(store, district, agency)]


def record_access(store: Store, rows: Sequence[AccessDoc]) -> None:
    access.add_access(
        store,
        [
            (r["at"], r["token"], r["principal"], r["method"], r["path"], r["dataset"], r["district"], r["grant"])
            + (r["status"], r["records"])
            for r in rows
        ],
    )


def _cursor(at: int, rowid: int) -> str:
    return base64.urlsafe_b64encode(f"{at}.{rowid}".encode()).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[int, int] | None:
    if not cursor:
        return None
    try:
        at, rowid = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(".")
        return int(at), int(rowid)
    except (ValueError, UnicodeDecodeError):
        raise Refused("the cursor is not one this log gave out") from None


def access_log(
    store: Store,
    district: str | None,
    since: int,
    until: int,
    grants_only: bool = True,
    cursor: str | None = None,
    limit: int = 1000,
) -> AccessPage:
    """A district's access log (or the city's, `district` None) in time order, a page at a time."""
    if district == ALL_DISTRICTS:
        district = None
    limit = max(1, min(int(limit), MAX_PAGE))
    rows = access.access_rows(store, district, since, until, grants_only, _after(cursor), limit + 1)
    items: list[AccessDoc] = [
        {
            "cursor": _cursor(r[0], rowid),
            "at": r[0],
            "token": r[1],
            "principal": r[2],
            "method": r[3],
            "path": r[4],
            "dataset": r[5],
            "district": r[6],
            "grant": r[7],
            "status": r[8],
            "records": r[9],
        }
        for rowid, r in rows[:limit]
    ]
    return {"items": items, "next": items[-1]["cursor"] if len(rows) > limit else None}


def remembered(store: Store, token_id: str, key: str) -> Remembered | None:
    found = access.remembered(store, token_id, key)
    return {"fingerprint": found[0], "status": found[1], "body": found[2]} if found else None


def remember(store: Store, token_id: str, key: str, fingerprint: str, status: int, body: str) -> None:
    now = now_ms()
    access.forget_before(store, now - IDEMPOTENCY_DAYS * rules.DAY_MS)
    access.remember(store, token_id, key, fingerprint, status, body, now)
