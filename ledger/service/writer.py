"""The single writer of the ledger: the chain head, the ledger key, the registry.

DuckDB admits one writing process per file, so exactly one LedgerWriter exists
at a time: inside the ingest service while it runs, else inside the CLI command
that needs to write. A lock orders commits from ingest and from API calls so
heights stay consecutive.

It writes no broker files: who may log in is published to `on_access`, to which
each writer subscribes the installed keeper of the broker's logins
(ledger/service/logins.py; Mosquitto's is broker/access.py). What operators do
besides (billing, parking, people, district chains) is in ledger/service/operations/,
sealed through `seal` and `commit` here; a home is made by ledger/service/homes.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nacl.signing import SigningKey
from typing_extensions import TypedDict

from ledger.chain import merkle
from ledger.chain.blocks import GENESIS_PREV, block_hash, make_header, sign_header
from ledger.chain.notes import Checkpoint, Note, signed_checkpoint
from ledger.chain.protocol import KINDS, RESERVED_DISTRICTS, SEQ_MAX, canonical_json, valid_device_id, valid_district
from ledger.chain.records import Batch, DeviceRecord, Readings, ServiceRecord
from ledger.chain.tlog import CompactRange
from ledger.clock import now_ms
from ledger.errors import Refused
from ledger.home import Home, write_private
from ledger.keys import check_device_key, load_signing_key, public_hex
from ledger.service.budget import BudgetPolicy
from ledger.service.checkpoints import DEFAULT_ALARM_AFTER_S, DEFAULT_INTERVAL_S, Checkpointer
from ledger.service.logins import Logins, installed_logins
from ledger.service.results.chain import (
    BudgetPolicySet,
    DeviceKeyRotated,
    DeviceLogin,
    Enrolled,
    Enrolments,
    LedgerKeyRotated,
    Reinstated,
    Revoked,
    ServiceLogin,
    WrittenOff,
)
from ledger.service.tiles import LogFiles, TileDirectory, TileWriterThread
from ledger.store import billing_queries
from ledger.store import districts as store_districts
from ledger.store.log_leaves import block_leaves
from ledger.store.store import Commit, Store, Suspension

SERVICES: tuple[tuple[str, str], ...] = (("ingest", "ingest"), ("ingest-acks", "acks"), ("dashboard", "observer"))
WORKER_PREFIX = "ingest-w"  # ingest workers log in as ingest-w1, ingest-w2, ... (role ingest)
DEFAULT_LOG_ORIGIN = "cityledger.local"  # a deployment names its own: `cityledger init --log-origin HOST/PATH`
WRITE_OFF_MAX = 100_000  # seqs one write-off may settle: years of readings of a meter; a slip of the pen is refused
log_ = logging.getLogger("cityledger.ledger")


def named(operator: str | None) -> dict[str, str]:
    """`{"operator": id}` for an entry an operator caused, `{}` for set-up the system did itself
    (`init`, `up`'s demo, a fleet enrolling its devices)."""
    return {} if operator is None else {"operator": checked_operator(operator)}


def checked_operator(operator: str) -> str:
    """The operator an action reaching the ledger is recorded under (issue 15: every one names one)."""
    if not isinstance(operator, str) or not valid_device_id(operator):
        raise Refused(f"an operator id is needed (letters, digits, . _ -), not {operator!r}")
    return operator


class _ByOperator(TypedDict, total=False):
    operator: str  # who ended a suspension early; absent when ingest ended one that ran out


class EnrolmentError(Refused):
    """A request the registry refuses; the message is safe to show to the operator."""


class AlreadyEnrolled(EnrolmentError):
    """The device id is taken (a device retrying after a crash may ask for a new login)."""


@dataclass(frozen=True, slots=True)
class Sealed:
    """A block just sealed: what ingest publishes (its header) and acknowledges (its readings)."""

    height: int
    hash: str
    header: dict[str, Any]
    sig: bytes
    readings: Readings = field(default_factory=Readings)
    entries: list[bytes] = field(default_factory=list)  # the entries' leaf data, before the readings'
    leaf_hashes: list[bytes] = field(default_factory=list)  # every leaf's, in log order
    checkpoint: Note | None = None  # the log at this block, signed by the ledger key (PROTOCOL.md section 7)

    def leaves(self) -> list[bytes]:
        """The block's leaf data in log order: what the log's entry bundles hold."""
        return self.entries + self.readings.leaf


class LedgerWriter:
    """Seals blocks and changes the registry; every change is also a ledger entry."""

    def __init__(self, home: Home, store: Store, key: SigningKey, logins: Logins | None = None) -> None:
        self.home = home
        self.logins = logins if logins is not None else installed_logins(home)
        self._root = store
        self._owner = threading.get_ident()
        self._cursors: dict[int, tuple[threading.Thread, Store]] = {}
        self._cursors_lock = threading.Lock()
        self.key = key
        self.lock = threading.RLock()
        head = store.head()
        self.height, self.head_hash = head if head else (-1, GENESIS_PREV)
        self.log_origin = log_origin(home, store)
        self.log = self._open_log()
        self.tile_writer: TileWriterThread | None = None  # `keep_log_files`
        self.checkpointer: Checkpointer | None = None
        self._registry: dict[str, DeviceRecord] = {d.device: d for d in store.devices()}
        self.registry_version = 0
        self.ledgers_readings = False  # set by a running ingest: it would take a new district's readings too
        self.on_sealed: list[Callable[[Sealed], None]] = []
        self.on_registry: list[Callable[[int, dict[str, DeviceRecord]], None]] = []
        self.on_policy: list[Callable[[BudgetPolicy], None]] = []  # ingest's budgets (ledger/service/budget.py)
        self.on_written_off: list[Callable[[str, int, int, Sealed], None]] = []  # ingest's acks
        # Who may log in to the broker changed: the broker's keeper of logins follows (issue 16).
        self.on_access: list[Callable[[Sequence[DeviceRecord], Sequence[ServiceRecord]], None]] = [
            self.logins.keep_in_step
        ]

    @property
    def store(self) -> Store:
        """This thread's own cursor on the ledger (the opening thread's is the connection itself).

        DuckDB 2 refuses a second call on a connection that is busy, and a transaction
        belongs to the connection: a shared one lets an API thread's query fail while
        ingest seals, or land inside ingest's transaction. Each thread gets its own
        cursor; writes are still ordered by `self.lock`. Cursors of threads that have
        ended are closed when the next thread asks, so the set stays as small as the
        API's worker pool.
        """
        ident = threading.get_ident()
        if ident == self._owner:
            return self._root
        mine = self._cursors.get(ident)
        if mine is not None and mine[0] is threading.current_thread():
            return mine[1]
        with self._cursors_lock:
            for other, (thread, store) in list(self._cursors.items()):
                if not thread.is_alive() or other == ident:
                    store.close()
                    del self._cursors[other]
            store = self._root.cursor()
            self._cursors[ident] = (threading.current_thread(), store)
        return store

    @property
    def registry(self) -> dict[str, DeviceRecord]:
        """Every device's record; replaced whole on each change, never edited in place."""
        return self._registry

    @registry.setter
    def registry(self, new: dict[str, DeviceRecord]) -> None:
        self._registry = new
        self.registry_version += 1
        for callback in self.on_registry:  # ingest workers screen with a copy of it
            callback(self.registry_version, new)

    @classmethod
    def open(cls, home: Home, log_files: bool = True) -> LedgerWriter:
        """The home's writer. `log_files` False: no tiles, bundles or checkpoints written (the log's edge
        is still kept): for a benchmark's fabricated ledger, whose files would be tens of gigabytes."""
        if not home.ledger_key.exists():
            raise FileNotFoundError(f"no ledger in {home.root}: run `cityledger init` first")
        store = Store.open(home.database)
        recover_key_rotation(home, store)
        writer = cls(home, store, load_signing_key(home.ledger_key))
        if log_files:
            writer.keep_log_files()
        return writer

    def keep_log_files(self) -> None:
        """Keep the log's public files in home/tlog from now on: its tiles and entry bundles as
        blocks seal (ledger/service/tiles.py) and its checkpoint, cosigned as the witness policy
        asks (ledger/service/checkpoints.py). Both run beside the sealer, in threads of their own."""
        self.home.tlog.mkdir(exist_ok=True)
        self.checkpointer = Checkpointer(
            self.home.tlog,
            self.home.witness_policy,
            TileDirectory(self.home.tlog),
            interval_s=float(os.environ.get("CITYLEDGER_CHECKPOINT_INTERVAL", DEFAULT_INTERVAL_S)),
            alarm_after_s=float(os.environ.get("CITYLEDGER_WITNESS_ALARM_AFTER", DEFAULT_ALARM_AFTER_S)),
        )
        self.checkpointer.start()
        self.tile_writer = TileWriterThread(LogFiles(self.home.tlog), self._catch_up_tiles, self.checkpointer.offer)

    def _catch_up_tiles(self, files: LogFiles) -> None:
        """In the tile writer's thread: bring the files up to the chain's head from the stored blocks."""
        store = self.store  # this thread's own cursor
        files.resume(self.height, lambda height: _log_named(store.block(height)))
        head = self.height
        if files.height >= head:
            return
        first = files.height + 1
        log_.info("writing the transparency log's tiles from block %d to %d", first, head)
        for height, leaves in block_leaves(store, first, head):
            files.append(height, merkle.leaf_hashes(leaves), leaves)
            if (height - first + 1) % 10_000 == 0:
                files.publish()  # a long catch-up keeps what it has done
                files.settle_now()
                log_.info("transparency log tiles: block %d of %d, %d leaves", height, head, files.size)
        files.publish()
        files.settle_now()
        assert self.checkpointer is not None
        checkpoint = Checkpoint(self.log_origin, files.size, files.tiles.root())
        self.checkpointer.offer(signed_checkpoint(checkpoint, [self.key]))

    def close(self) -> None:
        if self.tile_writer is not None:
            self.tile_writer.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self._cursors_lock:
            for _, store in self._cursors.values():
                store.close()
            self._cursors.clear()
        self._root.close()

    # ------------------------------------------------------------ sealing

    def _open_log(self) -> CompactRange:
        """The log through the head (PROTOCOL.md section 7), kept as its right edge in `meta`.

        A ledger made before the log, or one whose stored edge lags its head, replays the
        leaves it lacks from the blocks: the migration by which an existing ledger gains the log.
        """
        stored = self.store.get_meta(LOG_META)
        height, log = (-1, CompactRange()) if stored is None else _parse_log_meta(stored)
        if height > self.height:
            raise RuntimeError(f"the log's edge is at height {height}, past the chain's head {self.height}")
        if height < self.height:
            log_.info("building the transparency log from height %d to %d", height + 1, self.height)
            for done, (_, leaves) in enumerate(block_leaves(self.store, height + 1, self.height), 1):
                log.append(merkle.leaf_hashes(leaves))
                if done % 10_000 == 0:
                    log_.info("transparency log: %d of %d blocks replayed", done, self.height - height)
            with self.store.transaction():
                self.store.set_meta(LOG_META, _log_meta(self.height, log))
        return log

    def commit(
        self,
        batch: Batch,
        entries: Sequence[dict[str, Any]] = (),
        also: Callable[[Store], None] | None = None,
        header_extra: dict[str, Any] | None = None,
        next_key: SigningKey | None = None,
    ) -> Sealed | None:
        """Write one transaction; seal a block when it holds at least one leaf.

        Entries come first in the block, then readings in arrival order.
        `also` runs inside the same transaction (registry changes). The block's header
        names the log after it (`log_size`, `log_root`), whose right edge is stored in the
        same transaction; `next_key` (a ledger key rotation) also signs its checkpoint.
        """
        with self.lock:
            bodies = [canonical_json(e) for e in entries]
            leaves = bodies + batch.readings.leaf
            commit = Commit(
                readings=batch.readings,
                entries=[{"type": e["entry"], "body": b.decode()} for e, b in zip(entries, bodies)],
                quarantine=batch.quarantine,
                duplicates=batch.duplicates,
                statuses=batch.statuses,
                witness_reports=batch.witness_reports,
                rejects=batch.rejects,
                duplicate_counts=batch.duplicate_counts,
            )
            sealed, log = None, self.log
            tile_roots: list[bytes] = []  # the level-0 tiles' roots the log hashes as it grows (tiles.py)
            if leaves:
                height = self.height + 1
                hashes = merkle.leaf_hashes(leaves)
                log = log.copy()
                log.append(hashes, tile_roots)
                log_root = log.root()
                header = make_header(
                    height=height,
                    prev=self.head_hash,
                    leaf_hashes=hashes,
                    sealed_at=now_ms(),
                    v=2,
                    log_size=log.size,
                    log_root=log_root.hex(),
                    **self._chain,
                    **(header_extra or {}),
                )
                sig = sign_header(self.key, header)
                keys = [self.key] if next_key is None else [self.key, next_key]
                checkpoint = signed_checkpoint(Checkpoint(self.log_origin, log.size, log_root), keys)
                sealed = Sealed(height, block_hash(header), header, sig, batch.readings, bodies, hashes, checkpoint)
                commit.meta[LOG_META] = _log_meta(height, log)
                commit.block = {
                    "height": height,
                    "hash": sealed.hash,
                    "prev": self.head_hash,
                    "header": canonical_json(header).decode(),
                    "sig": sig,
                    "size": header["size"],
                    "sealed_at": header["sealed_at"],
                }
            self.store.commit(commit, also)
            if sealed:
                self.height, self.head_hash, self.log = sealed.height, sealed.hash, log
                if self.tile_writer is not None:
                    assert sealed.checkpoint is not None
                    self.tile_writer.put(sealed, tile_roots)
                # Still under the lock: headers must reach the broker in height order,
                # or a witness sees a gap or a rollback that never happened.
                for callback in self.on_sealed:
                    callback(sealed)
        return sealed

    @property
    def _chain(self) -> dict[str, str]:
        """A district's headers name their chain, so that no header can pass for another chain's."""
        return {"chain": self.home.district} if self.home.district else {}

    def seal(self, entry: dict[str, Any], also: Callable[[Store], None] | None = None) -> Sealed:
        """Seal one entry (stamped `at` now unless it says when), with the table rows `also` writes
        in the same transaction: the row and the entry standing for it exist together or not at all."""
        with self.lock:
            sealed = self.commit(Batch(), [{**entry, "at": entry.get("at", now_ms())}], also=also)
        assert sealed is not None
        return sealed

    # ------------------------------------------------------------ registry

    def enroll_device(
        self,
        device: str,
        kind: str,
        district: str,
        public_key: str,
        account: str | None = None,
        operator: str | None = None,
    ) -> Enrolled:
        """Register a device whose key was made on the device; returns its broker login once."""
        out = self.enroll_devices(
            [{"device": device, "kind": kind, "district": district, "public_key": public_key, "account": account}],
            operator,
        )
        return {**out["devices"][0], "block": out["block"]}

    def enroll_devices(self, rows: Sequence[dict[str, Any]], operator: str | None = None) -> Enrolments:
        """Enrol many devices at once: one block of enrolment entries and one broker reload.

        Enrolling a city one device at a time seals a block and reloads the broker
        per device. Each row is checked as `enroll_device` checks one (keys device,
        kind, district, public_key and optionally account); any refusal refuses the
        whole batch before anything is written. Returns each broker login once.
        """
        by = named(operator)
        checked = [self._checked_enrolment(row) for row in rows]
        if not checked:
            raise EnrolmentError("no devices to enrol")
        self._refuse_other_districts({c[2] for c in checked})
        self._refuse_repeats([c[0] for c in checked], "device id {} appears twice in the batch")
        self._refuse_repeats([c[3] for c in checked], "public key {} appears twice in the batch")
        with self.lock:
            ids, keys = [c[0] for c in checked], [c[3] for c in checked]
            taken = self.store.first_enrolled(ids)
            if taken is not None:
                raise AlreadyEnrolled(f"device {taken} is already enrolled")
            elsewhere = self.logins.logins_elsewhere().intersection(ids)
            if elsewhere:
                raise AlreadyEnrolled(f"device {min(elsewhere)} is already a broker login of another district")
            for account in {c[4] for c in checked}:
                self.require_account(account)
            owner = self.store.first_key_owner(keys)
            if owner is not None:
                raise EnrolmentError(f"that public key is already enrolled for {owner}")
            at, height = now_ms(), self.height + 1
            logins = [self.logins.new_login() for _ in checked]
            passwords = [pw for pw, _ in logins]
            records = [
                DeviceRecord(device, kind, district, account, key, "active", hashed, at)
                for (device, kind, district, key, account), (_, hashed) in zip(checked, logins)
            ]
            entries = [
                {
                    "entry": "device_enrolled",
                    "device": r.device,
                    "kind": r.kind,
                    "district": r.district,
                    "account": r.account,
                    "public_key": r.public_key,
                    **by,
                    "at": at,
                }
                for r in records
            ]

            def register(s: Store) -> None:
                for rec in records:
                    s.insert_device(rec)
                    s.add_device_key(rec.device, rec.public_key, height, at)

            sealed = self.commit(Batch(), entries, also=register)
            self.registry = {**self.registry, **{r.device: r for r in records}}
            self.publish_access()
        assert sealed is not None
        shown: list[DeviceLogin] = [
            {"device": r.device, "mqtt_username": r.device, "mqtt_password": pw} for r, pw in zip(records, passwords)
        ]
        return {"block": sealed.hash, "devices": shown}

    @staticmethod
    def _checked_enrolment(row: dict[str, Any]) -> tuple[str, str, str, str, str | None]:
        """(device, kind, district, normalised public key, account) of one row, or EnrolmentError."""
        device, kind, district = row.get("device"), row.get("kind"), row.get("district")
        if not isinstance(device, str) or not valid_device_id(device):
            raise EnrolmentError(f"invalid device id {device!r}")
        if kind not in KINDS:
            raise EnrolmentError(f"kind must be one of {', '.join(KINDS)}")
        if not isinstance(district, str) or not valid_district(district) or district in RESERVED_DISTRICTS:
            raise EnrolmentError(f"invalid district {district!r}")
        try:
            public_key = check_device_key(str(row.get("public_key", "")))
        except ValueError as exc:
            raise EnrolmentError(f"{device}: {exc}") from exc
        return device, str(kind), district, public_key, row.get("account")

    def _refuse_other_districts(self, districts: set[str]) -> None:
        """A district's ledger keeps its own devices only; a city of district chains keeps none."""
        own = self.home.district
        if own is not None and districts != {own}:
            raise EnrolmentError(
                f"this ledger keeps district {own}'s devices only, not {', '.join(sorted(districts - {own}))}'s"
            )
        if own is None and self.districts():
            raise EnrolmentError(
                "this city keeps its readings in district chains: enrol each device in its "
                "district's home (--home HOME/districts/DISTRICT, made by `cityledger districts add`)"
            )

    def districts(self) -> dict[str, str]:
        """The city's district chains and the first key of each."""
        with self.lock:
            return store_districts.districts(self.store)

    @staticmethod
    def _refuse_repeats(values: list[str], message: str) -> None:
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise EnrolmentError(message.format(value))
            seen.add(value)

    def rotate_device_key(self, device: str, public_key: str, from_seq: int, operator: str) -> DeviceKeyRotated:
        """Give a device a new key that signs its readings from `from_seq` on.

        The device names `from_seq` (its next seq when it rotated): what it signed
        before and still holds unsent verifies under its earlier key, so a rotation
        loses no reading (ledger/chain/keyspans.py). `from_seq` must lie past every reading
        of the device already ledgered, and past where its current key starts.
        """
        try:
            public_key = check_device_key(public_key)
        except ValueError as exc:
            raise EnrolmentError(str(exc)) from exc
        operator = checked_operator(operator)
        if type(from_seq) is not int or not 1 <= from_seq <= SEQ_MAX:
            raise EnrolmentError(f"from-seq must be a seq, 1 to {SEQ_MAX}")
        with self.lock:
            rec = self.store.device(device)
            if rec is None or rec.status != "active":
                raise EnrolmentError(f"no active device {device}")
            owner = self.store.public_key_owner(public_key)
            if owner is not None:
                raise EnrolmentError(f"that public key is already enrolled for {owner}")
            ledgered = self.store.highest_seq(device)
            if from_seq <= max(ledgered, rec.key_from_seq):
                raise EnrolmentError(
                    f"from-seq must be above {max(ledgered, rec.key_from_seq)}: seqs up to "
                    f"{ledgered} of {device} are ledgered under its current key"
                )
            at, height = now_ms(), self.height + 1
            entry = {
                "entry": "device_key_rotated",
                "device": device,
                "public_key": public_key,
                "previous_key": rec.public_key,
                "from_seq": from_seq,
                "operator": operator,
                "at": at,
            }

            def rotate(s: Store) -> None:
                s.set_public_key(device, public_key)
                s.add_device_key(device, public_key, height, at, from_seq)

            sealed = self.commit(Batch(), [entry], also=rotate)
            new = self.store.device(device)
            assert new is not None
            self.registry = {**self.registry, device: new}
        assert sealed is not None
        return {
            "device": device,
            "public_key": public_key,
            "previous_key": rec.public_key,
            "from_seq": from_seq,
            "operator": operator,
            "block": sealed.hash,
        }

    def rotate_ledger_key(self, operator: str | None = None) -> LedgerKeyRotated:
        """Hand signing over to a new ledger key, announced by the old one.

        The rotating block is signed by the old key and names the new one in its
        header (`next_key`); later blocks are signed by the new key, so anyone who
        trusts the first key can follow every rotation. The new key is on disk
        (keys/ledger.next) before the block commits; `recover_key_rotation` finishes
        or abandons a rotation that a crash interrupted.
        """
        by = named(operator)
        with self.lock:
            new_key = SigningKey.generate()
            write_private(self.home.ledger_next_key, new_key.encode().hex() + "\n")
            old_pub, new_pub = public_hex(self.key), public_hex(new_key)
            entry = {"entry": "ledger_key_rotated", "old_key": old_pub, "new_key": new_pub, **by, "at": now_ms()}
            sealed = self.commit(
                Batch(),
                [entry],
                also=lambda s: s.set_meta("ledger_key", new_pub),
                header_extra={"next_key": new_pub},
                next_key=new_key,
            )
            assert sealed is not None
            self.home.ledger_next_key.replace(self.home.ledger_key)
            self.key = new_key
        return {"old_key": old_pub, "new_key": new_pub, "height": sealed.height, "block": sealed.hash}

    def revoke_device(self, device: str, operator: str) -> Revoked:
        """Retire a device: its broker login goes at once, its later readings are quarantined."""
        operator = checked_operator(operator)
        with self.lock:
            rec = self.store.device(device)
            if rec is None:
                raise EnrolmentError(f"unknown device {device}")
            if rec.status == "revoked":
                raise EnrolmentError(f"device {device} is already revoked")
            at = now_ms()
            entry = {
                "entry": "device_revoked",
                "device": device,
                "public_key": rec.public_key,
                "operator": operator,
                "at": at,
            }
            sealed = self.commit(Batch(), [entry], also=lambda s: s.mark_revoked(device, at))
            self.registry = {**self.registry, device: replace(rec, status="revoked", revoked_at=at)}
            self.publish_access()
        assert sealed is not None
        return {"device": device, "revoked_at": at, "operator": operator, "block": sealed.hash}

    # ------------------------------------------------------------ budgets and suspensions (ledger/service/budget.py)

    def budget_policy(self) -> BudgetPolicy:
        """The per-device budget in force: the latest `budget_policy` entry, else the defaults."""
        with self.lock:
            latest = self.store.latest_entry("budget_policy")
        return BudgetPolicy() if latest is None else BudgetPolicy.from_entry(latest[1], latest[0])

    def set_budget_policy(
        self,
        rate: float | None = None,
        burst: float | None = None,
        suspend_after_min: float | None = None,
        suspend_for_min: float | None = None,
        *,
        operator: str,
    ) -> BudgetPolicySet:
        """Seal a new budget rule (values not given stay as they are); ingest applies it at once."""
        operator = checked_operator(operator)
        with self.lock:
            old = self.budget_policy()
            try:
                new = BudgetPolicy(
                    old.rate if rate is None else rate,
                    old.burst if burst is None else burst,
                    old.suspend_after_min if suspend_after_min is None else suspend_after_min,
                    old.suspend_for_min if suspend_for_min is None else suspend_for_min,
                )
            except ValueError as exc:
                raise EnrolmentError(str(exc)) from exc
            sealed = self.commit(Batch(), [{**new.entry(now_ms()), "operator": operator}])
            assert sealed is not None
            policy = BudgetPolicy(new.rate, new.burst, new.suspend_after_min, new.suspend_for_min, sealed.height)
            for callback in self.on_policy:
                callback(policy)
        return {**policy.rule(), "block": sealed.hash}

    def suspend_device(self, device: str, policy: BudgetPolicy, since: int, over_budget: int) -> dict[str, Any] | None:
        """Suspend a device over budget: the entry naming the rule and the registry change in one
        transaction, then its broker login goes (a connected client is dropped on the reload).
        None when the device is not active (revoked or already suspended meanwhile)."""
        with self.lock:
            rec = self.store.device(device)
            if rec is None or rec.status != "active":
                return None
            at = now_ms()
            until = at + policy.suspend_for_ms
            entry = {
                "entry": "device_suspended",
                "device": device,
                "rule": policy.rule(),
                "over_budget_since": since,
                "over_budget": over_budget,
                "until": until,
                "at": at,
            }
            sealed = self.commit(Batch(), [entry], also=lambda s: s.set_status(device, "suspended"))
            self.registry = {**self.registry, device: replace(rec, status="suspended")}
            self.publish_access()
        assert sealed is not None
        return {"device": device, "until": until, "at": at, "rule": entry["rule"], "block": sealed.hash}

    def reinstate_device(self, device: str, operator: str | None = None) -> Reinstated | None:
        """End a device's suspension: an entry naming the rule it was suspended under, and its
        broker login back (the same password). None when the device is not suspended.

        `operator` is who ended it early; None when ingest ends a suspension that ran out.
        """
        by: _ByOperator = {"operator": checked_operator(operator)} if operator is not None else {}
        with self.lock:
            rec = self.store.device(device)
            if rec is None or rec.status != "suspended":
                return None
            suspension = self.suspensions().get(device)
            at = now_ms()
            entry = {
                "entry": "device_reinstated",
                "device": device,
                "rule": suspension["rule"] if suspension else None,
                "suspended_at": suspension["at"] if suspension else None,
                **by,
                "at": at,
            }
            sealed = self.commit(Batch(), [entry], also=lambda s: s.set_status(device, "active"))
            self.registry = {**self.registry, device: replace(rec, status="active")}
            self.publish_access()
        assert sealed is not None
        return {"device": device, "at": at, **by, "block": sealed.hash}

    def suspensions(self) -> dict[str, Suspension]:
        """Devices suspended now, each with its latest `device_suspended` entry (until, rule, at)."""
        with self.lock:
            return {d: s for d, s in self.store.suspensions().items() if s["status"] == "suspended"}

    def reset_password(self, device: str, public_key: str | None = None) -> DeviceLogin:
        """Issue a new broker password for an active device, shown once; the old one stops working.

        With `public_key`, only if it is the device's enrolled key: how a device that
        crashed before saving its login proves it is the same device.
        """
        with self.lock:
            rec = self.store.device(device)
            if rec is None or rec.status != "active":
                raise EnrolmentError(f"no active device {device}")
            if public_key is not None and public_key.lower() != rec.public_key:
                raise EnrolmentError(f"that key is not the enrolled key of {device}")
            password, hashed = self.logins.new_login()
            new = replace(rec, mqtt_hash=hashed)
            self.store.set_mqtt_hash(device, new.mqtt_hash)
            self.registry = {**self.registry, device: new}
            self.publish_access()
        return {"device": device, "mqtt_username": device, "mqtt_password": password}

    def add_service(self, username: str, role: str) -> ServiceLogin:
        """A broker login for a service (a witness, say); its password is shown once."""
        if (
            not valid_device_id(username)
            or username in {name for name, _ in SERVICES}
            or username.startswith(WORKER_PREFIX)
        ):
            raise EnrolmentError(f"invalid or reserved login name {username!r}")
        with self.lock:
            if (
                username in self.registry
                or username in {s.username for s in self.store.services()}
                or username in self.logins.logins_elsewhere()
            ):
                raise AlreadyEnrolled(f"login {username} exists")
            password, hashed = self.logins.new_login()
            self.store.upsert_service(ServiceRecord(username, role, hashed))
            self.publish_access()
        return {"username": username, "role": role, "mqtt_password": password}

    def ensure_ingest_logins(self, workers: int) -> list[int]:
        """The service logins (a home made by an older version may lack one) and `ingest-w1..workers`
        for ingest workers, created once and kept 0600 in the home's secrets; returns the indices
        of every worker login there is, used or not."""
        with self.lock:
            created = [ensure_service_login(self.home, self.store, self.logins, name, role) for name, role in SERVICES]
            created += [
                ensure_service_login(self.home, self.store, self.logins, f"{WORKER_PREFIX}{i}", "ingest")
                for i in range(1, workers + 1)
            ]
            if any(created):
                self.publish_access()
            prefix = self.home.login(WORKER_PREFIX)
            return sorted(
                int(s.username[len(prefix) :])
                for s in self.store.services()
                if s.username.startswith(prefix) and s.username[len(prefix) :].isdigit()
            )

    def require_account(self, account: str | None) -> None:
        """A device (or a parking lease) may name only an account that exists."""
        if account is not None and billing_queries.account(self.store, account) is None:
            raise EnrolmentError(f"no account {account}: add it first with `cityledger accounts add`")

    # ------------------------------------------------------------ gaps settled for good

    def write_off(self, device: str, from_seq: int, to_seq: int, reason: str, operator: str) -> WrittenOff:
        """Settle seqs of a device that will never be ledgered (a reading lost to corrupt flash, say).

        The entry names the device, the seqs, the reason and the operator. The device's ack
        then passes them, and its agent drops them from its outbox: one reading the ledger can
        never take no longer holds the device back for good. Only seqs not ledgered can be
        written off; a reading of a written-off seq that arrives after all is still ledgered.
        """
        operator = checked_operator(operator)
        reason = reason.strip() if isinstance(reason, str) else ""
        if not reason:
            raise EnrolmentError("a write-off needs a reason")
        if not (type(from_seq) is int and type(to_seq) is int and 1 <= from_seq <= to_seq <= SEQ_MAX):
            raise EnrolmentError(f"seqs must run from a first to a last seq, 1 to {SEQ_MAX}")
        if to_seq - from_seq >= WRITE_OFF_MAX:
            raise EnrolmentError(f"one write-off settles at most {WRITE_OFF_MAX} seqs")
        with self.lock:
            if self.store.device(device) is None:
                raise EnrolmentError(f"unknown device {device}")
            ledgered = self.store.ledgered_seqs(device, from_seq, to_seq)
            if ledgered:
                raise EnrolmentError(
                    f"{device} has seqs {', '.join(map(str, ledgered[:5]))}"
                    f"{' …' if len(ledgered) > 5 else ''} ledgered in {from_seq}-{to_seq}: "
                    "write off only seqs that are missing"
                )
            overlap = self.store.write_off_overlapping(device, from_seq, to_seq)
            if overlap is not None:
                raise EnrolmentError(f"seqs {overlap[0]}-{overlap[1]} of {device} are already written off")
            at, height = now_ms(), self.height + 1
            sealed = self.seal(
                {
                    "entry": "seqs_written_off",
                    "device": device,
                    "from_seq": from_seq,
                    "to_seq": to_seq,
                    "reason": reason,
                    "operator": operator,
                    "at": at,
                },
                lambda s: s.add_write_off(device, from_seq, to_seq, reason, operator, at, height),
            )
            for callback in self.on_written_off:  # ingest moves the device's ack past them, under the lock
                callback(device, from_seq, to_seq, sealed)
        return {
            "device": device,
            "from_seq": from_seq,
            "to_seq": to_seq,
            "reason": reason,
            "operator": operator,
            "block": sealed.hash,
        }

    def publish_access(self) -> None:
        """Tell the subscribers who may log in now: the active devices and every service."""
        devices = [d for d in self.registry.values() if d.status == "active"]
        services = self.store.services()
        for callback in self.on_access:
            callback(devices, services)


ORIGIN_META = "tlog_origin"
LOG_META = "tlog_edge"  # {"height": H, "range": the log's right edge after block H} (ledger/chain/tlog.py)


def _log_named(block: dict[str, Any] | None) -> tuple[int, bytes] | None:
    """(log_size, log_root) as a block's header names them; None for a header sealed before the log."""
    header = (block or {}).get("header") or {}
    size, root = header.get("log_size"), header.get("log_root")
    if not isinstance(size, int) or not isinstance(root, str):
        return None
    try:
        return size, bytes.fromhex(root)
    except ValueError:
        return None


def _log_meta(height: int, log: CompactRange) -> str:
    return json.dumps({"height": height, "range": log.to_json()}, separators=(",", ":"))


def log_edge_size(text: str | None) -> int:
    """The log's size as its stored right edge says (0 before the first block)."""
    return 0 if text is None else _parse_log_meta(text)[1].size


def _parse_log_meta(text: str) -> tuple[int, CompactRange]:
    stored = json.loads(text)
    return int(stored["height"]), CompactRange.from_json(stored["range"])


def check_origin_base(base: str) -> str:
    """A deployment's name for its logs: a host and path, as in `cityledger.example` or `example.org/ledgers`
    (C2SP signed-note key names: printable, no spaces or plus signs)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]*(/[A-Za-z0-9._\-]+)*", base) or len(base) > 200:
        raise Refused(f"the log origin must be a host name and optional path, like cityledger.example, not {base!r}")
    return base


def log_origin(home: Home, store: Store) -> str:
    """The log's origin line (PROTOCOL.md section 7): the deployment's name for it, ending in
    the chain's own (`city`, or the district's). Kept in `meta` from the first time it is asked."""
    origin = store.get_meta(ORIGIN_META)
    if origin is None:
        origin = f"{DEFAULT_LOG_ORIGIN}/{home.district or 'city'}"
        with store.transaction():
            store.set_meta(ORIGIN_META, origin)
    return origin


def recover_key_rotation(home: Home, store: Store) -> None:
    """Finish a ledger key rotation the chain recorded, or drop one it never recorded."""
    pending = home.ledger_next_key
    if not pending.exists():
        return
    if store.get_meta("ledger_key") == public_hex(load_signing_key(pending)):
        pending.replace(home.ledger_key)
    else:
        pending.unlink()


def ensure_service_login(home: Home, store: Store, logins: Logins, name: str, role: str) -> bool:
    """A service's broker login, its password kept only in the home's secrets (0600); True if made now.

    The secret file is named after the service (`ingest`); the login in it is the
    home's (`d01.ingest` in district d01's home).
    """
    username = home.login(name)
    if username in {s.username for s in store.services()} and home.service_secret(name).exists():
        return False
    password, hashed = logins.new_login()
    write_private(home.service_secret(name), canonical_json({"username": username, "password": password}))
    store.upsert_service(ServiceRecord(username, role, hashed))
    return True
