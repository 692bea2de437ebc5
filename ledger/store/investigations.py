"""Anomalies and their events (`anomalies`, `anomaly_events`): each anomaly's latest state, its
history, and the rows that raise, update and move it. Only appended to, never edited; what may
be appended when is ledger/anomalies/investigations.py's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from typing_extensions import TypedDict

from ledger.documents import document
from ledger.store.store import Store


@document
class Anomaly(TypedDict):
    """An anomaly as it stands now: as raised, with its latest status, window, severity, evidence
    and detail (each the latest event's that set one; the columns allow NULL)."""

    id: str
    key: str
    type: str
    device: str
    account: str | None
    district: str
    raised_at: int
    status: str  # open | acknowledged | resolved | dismissed
    window_start: int | None
    window_end: int | None
    severity: str | None
    evidence: list[list[str | int]]  # [device, seq] of ledgered readings
    detail: str | None
    updated_at: int


@document
class AnomalyEvent(TypedDict):
    """One event of an anomaly's history: raised, updated by a detector, or an operator's action."""

    at: int
    status: str  # open | updated | acknowledged | resolved | dismissed
    operator: str | None  # "detector" when raised, None for an update
    note: str | None
    window_end: int | None
    severity: str | None
    detail: str | None


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


def _row(r: tuple[Any, ...]) -> Anomaly:
    (
        anomaly_id,
        key,
        kind,
        device,
        account,
        district,
        raised_at,
        status,
        window_start,
        window_end,
        severity,
        evidence,
        detail,
        updated_at,
    ) = r
    return {
        "id": anomaly_id,
        "key": key,
        "type": kind,
        "device": device,
        "account": account,
        "district": district,
        "raised_at": raised_at,
        "status": status,
        "window_start": window_start,
        "window_end": window_end,
        "severity": severity,
        "evidence": json.loads(evidence) if evidence else [],
        "detail": detail,
        "updated_at": updated_at,
    }


# ---------------------------------------------------------------- reading


def all_anomalies(store: Store) -> list[Anomaly]:
    """Every anomaly as it stands now (its latest status, window, severity, evidence and detail)."""
    return [_row(r) for r in store.con.execute(_latest_sql()).fetchall()]


def list_anomalies(
    store: Store,
    *,
    status: str | None = None,
    type: str | None = None,
    district: str | None = None,
    districts: Iterable[str] | None = None,
    limit: int = 500,
    raised_before: tuple[int, str] | None = None,
) -> list[Anomaly]:
    """Newest changed first; with `raised_before`, newest raised first from below that (raised_at, id)
    on: pages in an order an update cannot disturb (the HTTP API's)."""
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
    if raised_before is None:
        sql += " ORDER BY updated_at DESC LIMIT ?"
    else:
        sql += " AND (raised_at, id) < (?, ?) ORDER BY raised_at DESC, id DESC LIMIT ?"
        args += list(raised_before)
    return [_row(r) for r in store.con.execute(sql, [*args, limit]).fetchall()]


def anomaly(store: Store, anomaly_id: str) -> Anomaly | None:
    """One anomaly as it stands now, or None."""
    rows = store.con.execute(f"SELECT * FROM ({_latest_sql()}) WHERE id = ?", [anomaly_id]).fetchall()
    return _row(rows[0]) if rows else None


def history(store: Store, anomaly_id: str) -> list[AnomalyEvent]:
    """Every event of an anomaly, oldest first."""
    return [
        {
            "at": at,
            "status": status,
            "operator": operator,
            "note": note,
            "window_end": window_end,
            "severity": severity,
            "detail": detail,
        }
        for at, status, operator, note, window_end, severity, detail in store.con.execute(
            "SELECT at_ms, status, operator, note, window_end, severity, detail FROM anomaly_events"
            " WHERE id = ? ORDER BY at_ms",
            [anomaly_id],
        ).fetchall()
    ]


# ---------------------------------------------------------------- writing
# `snapshot` is what a detector saw: [window_start, window_end, severity, evidence (JSON), detail].


def raise_anomaly(
    store: Store,
    anomaly_id: str,
    key: str,
    type: str,
    device: str,
    account: str | None,
    district: str,
    at: int,
    snapshot: list[Any],
) -> None:
    """A new anomaly, opened by the detector."""
    store.con.execute(
        "INSERT INTO anomalies VALUES (?, ?, ?, ?, ?, ?, ?)", [anomaly_id, key, type, device, account, district, at]
    )
    store.con.execute(
        "INSERT INTO anomaly_events VALUES (?, ?, 'open', 'detector', NULL, ?, ?, ?, ?, ?)", [anomaly_id, at, *snapshot]
    )


def add_update(store: Store, anomaly_id: str, at: int, snapshot: list[Any]) -> None:
    """What a detector sees now of an ongoing anomaly."""
    store.con.execute(
        "INSERT INTO anomaly_events VALUES (?, ?, 'updated', NULL, NULL, ?, ?, ?, ?, ?)", [anomaly_id, at, *snapshot]
    )


def add_transition(store: Store, anomaly_id: str, at: int, status: str, operator: str, note: str | None) -> None:
    """An operator's ack, resolve or dismiss."""
    store.con.execute(
        "INSERT INTO anomaly_events VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
        [anomaly_id, at, status, operator, note],
    )
