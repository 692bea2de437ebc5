"""An audit started from the dashboard: one at a time per dashboard process, followed by every page.

The audit runs where the ledger lives (inside ingest, over its socket, on its own
cursor and thread), reports progress block by block, and its result is written
where the scheduler writes its own (`audit.json` in the home), so the overview
shows the latest audit whoever ran it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from dashboard import data
from ledger.clock import now_ms
from ledger.home import Home

log = logging.getLogger("cityledger.dashboard")


class AuditRun:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"running": False}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def start(self, operator: str, home: Home | None = None) -> bool:
        """Start an audit unless one is running; False if one already is."""
        with self._lock:
            if self._state.get("running"):
                return False
            self._state = {"running": True, "done": 0, "total": None, "started_at": now_ms(), "by": operator}
        thread = threading.Thread(
            target=self._run, args=(home or Home.from_env(),), name="dashboard-audit", daemon=True
        )
        thread.start()
        return True

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._state.update(done=done, total=total)

    def _run(self, home: Home) -> None:
        try:
            report: dict[str, Any] = dict(data.ledger().verify(progress=self._progress))
            report["finished_at"] = now_ms()
            report["by"] = self._state.get("by")
            tmp = home.last_audit.with_suffix(".tmp")
            tmp.write_text(json.dumps(report))
            tmp.replace(home.last_audit)
            with self._lock:
                self._state.update(running=False, report=report, finished_at=report["finished_at"])
            log.info("audit by %s: %s", report["by"], "intact" if report["ok"] else report.get("failure"))
        except Exception as exc:  # shown to the operator as a sentence, logged with its trace
            log.exception("audit failed to run")
            with self._lock:
                self._state.update(running=False, error=f"{type(exc).__name__}: {exc}"[:300], finished_at=now_ms())


RUN = AuditRun()
