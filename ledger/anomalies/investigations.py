"""Anomalies as operators work them: raised once per condition, then only appended to.

A detector's finding with a key that is already open (or acknowledged) updates
that anomaly instead of raising a second one. Every change, whether a detector's
update or an operator's ack, resolve or dismiss, is a new row in `anomaly_events`;
nothing is overwritten, so the history of an investigation is its record.
The rows and their SQL are the store's (ledger/store/investigations.py).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from typing_extensions import TypedDict

from ledger.anomalies.detectors import Finding
from ledger.documents import document
from ledger.errors import NotFound, Refused
from ledger.store import investigations as stored
from ledger.store.investigations import Anomaly, AnomalyEvent
from ledger.store.store import Store

OPEN_STATES = ("open", "acknowledged")
TRANSITIONS = {"acknowledged": ("open",), "resolved": ("open", "acknowledged"), "dismissed": ("open", "acknowledged")}


class InvestigationError(Refused):
    """An action the anomaly's state does not allow; the message is for the operator."""


@document
class FindingsRecorded(TypedDict):
    """What a scan's findings did: anomalies raised, ongoing ones updated."""

    raised: int
    updated: int


@document
class AnomalyDetail(Anomaly):
    """An anomaly as it stands now, with every event of its history, oldest first."""

    history: list[AnomalyEvent]


def record_findings(store: Store, findings: Iterable[Finding], now: int) -> FindingsRecorded:
    """Raise new anomalies and update ongoing ones; returns how many of each."""
    current = {
        a["key"]: a for a in stored.all_anomalies(store) if a["status"] in OPEN_STATES or a["status"] == "dismissed"
    }
    raised = updated = 0
    with store.transaction():
        for f in findings:
            snapshot = [f.window_start, f.window_end, f.severity, json.dumps([list(e) for e in f.evidence]), f.detail]
            known = current.get(f.key)
            if known is not None and (known["status"] in OPEN_STATES or f.window_start <= (known["window_end"] or 0)):
                # The same condition, still going on (a dismissed one is not raised again while it lasts).
                if (known["window_end"], known["severity"], known["evidence"]) != (
                    f.window_end,
                    f.severity,
                    [list(e) for e in f.evidence],
                ):
                    stored.add_update(store, known["id"], now, snapshot)
                    updated += 1
                continue
            anomaly_id = f"an-{secrets.token_hex(5)}"
            stored.raise_anomaly(store, anomaly_id, f.key, f.type, f.device, f.account, f.district, now, snapshot)
            raised += 1
    return {"raised": raised, "updated": updated}


list_anomalies = stored.list_anomalies  # a plain read: filtered by status, type and districts, newest first


def get_anomaly(store: Store, anomaly_id: str) -> AnomalyDetail:
    out = stored.anomaly(store, anomaly_id)
    if out is None:
        raise NotFound(f"no anomaly {anomaly_id}")
    return {**out, "history": stored.history(store, anomaly_id)}


def transition(store: Store, anomaly_id: str, status: str, operator: str, note: str | None, now: int) -> AnomalyDetail:
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
    stored.add_transition(store, anomaly_id, now, status, operator, note)
    return get_anomaly(store, anomaly_id)
