"""What the anomaly scan answers (`LedgerAPI.scan_anomalies`). An anomaly itself, as it stands and
with its history, is the store's row (ledger/store/investigations.py: `Anomaly`) and the
investigations' document (ledger/anomalies/investigations.py: `AnomalyDetail`)."""

from __future__ import annotations

from typing_extensions import TypedDict

from ledger.documents import document


@document
class ScanSummary(TypedDict):
    """One scan: anomalies raised and ongoing ones updated (`FindingsRecorded`), the detectors'
    findings in all and by type, and the active devices looked at."""

    raised: int
    updated: int
    findings: int
    by_type: dict[str, int]
    devices: int
