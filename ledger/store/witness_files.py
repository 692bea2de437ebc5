"""A witness's directory: the headers it accepted, its alarms and its state, in files.

What `check` (ledger/chain/witness.py) decided is kept here, so a witness that restarts,
or an auditor running `cityledger verify --witness DIR`, sees exactly what was accepted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.chain.protocol import canonical_json
from ledger.chain.witness import (
    ALARMS_FILE,
    HEADERS_FILE,
    MAX_HEADER_BYTES,
    STATE_FILE,
    Accepted,
    Alarm,
    SignedHeader,
    WitnessState,
    alarm_record,
    valid_key_hex,
)
from ledger.home import write_private


@dataclass(frozen=True, slots=True)
class StoreError:
    """Why a witness store cannot be used (the operator must look at it)."""

    message: str


class WitnessStore:
    """A witness's directory: headers.jsonl, alarms.jsonl and state.json.

    headers.jsonl is the record (one accepted header per line, appended, fsynced,
    in acceptance order); state.json names the key the operator trusted and
    summarises the rest, so a restart needs no flags. The state is rebuilt from
    headers.jsonl on open, which keeps the two from disagreeing after a crash.
    """

    def __init__(self, root: Path, state: WitnessState) -> None:
        self.root = root
        self.state = state

    @classmethod
    def open(cls, root: Path, ledger_key: str | None = None) -> WitnessStore | StoreError:
        """Open (creating on first run with `ledger_key`) a store; a problem as a value."""
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not (root / STATE_FILE).exists():
                return cls._create(root, ledger_key)
            state = load_state(root, repair=True)
        except OSError as exc:
            return StoreError(f"cannot use witness store {root}: {exc}")
        if isinstance(state, StoreError):
            return state
        if ledger_key is not None and not (valid_key_hex(ledger_key) and state.knows_key(ledger_key)):
            return StoreError(
                f"--ledger-key {ledger_key} contradicts {root / STATE_FILE}, which trusts "
                f"{state.initial_key} (now {state.key}); use a new store to follow another ledger"
            )
        store = cls(root, state)
        store.save_state()
        return store

    @classmethod
    def _create(cls, root: Path, ledger_key: str | None) -> WitnessStore | StoreError:
        if ledger_key is None:
            return StoreError(f"no ledger key known for new witness store {root}: the first run needs --ledger-key")
        if not valid_key_hex(ledger_key):
            return StoreError("--ledger-key must be 64 hex digits (a 32-byte Ed25519 public key)")
        if (root / HEADERS_FILE).exists():
            return StoreError(f"{root / HEADERS_FILE} exists without {STATE_FILE}: not starting over it")
        store = cls(root, WitnessState.new(ledger_key))
        store.save_state()
        return store

    def record(self, accepted: Accepted, received_at: int) -> None:
        """Keep an accepted header durably, then advance the state."""
        _append_line(self.root / HEADERS_FILE, {**accepted.signed.as_dict(), "received_at": received_at})
        self.state.apply(accepted)
        self.save_state()

    def record_alarm(self, alarm: Alarm, *, witness: str, at: int, source: str, payload: bytes) -> dict[str, Any]:
        """Keep an alarm with the evidence (the payload, cut at 4 KiB); returns the record."""
        record = alarm_record(alarm, witness=witness, at=at)
        _append_line(
            self.root / ALARMS_FILE, {**record, "source": source, "payload": payload[:4096].decode("utf-8", "replace")}
        )
        return record

    def save_state(self) -> None:
        write_private(self.root / STATE_FILE, canonical_json(self.state.summary()) + b"\n")

    def headers(self) -> Iterator[dict[str, Any]]:
        """Every accepted header record, in acceptance order (hash, header, sig, received_at)."""
        return iter_headers(self.root)

    def alarms(self) -> list[dict[str, Any]]:
        return list(_read_lines(self.root / ALARMS_FILE))


def iter_headers(root: Path) -> Iterator[dict[str, Any]]:
    """Read headers.jsonl lazily; a torn last line (a crash mid-append) is skipped."""
    return _read_lines(root / HEADERS_FILE)


def load_headers(root: Path) -> dict[int, dict[str, Any]]:
    """height -> {"hash", "header", "sig"} of everything a witness accepted: what
    `cityledger verify --witness DIR` compares with the ledger's own blocks."""
    return {
        rec["header"]["height"]: {"hash": rec["hash"], "header": rec["header"], "sig": rec["sig"]}
        for rec in iter_headers(root)
    }


def load_state(root: Path, *, repair: bool = False) -> WitnessState | StoreError:
    """Rebuild the state: the trusted key from state.json, the rest by replaying headers.jsonl.

    With `repair`, a torn last line of headers.jsonl is cut off (it was never
    acknowledged to the broker, so it will be delivered again).
    """
    try:
        summary = json.loads((root / STATE_FILE).read_text())
        state = WitnessState.new(summary["ledger_key"])
        if repair:
            _cut_torn_tail(root / HEADERS_FILE)
        for rec in iter_headers(root):
            state.apply(_replayed(state, rec))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return StoreError(f"witness store {root} is damaged: {type(exc).__name__}: {exc}")
    return _consistent(root, state, summary)


def _replayed(state: WitnessState, rec: dict[str, Any]) -> Accepted:
    """An accepted header read back; heights only ever grew, so a gap is any skipped height."""
    signed, last = SignedHeader(rec["hash"], rec["header"], rec["sig"]), state.height
    if last is None:
        return Accepted(signed)
    if signed.height <= last:
        raise ValueError(f"{HEADERS_FILE}: height {signed.height} after {last}")
    return Accepted(signed, (last + 1, signed.height - 1) if signed.height > last + 1 else None)


def _consistent(root: Path, state: WitnessState, summary: dict[str, Any]) -> WitnessState | StoreError:
    """state.json may lag headers.jsonl by a crash, never disagree with it."""
    height, digest = summary.get("height"), summary.get("hash")
    if height is not None and state.hashes.get(height) != digest:
        return StoreError(
            f"witness store {root} is damaged: {STATE_FILE} names {digest} at height {height}, "
            f"which {HEADERS_FILE} does not hold"
        )
    return state


def _append_line(path: Path, obj: dict[str, Any]) -> None:
    """Append one JSON line and make it durable before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, canonical_json(obj) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # torn by a crash mid-append
            yield json.loads(raw)


def _cut_torn_tail(path: Path, window: int = 4 * MAX_HEADER_BYTES) -> None:
    """Cut a last line that has no newline; one line is far smaller than `window`."""
    if not path.exists():
        return
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        start = max(0, size - window)
        fh.seek(start)
        tail = fh.read()
        if not tail or tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut < 0 and start > 0:
            raise ValueError(f"{path}: last line longer than {window} bytes")
        fh.truncate(start + cut + 1)
        fh.flush()
        os.fsync(fh.fileno())
