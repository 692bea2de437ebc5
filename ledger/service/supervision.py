"""The state file of `cityledger up`'s supervisor: HOME/supervisor.json.

Written by the supervisor (ledger/city/supervisor.py), atomically (temporary file, 0600,
rename); read by `cityledger status` through `parts_status`, so an operator sees restarts
from any shell. It lives below both, as the one definition of the file's shape.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from ledger.clock import now_ms
from ledger.home import Home, write_private
from ledger.service.results.chain import PartStatus

STATE_VERSION = 1


@dataclass
class PartRecord:
    """What the state file says about one part. Times are Unix epoch milliseconds."""

    state: str = "starting"  # starting | running | backoff | stopped
    pid: int | None = None
    restarts: int = 0
    last_restart_at: int | None = None
    last_exit_code: int | None = None  # Popen's returncode: negative for a signal
    last_exit: str | None = None  # the same in words
    last_exit_at: int | None = None
    started_at: int | None = None
    crash_looping: bool = False


def write_state(path: Path, parts: Mapping[str, PartRecord], supervisor_pid: int | None = None) -> None:
    """Replace the state file atomically (0600): a reader sees the old or the new whole file."""
    doc = {
        "version": STATE_VERSION,
        "supervisor_pid": supervisor_pid if supervisor_pid is not None else os.getpid(),
        "updated_at": now_ms(),
        "parts": {name: asdict(rec) for name, rec in parts.items()},
    }
    write_private(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def read_state(path: Path) -> dict[str, Any] | None:
    """The whole state file, or None when there is none (no `up` ever ran here) or it is unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, PermissionError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("parts"), dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parts_status(home: Home) -> dict[str, PartStatus]:
    """What `cityledger status` shows under `supervisor`: {part: {restarts, last_restart_at, ...}}, or {}.

    If the `up` that wrote the file is gone without stopping its parts (killed),
    a part it called running is reported `unsupervised`: it may still run, but
    nobody restarts it.
    """
    doc = read_state(home.supervisor_state)
    if doc is None:
        return {}
    # The file's parts are `PartRecord`s as `write_state` wrote them (asdict): taken as such, unchecked.
    parts = {str(k): cast(PartStatus, dict(v)) for k, v in doc["parts"].items() if isinstance(v, dict)}
    if not _alive(doc.get("supervisor_pid")):
        for rec in parts.values():
            if rec.get("state") != "stopped":
                rec["state"] = "unsupervised"
    return parts


def describe_restarts(parts: Mapping[str, Mapping[str, Any]]) -> str | None:
    """One line for the plain `status`: 'ingest 2 (last 14:03:07, killed by SIGKILL), ...', or None."""
    said = []
    for name, rec in parts.items():
        if rec.get("restarts"):
            when = rec.get("last_restart_at")
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when / 1000)) if when else "?"
            loop = ", crash-looping" if rec.get("crash_looping") else ""
            said.append(f"{name} {rec['restarts']} (last {at}, after {rec.get('last_exit') or '?'}{loop})")
    return ", ".join(said) or None
