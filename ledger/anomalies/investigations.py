"""Anomalies as operators work them: raised once per condition, then only appended to.

A detector's finding with a key that is already open (or acknowledged) updates
that anomaly instead of raising a second one. Every change, whether a detector's
update or an operator's ack, resolve or dismiss, is a new row in `anomaly_events`;
nothing is overwritten, so the history of an investigation is its record.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from typing import Any

from ledger.store.store import Store
from ledger.errors import NotFound, Refused

OPEN_STATES = ("open", "acknowledged")
TRANSITIONS = {"acknowledged": ("open",), "resolved": ("open", "acknowledged"), "dismissed": ("open", "acknowledged")}


class InvestigationError(Refused):
    """An action the anomaly's state does not allow; the message is for the operator."""


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


def record_findings(store: Store, findings: Iterable[Any], now: int) -> dict[str, int]:
    """Raise new anomalies and update ongoing ones; returns how many of each."""
    current = {a["key"]: a for a in _all(store) if a["status"] in OPEN_STATES or a["status"] == "dismissed"}
    raised = updated = 0
    with store.transaction() as con:
        for f in findings:
            snapshot = [f.window_start, f.window_end, f.severity, json.dumps([list(e) for e in f.evidence]), f.detail]
            known = current.get(f.key)
            if known is not None and (known["status"] in OPEN_STATES or f.window_start <= (known["window_end"] or 0)):
                # The same condition, still going on (a dismissed one is not raised again while it lasts).
                if (known["window_end"], known["severity"], known["evidence"]) != (
                        f.window_end, f.severity, [list(e) for e in f.evidence]):
                    con.execute("INSERT INTO anomaly_events VALUES (?, ?, 'updated', NULL, NULL, ?, ?, ?, ?, ?)",
                                [known["id"], now, *snapshot])
                    updated += 1
                continue
            anomaly_id = f"an-{secrets.token_hex(5)}"
            con.execute("INSERT INTO anomalies VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [anomaly_id, f.key, f.type, f.device, f.account, f.district, now])
            con.execute("INSERT INTO anomaly_events VALUES (?, ?, 'open', 'detector', NULL, ?, ?, ?, ?, ?)",
                        [anomaly_id, now, *snapshot])
            raised += 1
    return {"raised": raised, "updated": updated}


def _all(store: Store) -> list[dict[str, Any]]:
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


def get_anomaly(store: Store, anomaly_id: str) -> dict[str, Any]:
    rows = store.con.execute(f"SELECT * FROM ({_latest_sql()}) WHERE id = ?", [anomaly_id]).fetchall()
    if not rows:
        raise NotFound(f"no anomaly {anomaly_id}")
    out = _row(rows[0])
    out["history"] = [
        dict(zip(("at", "status", "operator", "note", "window_end", "severity", "detail"), r))
        for r in store.con.execute(
            "SELECT at_ms, status, operator, note, window_end, severity, detail FROM anomaly_events"
            " WHERE id = ? ORDER BY at_ms", [anomaly_id]).fetchall()]
    return out


def transition(store: Store, anomaly_id: str, status: str, operator: str, note: str | None, now: int) -> dict[str, Any]:
    """Move an anomaly along open -> acknowledged -> resolved, or dismiss it; appended, never edited."""
    if status not in TRANSITIONS:
        raise InvestigationError(f"unknown status {status}")
    if not operator:
        raise InvestigationError("an operator name is required")
    if status in ("resolved", "dismissed") and not (note and note.strip()):
        raise InvestigationError(f"{status} needs a note saying why")
    current = get_anomaly(store, anomaly_id)
    if current["status"] not in TRANSITIONS[status]:
        raise InvestigationError(f"anomaly {anomaly_id} is {current['status']}; it cannot become {status}")
    store.con.execute("INSERT INTO anomaly_events VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
                      [anomaly_id, now, status, operator, note])
    return get_anomaly(store, anomaly_id)
