"""Who may use the dashboard: operators, the password hashes of citizens and operators,
and the disputes between them. Sign-in throttling keeps its own counts (the store's sign-in module).
"""

from __future__ import annotations

from typing import Any

from ledger.store.store import Store


def operator(store: Store, operator_id: str) -> tuple[str, str] | None:
    """(name, comma-separated districts) of an operator."""
    row = store.con.execute("SELECT name, districts FROM operators WHERE operator = ?", [operator_id]).fetchone()
    return (row[0], row[1]) if row else None


def add_operator(store: Store, operator_id: str, name: str, districts: str, at: int) -> None:
    store.con.execute("INSERT INTO operators VALUES (?, ?, ?, ?)", [operator_id, name, districts, at])


def set_operator_districts(store: Store, operator_id: str, districts: str) -> None:
    store.con.execute("UPDATE operators SET districts = ? WHERE operator = ?", [districts, operator_id])


def account_name(store: Store, account: str) -> str | None:
    row = store.con.execute("SELECT name FROM accounts WHERE account = ?", [account]).fetchone()
    return row[0] if row else None


def set_password_hash(store: Store, role: str, principal: str, password_hash: str, at: int) -> None:
    store.con.execute("INSERT OR REPLACE INTO logins VALUES (?, ?, ?, ?, 0, 0)", [role, principal, password_hash, at])


def password_hash(store: Store, role: str, principal: str) -> str | None:
    row = store.con.execute("SELECT password_hash FROM logins WHERE role = ? AND id = ?", [role, principal]).fetchone()
    return row[0] if row else None


def dispute_account(store: Store, dispute_id: str) -> str | None:
    """The account a dispute is about, None for an unknown dispute."""
    row = store.con.execute("SELECT account FROM disputes WHERE id = ? LIMIT 1", [dispute_id]).fetchone()
    return row[0] if row else None


def add_dispute_message(
    store: Store, dispute_id: str, at: int, account: str, author: str, status: str, subject: str | None, message: str
) -> None:
    store.con.execute(
        "INSERT INTO disputes VALUES (?, ?, ?, ?, ?, ?, ?)", [dispute_id, at, account, author, status, subject, message]
    )


def operators(store: Store) -> list[tuple[str, str, str, int]]:
    """(operator, name, comma-separated districts, created_at) of every operator."""
    return [
        tuple(r)
        for r in store.con.execute("SELECT operator, name, districts, created_at FROM operators ORDER BY 1").fetchall()
    ]


DisputeMessageRow = tuple[str, int, str, str, str, str | None, str]
"""(id, at, account, author, status, subject, message): one message of a dispute."""


def dispute_messages(store: Store, account: str | None, districts: list[str] | None) -> list[DisputeMessageRow]:
    """(id, at, account, author, status, subject, message) of every message of the disputes of
    `account`, else of the accounts with a device in `districts` (None or "all": every dispute)."""
    sql = "SELECT id, at_ms, account, author, status, subject, message FROM disputes"
    args: list[Any] = []
    if account is not None:
        sql += " WHERE account = ?"
        args.append(account)
    elif districts is not None and "all" not in districts:
        sql += (
            (
                " WHERE account IN (SELECT account FROM devices WHERE district IN ("
                + ", ".join("?" * len(districts))
                + "))"
            )
            if districts
            else " WHERE false"
        )
        args += districts
    return [tuple(r) for r in store.con.execute(sql + " ORDER BY id, at_ms", args).fetchall()]
