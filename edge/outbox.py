"""A device's durable queue of signed readings, kept until the ledger acknowledges them.

A reading's seq is allocated and the signed payload stored in ONE SQLite
transaction, and a payload is published only after that transaction commits.
So whatever instruction a crash interrupts, either the seq was never allocated
(nothing left the device) or the reading is on disk and will be sent again: a
seq is never reused for a different reading.

WAL with synchronous=NORMAL survives the process being killed at any point
(the committed WAL frames are in the operating system's cache); a power cut
may lose the last few commits, which is the usual trade for a flash-wearing
device and is stated here so nobody assumes more.

One file holds many devices (a simulated fleet runs in one process), keyed by
device id. An Outbox may be shared between threads; its operations are
serialised by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger.chain.protocol import Reading
from ledger.errors import Unavailable

BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device     TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL DEFAULT 0,  -- highest seq ever allocated
    acked_seq  INTEGER NOT NULL DEFAULT 0,  -- every seq <= this is in the ledger
    last_ts    INTEGER,                     -- the last reading's time and value, so a
    last_value INTEGER                      -- restarted simulation continues its register
);
CREATE TABLE IF NOT EXISTS outbox (
    device  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
"""


class OutboxFull(Unavailable):
    """The outbox cannot store another reading: the disk (or the configured cap) is full.

    The reading was not stored and its seq not allocated; nothing was sent.
    """


@dataclass(frozen=True, slots=True)
class Pending:
    """A stored reading awaiting the ledger's acknowledgement."""

    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeviceState:
    """What the outbox knows of one device."""

    device: str
    last_seq: int  # 0 before the first reading
    acked_seq: int  # 0 before the first acknowledgement
    last_ts: int | None
    last_value: int | None

    @property
    def next_seq(self) -> int:
        """The seq the next reading gets: past both what was allocated and what the ledger has."""
        return max(self.last_seq, self.acked_seq) + 1


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


class Outbox:
    """Signed readings per device, oldest first, until acknowledged."""

    def __init__(self, path: Path | str, *, max_bytes: int | None = None) -> None:
        """Open (creating if needed) the outbox at `path`.

        `max_bytes` caps the database file, like a device's small flash: past it
        `append` raises OutboxFull exactly as a full disk would.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Autocommit mode: every transaction below is an explicit BEGIN ... COMMIT.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        if max_bytes is not None:
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)

    # ------------------------------------------------------------ plumbing

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; a full disk becomes OutboxFull."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _is_full(exc):
                    raise OutboxFull(f"outbox {self.path} is full: {exc}") from exc
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ operations

    def append(self, device: str, make: Callable[[int], Reading]) -> Reading:
        """Allocate the device's next seq, build the signed reading with it and store it, atomically.

        `make(seq)` signs the reading; it runs inside the transaction, so if it
        fails or the disk is full, the seq stays unallocated.
        """
        with self._transaction() as db:
            db.execute("INSERT INTO devices (device) VALUES (?) ON CONFLICT (device) DO NOTHING", (device,))
            (seq,) = db.execute(
                "SELECT max(last_seq, acked_seq) + 1 FROM devices WHERE device = ?", (device,)
            ).fetchone()
            reading = make(seq)
            if reading.device != device or reading.seq != seq:
                raise ValueError(f"made reading {reading.device}#{reading.seq}, expected {device}#{seq}")
            db.execute("INSERT INTO outbox (device, seq, payload) VALUES (?, ?, ?)", (device, seq, reading.payload()))
            db.execute(
                "UPDATE devices SET last_seq = ?, last_ts = ?, last_value = ? WHERE device = ?",
                (seq, reading.ts, reading.value, device),
            )
        return reading

    def pending(self, device: str, limit: int = 100, *, after: int = 0) -> list[Pending]:
        """Up to `limit` unacknowledged readings of `device` with seq > `after`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM outbox WHERE device = ? AND seq > ? ORDER BY seq LIMIT ?",
                (device, after, limit),
            ).fetchall()
        return [Pending(seq, bytes(payload)) for seq, payload in rows]

    def get(self, device: str, seq: int) -> bytes | None:
        """The stored payload of one reading, None once acknowledged (or never stored)."""
        with self._lock:
            row = self._db.execute("SELECT payload FROM outbox WHERE device = ? AND seq = ?", (device, seq)).fetchone()
        return None if row is None else bytes(row[0])

    def seqs(self, device: str, lo: int, hi: int) -> list[int]:
        """The seqs of `device` stored between lo and hi, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq FROM outbox WHERE device = ? AND seq BETWEEN ? AND ? ORDER BY seq", (device, lo, hi)
            ).fetchall()
        return [seq for (seq,) in rows]

    def acknowledge(self, device: str, seq: int) -> int:
        """The ledger holds every reading of `device` with seq <= `seq`: forget them. Returns how many went.

        The acknowledged seq only grows (an old, redelivered ack changes nothing),
        and is remembered so that seqs are never allocated below it.
        """
        if seq < 0:
            raise ValueError("an acknowledged seq is never negative")
        with self._transaction() as db:
            db.execute("INSERT INTO devices (device) VALUES (?) ON CONFLICT (device) DO NOTHING", (device,))
            db.execute("UPDATE devices SET acked_seq = max(acked_seq, ?) WHERE device = ?", (seq, device))
            removed = db.execute("DELETE FROM outbox WHERE device = ? AND seq <= ?", (device, seq)).rowcount
        return removed

    def count(self, device: str | None = None) -> int:
        """Readings awaiting acknowledgement, of one device or of all."""
        with self._lock:
            if device is None:
                (n,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
            else:
                (n,) = self._db.execute("SELECT count(*) FROM outbox WHERE device = ?", (device,)).fetchone()
        return int(n)

    def state(self, device: str) -> DeviceState:
        """The device's seq counters and last reading (all zero/None for a device never seen)."""
        with self._lock:
            row = self._db.execute(
                "SELECT last_seq, acked_seq, last_ts, last_value FROM devices WHERE device = ?", (device,)
            ).fetchone()
        if row is None:
            return DeviceState(device, 0, 0, None, None)
        return DeviceState(device, *row)

    def devices(self) -> list[str]:
        """Every device the outbox has seen, sorted."""
        with self._lock:
            return [d for (d,) in self._db.execute("SELECT device FROM devices ORDER BY device")]
