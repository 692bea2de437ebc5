"""Anomalies and their events (`anomalies`, `anomaly_events`): each anomaly's latest state, its
history, and the rows that raise, update and move it. Only appended to, never edited; what may
be appended when is ledger/anomalies/investigations.py's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ledger.store.store import Store


def _latest_sql() -> str:
    return """
        SELECT a.id, a.key, a.type, a.device, a.account, a.district, a.raised_at,
               arg_max(e.status, e.at_ms) FILTER (WHERE e.status <> 'updated') AS status,
               arg_max(e.window_start, e.at_ms) FILTER (WHERE e.window_start IS NOT NULL) AS window_start,
               arg_max(e.window_end, e.at_ms) FILTER (WHERE e.window_end IS NOT NULL) AS window_end,
               arg_max(e.severity, e.at_ms) FILTER (WHERE e.severity IS NOT NULL) AS severity,
               arg_max(e.evidence, e.at_ms) FILTER (WHERE e.evidence IS NOT NULL) AS evidence,
               arg_max(e.detail, e.at_ms) FILTER (WHERE e.detail IS NOT NULL) AS detail,
               max(e.at_ms) AS updated_at
        FROM anomalies a JOIN anomaly_events e USING (id)
        GROUP BY ALL
    """


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("id", "key", "type", "device", "account", "district", "raised_at", "status", "window_start",
            "window_end", "severity", "evidence", "detail", "updated_at")
    out = dict(zip(keys, r))
    out["evidence"] = json.loads(out["evidence"]) if out["evidence"] else []
    return out


# ---------------------------------------------------------------- reading


def all_anomalies(store: Store) -> list[dict[str, Any]]:
    """Every anomaly as it stands now (its latest status, window, severity, evidence and detail)."""
    return [_row(r) for r in store.con.execute(_latest_sql()).fetchall()]


def list_anomalies(store: Store, *, status: str | None = None, type: str | None = None,
                   district: str | None = None, districts: Iterable[str] | None = None,
                   limit: int = 500) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM ({_latest_sql()}) WHERE 1=1"
    args: list[Any] = []
    for column, value in (("status", status), ("type", type), ("district", district)):
        if value:
            sql += f" AND {column} = ?"
            args.append(value)
    if districts is not None:
        allowed = list(districts)
        sql += f" AND district IN ({', '.join('?' * len(allowed)) or 'NULL'})"
        args += allowed
    sql += " ORDER BY updated_at DESC LIMIT ?"
    return [_row(r) for r in store.con.execute(sql, [*args, limit]).fetchall()]


def anomaly(store: Store, anomaly_id: str) -> dict[str, Any] | None:
    """One anomaly as it stands now, or None."""
    rows = store.con.execute(f"SELECT * FROM ({_latest_sql()}) WHERE id = ?", [anomaly_id]).fetchall()
    return _row(rows[0]) if rows else None


def history(store: Store, anomaly_id: str) -> list[dict[str, Any]]:
    """Every event of an anomaly, oldest first."""
    return [dict(zip(("at", "status", "operator", "note", "window_end", "severity", "detail"), r))
            for r in store.con.execute(
                "SELECT at_ms, status, operator, note, window_end, severity, detail FROM anomaly_events"
                " WHERE id = ? ORDER BY at_ms", [anomaly_id]).fetchall()]


# ---------------------------------------------------------------- writing
# `snapshot` is what a detector saw: [window_start, window_end, severity, evidence (JSON), detail].


def raise_anomaly(store: Store, anomaly_id: str, key: str, type: str, device: str, account: str | None,
                  district: str, at: int, snapshot: list[Any]) -> None:
    """A new anomaly, opened by the detector."""
    store.con.execute("INSERT INTO anomalies VALUES (?, ?, ?, ?, ?, ?, ?)",
                      [anomaly_id, key, type, device, account, district, at])
    store.con.execute("INSERT INTO anomaly_events VALUES (?, ?, 'open', 'detector', NULL, ?, ?, ?, ?, ?)",
                      [anomaly_id, at, *snapshot])


def add_update(store: Store, anomaly_id: str, at: int, snapshot: list[Any]) -> None:
    """What a detector sees now of an ongoing anomaly."""
    store.con.execute("INSERT INTO anomaly_events VALUES (?, ?, 'updated', NULL, NULL, ?, ?, ?, ?, ?)",
                      [anomaly_id, at, *snapshot])


def add_transition(store: Store, anomaly_id: str, at: int, status: str, operator: str, note: str | None) -> None:
    """An operator's ack, resolve or dismiss."""
    store.con.execute("INSERT INTO anomaly_events VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
                      [anomaly_id, at, status, operator, note])
