"""What the CLI and the dashboard may ask of the ledger, whoever owns the file.

DuckDB lets one process hold the database file; while ingest runs, that is
ingest, and these operations run inside it (reached over `ledger.rpc`). When no
ingest runs, a `DirectBackend` opens the file for the length of one call, so a
CLI command or a dashboard page never keeps ingest from starting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ledger.audit import Progress, audit
from ledger.home import Home
from ledger.keys import load_signing_key, public_hex, verify_key_from_hex
from ledger.store import Store
from ledger.writer import LedgerWriter


class Backend(Protocol):
    def reading(self) -> contextlib.AbstractContextManager[Store]: ...
    def writing(self) -> contextlib.AbstractContextManager[LedgerWriter]: ...


class InProcessBackend:
    """Inside the ingest: reads on a fresh cursor, writes through the live writer."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer

    @contextlib.contextmanager
    def reading(self) -> Iterator[Store]:
        store = self.writer.store.cursor()
        try:
            yield store
        finally:
            store.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[LedgerWriter]:
        yield self.writer


class DirectBackend:
    """No ingest running: open the file per call and let go of it at once."""

    def __init__(self, home: Home) -> None:
        self.home = home

    @contextlib.contextmanager
    def reading(self) -> Iterator[Store]:
        if not self.home.database.exists():
            raise FileNotFoundError(f"no ledger in {self.home.root}: run `cityledger init` first")
        store = Store.open(self.home.database, read_only=True)
        try:
            yield store
        finally:
            store.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[LedgerWriter]:
        writer = LedgerWriter.open(self.home)
        try:
            yield writer
        finally:
            writer.close()


class LedgerAPI:
    """The public operations; every result is plain JSON-able data."""

    # Methods the RPC server will run for a client; nothing else is reachable.
    REMOTE = frozenset({
        "status", "devices", "enroll_device", "revoke_device", "reset_device_password", "quarantine",
        "verify", "recent_blocks", "recent_readings", "device_statuses",
    })

    def __init__(self, home: Home, backend: Backend) -> None:
        self.home = home
        self.backend = backend

    def ledger_key(self) -> str:
        return public_hex(load_signing_key(self.home.ledger_key))

    def status(self) -> dict[str, Any]:
        with self.backend.reading() as store:
            counts = store.counts()
            head = store.head()
        return {
            "ledger_key": self.ledger_key(),
            **counts,
            "height": head[0] if head else None,
            "last_block_hash": head[1] if head else None,
        }

    def devices(self) -> list[dict[str, Any]]:
        with self.backend.reading() as store:
            statuses = store.device_statuses()
            out = []
            for rec in store.devices():
                item = rec.public()
                item["online"] = statuses.get(rec.device, ("unknown", None))[0]
                out.append(item)
        return out

    def device_statuses(self) -> dict[str, list[Any]]:
        with self.backend.reading() as store:
            return {d: [s, at] for d, (s, at) in store.device_statuses().items()}

    def enroll_device(self, device: str, kind: str, district: str, public_key: str,
                      account: str | None = None) -> dict[str, Any]:
        with self.backend.writing() as writer:
            return writer.enroll_device(device, kind, district, public_key, account)

    def revoke_device(self, device: str) -> dict[str, Any]:
        with self.backend.writing() as writer:
            return writer.revoke_device(device)

    def reset_device_password(self, device: str, public_key: str | None = None) -> dict[str, Any]:
        with self.backend.writing() as writer:
            return writer.reset_password(device, public_key)

    def quarantine(self, reason: str | None = None, device: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.backend.reading() as store:
            return store.quarantine(reason=reason, device=device, limit=limit)

    def recent_blocks(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.backend.reading() as store:
            return store.recent_blocks(limit)

    def recent_readings(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.backend.reading() as store:
            return store.recent_readings(limit)

    def verify(self, deep: bool = False, ledger_key: str | None = None,
               progress: Progress | None = None) -> dict[str, Any]:
        """Audit the chain against `ledger_key` (default: this home's key)."""
        trusted = verify_key_from_hex(ledger_key or self.ledger_key())
        with self.backend.reading() as store:
            head = store.head()
            report = audit(store.iter_blocks(), store.leaves, trusted, deep=deep,
                           total=(head[0] + 1) if head else 0, progress=progress)
        return report.as_dict()


def local_api(home: Home, writer: LedgerWriter | None = None) -> LedgerAPI:
    return LedgerAPI(home, InProcessBackend(writer) if writer else DirectBackend(home))


ProgressFn = Callable[[int, int], None]
