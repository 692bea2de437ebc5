"""What the scheduler's background jobs did last: kept in the home for `status` and the dashboard.

A job that fails (an audit that finds nothing to open, a scan that raises) used to be
a line in the scheduler's log that nobody read. Each run is now recorded: when it
started and ended, whether it failed and why, and how many times in a row, so a
failing roll-up or scan is on the operators' screen within a minute.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ledger.home import write_private
from ledger.service.results.chain import JobStatus

ERROR_CHARS = 300  # a message, not a trace: the trace is in the scheduler's log


@dataclass(frozen=True, slots=True)
class JobRecord:
    job: str
    runs: int = 0
    failures: int = 0  # in a row, up to the last run
    failures_total: int = 0
    last_started_at: int | None = None
    last_finished_at: int | None = None
    last_ok_at: int | None = None
    last_seconds: float | None = None
    last_error: str | None = None

    @property
    def failing(self) -> bool:
        return self.failures > 0


def started(previous: JobRecord | None, job: str, at: int) -> JobRecord:
    return replace(previous or JobRecord(job), last_started_at=at)


def finished(record: JobRecord, at: int, error: BaseException | None) -> JobRecord:
    """The record after a run that ended at `at`, with `error` if it raised."""
    seconds = (at - record.last_started_at) / 1000 if record.last_started_at is not None else None
    if error is None:
        return replace(
            record,
            runs=record.runs + 1,
            failures=0,
            last_finished_at=at,
            last_ok_at=at,
            last_seconds=seconds,
            last_error=None,
        )
    message = f"{type(error).__name__}: {error}"[:ERROR_CHARS]
    return replace(
        record,
        runs=record.runs + 1,
        failures=record.failures + 1,
        failures_total=record.failures_total + 1,
        last_finished_at=at,
        last_seconds=seconds,
        last_error=message,
    )


def load(path: Path) -> dict[str, JobRecord]:
    """The records in `path`; none when the scheduler never ran, or the file is unreadable."""
    try:
        raw = json.loads(path.read_text())
        return {name: JobRecord(**fields) for name, fields in raw.items()}
    except (OSError, ValueError, TypeError):
        return {}


def statuses(path: Path) -> dict[str, JobStatus]:
    """What `status` shows of each job: its record in `path`, and whether it is failing."""
    return {
        name: {
            "job": r.job,
            "runs": r.runs,
            "failures": r.failures,
            "failures_total": r.failures_total,
            "last_started_at": r.last_started_at,
            "last_finished_at": r.last_finished_at,
            "last_ok_at": r.last_ok_at,
            "last_seconds": r.last_seconds,
            "last_error": r.last_error,
            "failing": r.failing,
        }
        for name, r in load(path).items()
    }


def save(path: Path, records: dict[str, JobRecord]) -> None:
    write_private(path, json.dumps({name: asdict(r) for name, r in sorted(records.items())}, indent=1))
