"""The HTTP API's callers in the database: tokens (as hashes), sharing grants, the access log
and the answers kept for idempotent writes. Rows, as stored; the rules over them, and the
values they make, are ledger/people/tokens.py's (the service builds them: the store sits below).
"""

from __future__ import annotations

from ledger.store.store import Store

TokenRow = tuple[str, str, str, str, int, int, int | None, int]
"""(id, kind, principal, scopes as lines of DISTRICTS:DATASETS:MODE, created_at, expires_at, revoked_at,
rate_per_minute)."""
GrantRow = tuple[str, str, str, str, int, int, int | None, str, int, str | None]
"""(id, from_district, to_agency, dataset, granted_at, until, revoked_at, operator, height, revoked_by)."""

AccessRow = tuple[int, str, str, str, str, str, str | None, str | None, int, int]
"""(at_ms, token, principal, method, path, dataset, district, grant_id, status, records)."""


def add_token(store: Store, t: TokenRow, secret_hash: str, height: int) -> None:
    tid, kind, principal, scopes, created, expires, revoked, rate = t
    store.con.execute(
        "INSERT INTO api_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [tid, kind, principal, scopes, secret_hash, created, expires, revoked, rate, height],
    )


_TOKEN_COLUMNS = "id, kind, principal, scopes, created_at, expires_at, revoked_at, rate_per_minute"


def token(store: Store, token_id: str) -> tuple[TokenRow, str] | None:
    """The token and the SHA-256 of its secret."""
    row = store.con.execute(f"SELECT {_TOKEN_COLUMNS}, secret_hash FROM api_tokens WHERE id = ?", [token_id]).fetchone()
    return (tuple(row[:-1]), row[-1]) if row else None  # type: ignore[return-value]


def tokens(store: Store, principal: str | None = None) -> list[TokenRow]:
    sql = f"SELECT {_TOKEN_COLUMNS} FROM api_tokens"
    args: list[object] = []
    if principal is not None:
        sql += " WHERE principal = ?"
        args.append(principal)
    return [tuple(r) for r in store.con.execute(sql + " ORDER BY created_at, id", args).fetchall()]  # type: ignore[misc]


def revoke_token(store: Store, token_id: str, at: int) -> None:
    store.con.execute("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", [at, token_id])


def add_grant(
    store: Store,
    grant_id: str,
    district: str,
    agency: str,
    dataset: str,
    at: int,
    until: int,
    operator: str,
    height: int,
) -> None:
    store.con.execute(
        "INSERT INTO sharing_grants VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
        [grant_id, district, agency, dataset, at, until, operator, height],
    )


def revoke_grant(store: Store, grant_id: str, at: int, operator: str) -> None:
    store.con.execute(
        "UPDATE sharing_grants SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
        [at, operator, grant_id],
    )


def grants(store: Store, district: str | None = None, agency: str | None = None) -> list[GrantRow]:
    where, args = [], []
    if district is not None:
        where.append("from_district = ?")
        args.append(district)
    if agency is not None:
        where.append("to_agency = ?")
        args.append(agency)
    sql = (
        "SELECT id, from_district, to_agency, dataset, granted_at, until, revoked_at, operator, height, revoked_by"
        " FROM sharing_grants" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY granted_at, id"
    )
    return [tuple(r) for r in store.con.execute(sql, args).fetchall()]  # type: ignore[misc]


def add_access(store: Store, rows: list[AccessRow]) -> None:
    if rows:
        store.con.executemany("INSERT INTO api_access VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def access_rows(
    store: Store,
    district: str | None,
    since: int,
    until: int,
    grants_only: bool,
    after: tuple[int, int] | None,
    limit: int,
) -> list[tuple[int, AccessRow]]:
    """(rowid, row) in time order from `after` (at_ms, rowid): the granting district's log, or refusals too."""
    where = ["at_ms >= ?", "at_ms < ?"]
    args: list[object] = [since, until]
    if district is not None:
        where.append("district = ?")
        args.append(district)
    if grants_only:
        where.append("grant_id IS NOT NULL")
    if after is not None:
        where.append("(at_ms, rowid) > (?, ?)")
        args.extend(after)
    sql = (
        "SELECT rowid, at_ms, token, principal, method, path, dataset, district, grant_id, status, records"
        f" FROM api_access WHERE {' AND '.join(where)} ORDER BY at_ms, rowid LIMIT ?"
    )
    return [(r[0], tuple(r[1:])) for r in store.con.execute(sql, [*args, limit]).fetchall()]


def remembered(store: Store, token_id: str, key: str) -> tuple[str, int, str] | None:
    """(fingerprint, status, body) of the answer kept for this token's Idempotency-Key."""
    row = store.con.execute(
        "SELECT fingerprint, status, body FROM api_idempotency WHERE token = ? AND key = ?", [token_id, key]
    ).fetchone()
    return (row[0], row[1], row[2]) if row else None


def remember(store: Store, token_id: str, key: str, fingerprint: str, status: int, body: str, at: int) -> None:
    store.con.execute(
        "INSERT OR IGNORE INTO api_idempotency VALUES (?, ?, ?, ?, ?, ?)",
        [token_id, key, fingerprint, status, body, at],
    )


def forget_before(store: Store, at: int) -> None:
    store.con.execute("DELETE FROM api_idempotency WHERE at_ms < ?", [at])
