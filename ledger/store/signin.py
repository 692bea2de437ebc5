"""Sign-in throttling's tables: the counts per pair, account and source (`signin_counts`), and the
failed sign-ins kept for operators (`signin_failures`).

The policy that reads and bumps the counts is ledger/people/signin.py; here a count is a
plain (failures, last_failure_ms, last_success_ms). The writer calls the writes under its lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import TypedDict

from ledger.documents import document

if TYPE_CHECKING:  # the dashboard imports the policy, and so this module: no DuckDB for it
    from ledger.store.store import Store

ANY_LOGIN = "*"  # a throttled source's attempts: counted per minute, not per invented id


@document
class FailedLogin(TypedDict):
    """A login's failed sign-ins: attempts in all, of them throttled, from how many sources, the last."""

    role: str
    id: str
    failures: int
    throttled: int
    sources: int
    last_at: int


@document
class FailedSource(TypedDict):
    """A source's failed sign-ins: attempts in all, of them throttled, at how many logins, the last."""

    source: str
    failures: int
    throttled: int
    logins: int
    last_at: int


@document
class RepeatedFailures(TypedDict):
    logins: list[FailedLogin]
    sources: list[FailedSource]


def load_counts(store: Store, pair: str, account: str, source: str) -> dict[str, tuple[int, int, int]]:
    """scope -> (failures, last_failure_ms, last_success_ms) of the keys one attempt is counted against."""
    rows = store.con.execute(
        "SELECT scope, key, failures, last_failure_ms, last_success_ms FROM signin_counts"
        " WHERE (scope = 'pair' AND key = ?) OR (scope = 'account' AND key = ?)"
        " OR (scope = 'source' AND key = ?)",
        [pair, account, source],
    ).fetchall()
    return {scope: (int(f), int(lf), int(ls)) for scope, _, f, lf, ls in rows}


def save_count(store: Store, scope: str, key: str, failures: int, last_failure_ms: int, last_success_ms: int) -> None:
    store.con.execute(
        "INSERT OR REPLACE INTO signin_counts VALUES (?, ?, ?, ?, ?)",
        [scope, key, failures, last_failure_ms, last_success_ms],
    )


def forget_stale(store: Store, failed_before_ms: int, succeeded_before_ms: int, failures_before_ms: int) -> None:
    """Counts with no failure since `failed_before_ms` and no success since `succeeded_before_ms` go,
    and failed sign-ins from before `failures_before_ms`."""
    store.con.execute(
        "DELETE FROM signin_counts WHERE last_failure_ms < ? AND last_success_ms < ?",
        [failed_before_ms, succeeded_before_ms],
    )
    store.con.execute("DELETE FROM signin_failures WHERE at_ms < ?", [failures_before_ms])


def record_failure(
    store: Store, at_ms: int, role: str, login: str, source: str, throttled_since_ms: int | None
) -> bool:
    """A failed sign-in, as a row of its own, or (`throttled_since_ms` given: a throttled attempt) counted
    into the throttled row of the same role, login and source begun at or after `throttled_since_ms` if
    there is one. True when a row was added, False when an existing row was counted up."""
    if throttled_since_ms is not None:
        counted = store.con.execute(
            "UPDATE signin_failures SET attempts = attempts + 1, last_ms = ? WHERE throttled"
            " AND at_ms >= ? AND role = ? AND id = ? AND source = ?",
            [at_ms, throttled_since_ms, role, login, source],
        ).fetchone()
        if counted and counted[0]:
            return False
    store.con.execute(
        "INSERT INTO signin_failures VALUES (?, ?, ?, ?, ?, 1, ?)",
        [at_ms, role, login, source, throttled_since_ms is not None, at_ms],
    )
    return True


def repeated_failures(store: Store, since_ms: int, districts: list[str] | None, at_least: int) -> RepeatedFailures:
    """Logins and sources with at least `at_least` failed attempts since `since_ms`, most first.
    `districts` None: the whole city, every login. Else only citizens' accounts with a device in
    those districts (what a district operator looks after), and sources counted on those alone."""
    where = "at_ms >= ?"
    args: list[int | str] = [since_ms]
    if districts is not None:
        marks = ", ".join("?" * len(districts)) or "NULL"
        where += f" AND role = 'citizen' AND id IN (SELECT account FROM devices WHERE district IN ({marks}))"
        args += districts
    logins = store.con.execute(
        f"SELECT role, id, sum(attempts), sum(attempts) FILTER (WHERE throttled), count(DISTINCT source),"
        f" max(last_ms) FROM signin_failures WHERE {where} AND id <> '{ANY_LOGIN}' GROUP BY role, id"
        f" HAVING sum(attempts) >= ? ORDER BY 3 DESC, 6 DESC LIMIT 50",
        [*args, at_least],
    ).fetchall()
    sources = store.con.execute(
        f"SELECT source, sum(attempts), sum(attempts) FILTER (WHERE throttled), count(DISTINCT role || ':' || id),"
        f" max(last_ms) FROM signin_failures WHERE {where} GROUP BY source HAVING sum(attempts) >= ?"
        f" ORDER BY 2 DESC, 5 DESC LIMIT 50",
        [*args, at_least],
    ).fetchall()
    return {
        "logins": [
            {"role": r, "id": i, "failures": int(n), "throttled": int(t or 0), "sources": int(s), "last_at": last}
            for r, i, n, t, s, last in logins
        ],
        "sources": [
            {"source": src, "failures": int(n), "throttled": int(t or 0), "logins": int(k), "last_at": last}
            for src, n, t, k, last in sources
        ],
    }
