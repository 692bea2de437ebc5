"""The single writer of the ledger: the chain head, the ledger key, the registry.

DuckDB admits one writing process per file, so exactly one LedgerWriter exists
at a time: inside the ingest service while it runs, else inside the CLI command
that needs to write. A lock orders commits from ingest and from API calls so
heights stay consecutive.

It writes no broker files: who may log in is published to `on_access`, to which
each writer subscribes the installed keeper of the broker's logins
(ledger/service/logins.py; Mosquitto's is broker/access.py).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from nacl.signing import SigningKey

from ledger.service.budget import BudgetPolicy
from ledger.chain import anchors
from ledger.people import auth
from ledger.billing import rules as billing
from ledger.billing import device_days
from ledger.chain import merkle
from ledger.people import signin
from ledger.chain.blocks import GENESIS_PREV, block_hash, make_header, sign_header
from ledger.home import DISTRICT_FILE, Home, write_private
from ledger.service.logins import Logins, installed_logins
from ledger.keys import check_device_key, create_key_file, load_signing_key, public_hex
from ledger.chain.protocol import (
    KINDS,
    RESERVED_DISTRICTS,
    SEQ_MAX,
    canonical_json,
    strict_json,
    valid_device_id,
    valid_district,
)
from ledger.store.store import Commit, Store
from ledger.chain.records import Batch, DeviceRecord, LedgeredReading, ServiceRecord
from ledger.billing.tariffs import DEFAULT_FILE, parse_tariffs
from ledger.chain.witness import SignedHeader
from ledger.clock import now_ms
from ledger.errors import Refused

SERVICES: tuple[tuple[str, str], ...] = (("ingest", "ingest"), ("ingest-acks", "acks"), ("dashboard", "observer"))
WORKER_PREFIX = "ingest-w"  # ingest workers log in as ingest-w1, ingest-w2, ... (role ingest)
# Checked against when a login does not exist, so that both cases take the same time.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=2,p=1$iQjDQJYZfilM++iOX1AKyg$qH/s+n9YDd0wM4QqedfpZg+gF6BCQI4LJwndHoqPTrM"


# Argon2id takes 64 MiB and a core's worth of time per check, inside the process that seals.
# Two at a time bound both, whatever the number of callers; the rest wait their turn.
PASSWORD_CHECKS = threading.BoundedSemaphore(2)


DEFAULT_ADJUSTMENT_LIMIT = Decimal("1000.00")  # yuan; above it a correction needs a second operator
WRITE_OFF_MAX = 100_000  # seqs one write-off may settle: years of readings of a meter; a slip of the pen is refused


def named(operator: str | None) -> dict[str, str]:
    """`{"operator": id}` for an entry an operator caused, `{}` for set-up the system did itself
    (`init`, `up`'s demo, a fleet enrolling its devices)."""
    return {} if operator is None else {"operator": checked_operator(operator)}


def checked_operator(operator: str) -> str:
    """The operator an action reaching the ledger is recorded under (issue 15: every one names one)."""
    if not isinstance(operator, str) or not valid_device_id(operator):
        raise EnrolmentError(f"an operator id is needed (letters, digits, . _ -), not {operator!r}")
    return operator


class EnrolmentError(Refused):
    """A request the registry refuses; the message is safe to show to the operator."""


class AlreadyEnrolled(EnrolmentError):
    """The device id is taken (a device retrying after a crash may ask for a new login)."""


@dataclass(frozen=True, slots=True)
class Sealed:
    height: int
    hash: str
    header: dict[str, Any]
    sig: bytes
    readings: tuple[LedgeredReading, ...] = ()


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
        self._registry: dict[str, DeviceRecord] = {d.device: d for d in store.devices()}
        self.registry_version = 0
        self.ledgers_readings = False  # set by a running ingest: it would take a new district's readings too
        self.on_sealed: list[Callable[[Sealed], None]] = []
        self.on_registry: list[Callable[[int, dict[str, DeviceRecord]], None]] = []
        self.on_policy: list[Callable[[BudgetPolicy], None]] = []  # ingest's budgets (ledger/service/budget.py)
        self.on_written_off: list[Callable[[str, int, int, Sealed], None]] = []  # ingest's acks
        # Who may log in to the broker changed: the broker's keeper of logins follows (issue 16).
        self.on_access: list[Callable[[Sequence[DeviceRecord], Sequence[ServiceRecord]], None]] = [
            self.logins.keep_in_step]

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
    def open(cls, home: Home) -> LedgerWriter:
        if not home.ledger_key.exists():
            raise FileNotFoundError(f"no ledger in {home.root}: run `cityledger init` first")
        store = Store.open(home.database)
        recover_key_rotation(home, store)
        return cls(home, store, load_signing_key(home.ledger_key))

    def close(self) -> None:
        with self._cursors_lock:
            for _, store in self._cursors.values():
                store.close()
            self._cursors.clear()
        self._root.close()

    # ------------------------------------------------------------ sealing

    def commit(self, batch: Batch, entries: Sequence[dict[str, Any]] = (),
               also: Callable[[Store], None] | None = None, header_extra: dict[str, Any] | None = None) -> Sealed | None:
        """Write one transaction; seal a block when it holds at least one leaf.

        Entries come first in the block, then readings in arrival order.
        `also` runs inside the same transaction (registry changes).
        """
        with self.lock:
            bodies = [canonical_json(e) for e in entries]
            leaves = bodies + [r.reading.leaf_data() for r in batch.readings]
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
            sealed = None
            if leaves:
                height = self.height + 1
                header = make_header(
                    height=height, prev=self.head_hash, leaf_hashes=[merkle.leaf_hash(x) for x in leaves],
                    sealed_at=now_ms(), v=1, **self._chain, **(header_extra or {}),
                )
                sig = sign_header(self.key, header)
                sealed = Sealed(height, block_hash(header), header, sig, tuple(batch.readings))
                commit.block = {
                    "height": height, "hash": sealed.hash, "prev": self.head_hash,
                    "header": canonical_json(header).decode(), "sig": sig,
                    "size": header["size"], "sealed_at": header["sealed_at"],
                }
            if also is None:
                self.store.commit(commit)
            else:
                self._commit_with(commit, also)
            if sealed:
                self.height, self.head_hash = sealed.height, sealed.hash
                # Still under the lock: headers must reach the broker in height order,
                # or a witness sees a gap or a rollback that never happened.
                for callback in self.on_sealed:
                    callback(sealed)
        return sealed

    @property
    def _chain(self) -> dict[str, str]:
        """A district's headers name their chain, so that no header can pass for another chain's."""
        return {"chain": self.home.district} if self.home.district else {}

    def _commit_with(self, commit: Commit, also: Callable[[Store], None]) -> None:
        with self.store.transaction():
            also(self.store)
            self.store._write(commit)

    # ------------------------------------------------------------ registry

    def enroll_device(self, device: str, kind: str, district: str, public_key: str,
                      account: str | None = None, operator: str | None = None) -> dict[str, Any]:
        """Register a device whose key was made on the device; returns its broker login once."""
        out = self.enroll_devices([{"device": device, "kind": kind, "district": district,
                                    "public_key": public_key, "account": account}], operator)
        return {**out["devices"][0], "block": out["block"]}

    def enroll_devices(self, rows: Sequence[dict[str, Any]], operator: str | None = None) -> dict[str, Any]:
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
            taken = self.store.con.execute("SELECT device FROM devices WHERE list_contains(?, device) LIMIT 1",
                                           [ids]).fetchone()
            if taken is not None:
                raise AlreadyEnrolled(f"device {taken[0]} is already enrolled")
            elsewhere = self.logins.logins_elsewhere().intersection(ids)
            if elsewhere:
                raise AlreadyEnrolled(f"device {min(elsewhere)} is already a broker login of another district")
            for account in {c[4] for c in checked}:
                self.require_account(account)
            owner = self.store.con.execute(
                "SELECT device FROM device_keys WHERE list_contains(?, public_key) LIMIT 1", [keys]).fetchone()
            if owner is not None:
                raise EnrolmentError(f"that public key is already enrolled for {owner[0]}")
            at, height = now_ms(), self.height + 1
            logins = [self.logins.new_login() for _ in checked]
            passwords = [pw for pw, _ in logins]
            records = [DeviceRecord(device, kind, district, account, key, "active", hashed, at)
                       for (device, kind, district, key, account), (_, hashed) in zip(checked, logins)]
            entries = [{"entry": "device_enrolled", "device": r.device, "kind": r.kind, "district": r.district,
                        "account": r.account, "public_key": r.public_key, **by, "at": at} for r in records]

            def register(s: Store) -> None:
                for rec in records:
                    s.insert_device(rec)
                    s.add_device_key(rec.device, rec.public_key, height, at)

            sealed = self.commit(Batch(), entries, also=register)
            self.registry = {**self.registry, **{r.device: r for r in records}}
            self.publish_access()
        assert sealed is not None
        logins = [{"device": r.device, "mqtt_username": r.device, "mqtt_password": pw}
                  for r, pw in zip(records, passwords)]
        return {"block": sealed.hash, "devices": logins}

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
            raise EnrolmentError(f"this ledger keeps district {own}'s devices only, "
                                 f"not {', '.join(sorted(districts - {own}))}'s")
        if own is None and self.districts():
            raise EnrolmentError("this city keeps its readings in district chains: enrol each device in its "
                                 "district's home (--home HOME/districts/DISTRICT, made by `cityledger districts add`)")

    def districts(self) -> dict[str, str]:
        """The city's district chains and the first key of each."""
        with self.lock:
            return dict(self.store.con.execute("SELECT district, ledger_key FROM districts").fetchall())

    @staticmethod
    def _refuse_repeats(values: list[str], message: str) -> None:
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise EnrolmentError(message.format(value))
            seen.add(value)

    def rotate_device_key(self, device: str, public_key: str, from_seq: int, operator: str) -> dict[str, Any]:
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
                raise EnrolmentError(f"from-seq must be above {max(ledgered, rec.key_from_seq)}: seqs up to "
                                     f"{ledgered} of {device} are ledgered under its current key")
            at, height = now_ms(), self.height + 1
            entry = {"entry": "device_key_rotated", "device": device, "public_key": public_key,
                     "previous_key": rec.public_key, "from_seq": from_seq, "operator": operator, "at": at}

            def rotate(s: Store) -> None:
                s.set_public_key(device, public_key)
                s.add_device_key(device, public_key, height, at, from_seq)

            sealed = self.commit(Batch(), [entry], also=rotate)
            new = self.store.device(device)
            assert new is not None
            self.registry = {**self.registry, device: new}
        assert sealed is not None
        return {"device": device, "public_key": public_key, "previous_key": rec.public_key, "from_seq": from_seq,
                "operator": operator, "block": sealed.hash}

    def rotate_ledger_key(self, operator: str | None = None) -> dict[str, Any]:
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
            sealed = self.commit(Batch(), [entry], also=lambda s: s.set_meta("ledger_key", new_pub),
                                 header_extra={"next_key": new_pub})
            assert sealed is not None
            self.home.ledger_next_key.replace(self.home.ledger_key)
            self.key = new_key
        return {"old_key": old_pub, "new_key": new_pub, "height": sealed.height, "block": sealed.hash}

    def revoke_device(self, device: str, operator: str) -> dict[str, Any]:
        """Retire a device: its broker login goes at once, its later readings are quarantined."""
        operator = checked_operator(operator)
        with self.lock:
            rec = self.store.device(device)
            if rec is None:
                raise EnrolmentError(f"unknown device {device}")
            if rec.status == "revoked":
                raise EnrolmentError(f"device {device} is already revoked")
            at = now_ms()
            entry = {"entry": "device_revoked", "device": device, "public_key": rec.public_key, "operator": operator,
                     "at": at}
            sealed = self.commit(Batch(), [entry], also=lambda s: s.mark_revoked(device, at))
            self.registry = {**self.registry, device: replace(rec, status="revoked", revoked_at=at)}
            self.publish_access()
        assert sealed is not None
        return {"device": device, "revoked_at": at, "operator": operator, "block": sealed.hash}

    # ------------------------------------------------------------ budgets and suspensions (ledger/service/budget.py)

    def budget_policy(self) -> BudgetPolicy:
        """The per-device budget in force: the latest `budget_policy` entry, else the defaults."""
        with self.lock:
            row = self.store.con.execute("SELECT height, body FROM entries WHERE type = 'budget_policy'"
                                         " ORDER BY height DESC LIMIT 1").fetchone()
        return BudgetPolicy() if row is None else BudgetPolicy.from_entry(strict_json(row[1]), row[0])

    def set_budget_policy(self, rate: float | None = None, burst: float | None = None,
                          suspend_after_min: float | None = None, suspend_for_min: float | None = None,
                          *, operator: str) -> dict[str, Any]:
        """Seal a new budget rule (values not given stay as they are); ingest applies it at once."""
        operator = checked_operator(operator)
        with self.lock:
            old = self.budget_policy()
            try:
                new = BudgetPolicy(old.rate if rate is None else rate, old.burst if burst is None else burst,
                                   old.suspend_after_min if suspend_after_min is None else suspend_after_min,
                                   old.suspend_for_min if suspend_for_min is None else suspend_for_min)
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
            entry = {"entry": "device_suspended", "device": device, "rule": policy.rule(),
                     "over_budget_since": since, "over_budget": over_budget, "until": until, "at": at}
            sealed = self.commit(Batch(), [entry], also=lambda s: s.con.execute(
                "UPDATE devices SET status = 'suspended' WHERE device = ?", [device]))
            self.registry = {**self.registry, device: replace(rec, status="suspended")}
            self.publish_access()
        assert sealed is not None
        return {"device": device, "until": until, "at": at, "rule": entry["rule"], "block": sealed.hash}

    def reinstate_device(self, device: str, operator: str | None = None) -> dict[str, Any] | None:
        """End a device's suspension: an entry naming the rule it was suspended under, and its
        broker login back (the same password). None when the device is not suspended.

        `operator` is who ended it early; None when ingest ends a suspension that ran out.
        """
        by = {"operator": checked_operator(operator)} if operator is not None else {}
        with self.lock:
            rec = self.store.device(device)
            if rec is None or rec.status != "suspended":
                return None
            suspension = self.suspensions().get(device, {})
            at = now_ms()
            entry = {"entry": "device_reinstated", "device": device, "rule": suspension.get("rule"),
                     "suspended_at": suspension.get("at"), **by, "at": at}
            sealed = self.commit(Batch(), [entry], also=lambda s: s.con.execute(
                "UPDATE devices SET status = 'active' WHERE device = ?", [device]))
            self.registry = {**self.registry, device: replace(rec, status="active")}
            self.publish_access()
        assert sealed is not None
        return {"device": device, "at": at, **by, "block": sealed.hash}

    def suspensions(self) -> dict[str, dict[str, Any]]:
        """Devices suspended now, each with its latest `device_suspended` entry (until, rule, at)."""
        with self.lock:
            return {d: s for d, s in self.store.suspensions().items() if s["status"] == "suspended"}

    def reset_password(self, device: str, public_key: str | None = None) -> dict[str, Any]:
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

    def add_service(self, username: str, role: str) -> dict[str, Any]:
        """A broker login for a service (a witness, say); its password is shown once."""
        if not valid_device_id(username) or username in {name for name, _ in SERVICES} \
                or username.startswith(WORKER_PREFIX):
            raise EnrolmentError(f"invalid or reserved login name {username!r}")
        with self.lock:
            if username in self.registry or username in {s.username for s in self.store.services()} \
                    or username in self.logins.logins_elsewhere():
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
            created += [ensure_service_login(self.home, self.store, self.logins, f"{WORKER_PREFIX}{i}", "ingest")
                        for i in range(1, workers + 1)]
            if any(created):
                self.publish_access()
            prefix = self.home.login(WORKER_PREFIX)
            return sorted(int(s.username[len(prefix):]) for s in self.store.services()
                          if s.username.startswith(prefix) and s.username[len(prefix):].isdigit())

    # ------------------------------------------------------------ district chains

    def add_district(self, district: str, operator: str | None = None) -> dict[str, Any]:
        """Open a district's chain: a home of its own under districts/, its first key sealed in the city chain.

        Only a city home without devices takes districts: a home that ledgers readings
        itself would otherwise ledger a district's readings in two chains.
        """
        by = named(operator)
        if self.home.district is not None:
            raise EnrolmentError("a district's ledger has no districts of its own")
        if not valid_district(district) or district in RESERVED_DISTRICTS:
            raise EnrolmentError(f"invalid district {district!r}")
        with self.lock:
            if district in self.districts():
                raise AlreadyEnrolled(f"district {district} exists")
            if self.registry or self.ledgers_readings:
                raise EnrolmentError("this home ledgers readings itself (it has devices, or `cityledger ingest` "
                                     "runs on it); district chains need a city home with no devices, running "
                                     "`cityledger anchor` instead")
            sub = self.home.district_home(district)
            sub.root.mkdir(parents=True, exist_ok=True)
            (sub.root / DISTRICT_FILE).write_text(district + "\n")
            initialize(sub)
            first_key = sub.trusted_key.read_text().strip()
            at = now_ms()
            sealed = self._record({"entry": "district_added", "district": district, "ledger_key": first_key, **by,
                                   "at": at},
                                  "INSERT INTO districts VALUES (?, ?, ?, ?)", [district, first_key, at, self.height + 1])
        return {"district": district, "home": str(sub.root), "ledger_key": first_key, "block": sealed.hash}

    def anchor(self, heads: Sequence[anchors.Head], alarms: Sequence[tuple[str, str, str, int]] = ()) -> Sealed | None:
        """Seal district heads into the city chain (and record alarms about district chains)."""
        with self.lock:
            at, height = now_ms(), self.height + 1
            rows = [(h.district, h.height, h.hash, canonical_json(h.signed.header).decode(), h.signed.sig, at, height)
                    for h in heads]

            def insert(s: Store) -> None:
                if rows:
                    s.con.executemany("INSERT OR REPLACE INTO district_heads VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

            return self.commit(Batch(witness_reports=list(alarms)), [h.entry(at) for h in heads], also=insert)

    def anchored_heads(self) -> list[anchors.Head]:
        with self.lock:
            rows = self.store.con.execute("SELECT district, hash, header, sig FROM district_heads").fetchall()
        return [anchors.Head(d, SignedHeader(h, strict_json(header), sig)) for d, h, header, sig in rows]

    # ------------------------------------------------------------ billing records

    def _record(self, entry: dict[str, Any], sql: str, args: list[Any]) -> Sealed:
        """Seal one entry together with the table row it stands for, in one transaction."""
        with self.lock:
            sealed = self.commit(Batch(), [{**entry, "at": entry.get("at", now_ms())}],
                                 also=lambda s: s.con.execute(sql, args))
        assert sealed is not None
        return sealed

    def add_account(self, account: str, name: str, customer_class: str = "residential",
                    operator: str | None = None) -> dict[str, Any]:
        by = named(operator)
        if not valid_device_id(account):
            raise EnrolmentError(f"invalid account id {account!r} (letters, digits, . _ -)")
        if customer_class not in ("residential", "non-residential"):
            raise EnrolmentError("class must be residential or non-residential")
        with self.lock:  # the check and the insert as one step: two callers cannot both pass the check
            if self.store.con.execute("SELECT 1 FROM accounts WHERE account = ?", [account]).fetchone():
                raise AlreadyEnrolled(f"account {account} exists")
            at = now_ms()
            sealed = self._record({"entry": "account_opened", "account": account, "class": customer_class, **by,
                                   "at": at},
                                  "INSERT INTO accounts VALUES (?, ?, ?, ?)", [account, name, customer_class, at])
        return {"account": account, "name": name, "class": customer_class, "block": sealed.hash}

    def assign_account(self, device: str, account: str | None, operator: str) -> dict[str, Any]:
        """A meter changes hands (a household moves in): recorded in the chain, billed from now on."""
        operator = checked_operator(operator)
        self.require_account(account)
        with self.lock:
            rec = self.store.device(device)
            if rec is None:
                raise EnrolmentError(f"unknown device {device}")
            sealed = self._record({"entry": "device_account", "device": device, "account": account, "operator": operator},
                                  "UPDATE devices SET account = ? WHERE device = ?", [account, device])
            self.registry = {**self.registry, device: replace(rec, account=account)}
        return {"device": device, "account": account, "operator": operator, "block": sealed.hash}

    def require_account(self, account: str | None) -> None:
        if account is not None and not self.store.con.execute(
                "SELECT 1 FROM accounts WHERE account = ?", [account]).fetchone():
            raise EnrolmentError(f"no account {account}: add it first with `cityledger accounts add`")

    def load_tariffs(self, source: str, operator: str | None = None) -> dict[str, Any]:
        """Keep a new tariff version; bills already issued keep the prices they were issued with."""
        by = named(operator)
        parse_tariffs(source)  # refuse a file that cannot be used before anything is written
        digest = hashlib.sha256(source.encode()).hexdigest()
        with self.lock:
            row = self.store.con.execute("SELECT max(version), arg_max(sha256, version) FROM tariff_versions").fetchone()
            if row and row[1] == digest:
                return {"version": row[0], "sha256": digest, "changed": False}
            version = (row[0] or 0) + 1 if row else 1
            self._record({"entry": "tariffs_loaded", "version": version, "sha256": digest, **by},
                         "INSERT INTO tariff_versions VALUES (?, ?, ?, ?)", [version, now_ms(), source, digest])
        return {"version": version, "sha256": digest, "changed": True}

    def _parking_space(self, space: str) -> None:
        rec = self.store.device(space)
        if rec is None or rec.kind != "parking":
            raise EnrolmentError(f"{space} is not an enrolled parking sensor")

    def set_zone(self, space: str, zone_class: int, from_ts: int, operator: str) -> dict[str, Any]:
        operator = checked_operator(operator)
        with self.lock:  # checks and the record in one step
            self._parking_space(space)
            if zone_class not in (1, 2, 3):
                raise EnrolmentError("zone class must be 1, 2 or 3")
            sealed = self._record({"entry": "parking_zone", "space": space, "class": zone_class, "from": from_ts,
                                   "operator": operator},
                                  "INSERT INTO parking_zones VALUES (?, ?, ?)", [space, zone_class, from_ts])
        return {"space": space, "class": zone_class, "from": from_ts, "operator": operator, "block": sealed.hash}

    def lease(self, space: str, account: str | None, from_ts: int, operator: str) -> dict[str, Any]:
        operator = checked_operator(operator)
        with self.lock:  # checks and the record in one step
            self._parking_space(space)
            self.require_account(account)
            sealed = self._record({"entry": "parking_lease", "space": space, "account": account, "from": from_ts,
                                   "operator": operator},
                                  "INSERT INTO parking_leases VALUES (?, ?, ?)", [space, account, from_ts])
        return {"space": space, "account": account, "from": from_ts, "operator": operator, "block": sealed.hash}

    def checkin(self, space: str, account: str, at: int, operator: str) -> dict[str, Any]:
        operator = checked_operator(operator)
        with self.lock:  # checks and the record in one step
            self._parking_space(space)
            self.require_account(account)
            sealed = self._record({"entry": "parking_checkin", "space": space, "account": account, "at": at,
                                   "operator": operator},
                                  "INSERT INTO parking_checkins VALUES (?, ?, ?)", [space, account, at])
        return {"space": space, "account": account, "at": at, "operator": operator, "block": sealed.hash}

    def record_replacement(self, device: str, ts: int, old_final: int, new_initial: int,
                           operator: str) -> dict[str, Any]:
        operator = checked_operator(operator)
        with self.lock:
            rec = self.store.device(device)
            if rec is None or rec.kind == "parking":
                raise EnrolmentError(f"{device} is not an enrolled meter")
            sealed = self._record(
                {"entry": "meter_replaced", "device": device, "ts": ts, "old_final": old_final,
                 "new_initial": new_initial, "operator": operator},
                "INSERT INTO meter_replacements VALUES (?, ?, ?, ?, ?, ?)",
                [device, ts, old_final, new_initial, operator, now_ms()])
        return {"device": device, "ts": ts, "block": sealed.hash}

    def adjust(self, account: str, amount: str, reason: str, operator: str) -> dict[str, Any]:
        """Append a refund, credit or re-bill; it appears on the account's next bill. Nothing is edited.

        Above the approval limit it is only requested: sealed as `adjustment_requested`, it
        waits for a second operator (`approve_adjustment`) before it is sealed (four eyes).
        """
        operator = checked_operator(operator)
        try:
            value = billing.parse_amount(amount)
        except ValueError as exc:
            raise EnrolmentError(str(exc)) from exc
        reason = reason.strip() if isinstance(reason, str) else ""
        if not reason:
            raise EnrolmentError("an adjustment needs a reason")
        adj_id = f"adj-{secrets.token_hex(6)}"
        with self.lock:
            self.require_account(account)
            at, height, limit = now_ms(), self.height + 1, self.adjustment_limit()
            if abs(value) > limit:
                self._record({"entry": "adjustment_requested", "id": adj_id, "account": account, "amount": str(value),
                              "reason": reason, "operator": operator, "limit": str(limit), "at": at},
                             "INSERT INTO adjustment_requests VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', NULL, NULL)",
                             [adj_id, account, str(value), reason, operator, at, height])
                return {"id": adj_id, "account": account, "amount": str(value), "status": "pending",
                        "limit": str(limit), "created_at": at}
            self._record(self._adjustment_entry(adj_id, account, value, reason, operator, at),
                         "INSERT INTO adjustments VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [adj_id, account, str(value), reason, operator, at, height])
        return {"id": adj_id, "account": account, "amount": str(value), "status": "sealed", "created_at": at}

    @staticmethod
    def _adjustment_entry(adj_id: str, account: str, value: Decimal, reason: str, operator: str, at: int,
                          approved_by: str | None = None) -> dict[str, Any]:
        approval = {"approved_by": approved_by} if approved_by else {}
        return {"entry": "adjustment", "id": adj_id, "account": account, "amount": str(value), "reason": reason,
                "operator": operator, **approval, "at": at}

    def adjustment_limit(self) -> Decimal:
        """Above this (either sign) an adjustment needs a second operator: the latest `adjustment_limit`
        entry, else DEFAULT_ADJUSTMENT_LIMIT."""
        row = self.store.con.execute("SELECT body FROM entries WHERE type = 'adjustment_limit'"
                                     " ORDER BY height DESC LIMIT 1").fetchone()
        return DEFAULT_ADJUSTMENT_LIMIT if row is None else Decimal(strict_json(row[0])["amount"])

    def set_adjustment_limit(self, amount: str, operator: str) -> dict[str, Any]:
        """Seal a new approval limit; adjustments already requested keep waiting for approval."""
        operator = checked_operator(operator)
        try:
            limit = billing.parse_amount(amount)
        except ValueError as exc:
            raise EnrolmentError(str(exc)) from exc
        if limit < 0:
            raise EnrolmentError("the approval limit is an amount of yuan above zero")
        with self.lock:
            sealed = self.commit(Batch(), [{"entry": "adjustment_limit", "amount": str(limit), "operator": operator,
                                            "at": now_ms()}])
        assert sealed is not None
        return {"limit": str(limit), "operator": operator, "block": sealed.hash}

    def decide_adjustment(self, adj_id: str, operator: str, approve: bool, note: str = "") -> dict[str, Any]:
        """A second operator approves (the adjustment is sealed with the approval, one block) or
        rejects a requested adjustment. The requester may withdraw it, never approve it."""
        operator = checked_operator(operator)
        with self.lock:
            row = self.store.con.execute("SELECT account, amount, reason, operator, status FROM adjustment_requests"
                                         " WHERE id = ?", [adj_id]).fetchone()
            if row is None:
                raise EnrolmentError(f"no requested adjustment {adj_id}")
            account, amount, reason, requester, status = row
            if status != "pending":
                raise EnrolmentError(f"adjustment {adj_id} is already {status}")
            if approve and operator == requester:
                raise EnrolmentError(f"{operator} requested {adj_id}: another operator must approve it")
            at, height = now_ms(), self.height + 1
            decision = {"entry": "adjustment_approved" if approve else "adjustment_rejected", "id": adj_id,
                        "operator": operator, "requested_by": requester, **({"note": note} if note else {}), "at": at}
            entries = [decision]
            if approve:
                entries.append(self._adjustment_entry(adj_id, account, Decimal(amount), reason, requester, at, operator))

            def record(s: Store) -> None:
                s.con.execute("UPDATE adjustment_requests SET status = ?, decided_by = ?, decided_at = ? WHERE id = ?",
                              ["approved" if approve else "rejected", operator, at, adj_id])
                if approve:
                    s.con.execute("INSERT INTO adjustments VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [adj_id, account, amount, reason, requester, at, height])

            sealed = self.commit(Batch(), entries, also=record)
        assert sealed is not None
        return {"id": adj_id, "status": "approved" if approve else "rejected", "operator": operator,
                "requested_by": requester, "account": account, "amount": amount, "block": sealed.hash}

    def adjustment_requests(self, status: str | None = "pending") -> list[dict[str, Any]]:
        with self.lock:
            rows = self.store.con.execute(
                "SELECT id, account, amount, reason, operator, requested_at, status, decided_by, decided_at"
                " FROM adjustment_requests WHERE ? IS NULL OR status = ? ORDER BY requested_at", [status, status]).fetchall()
        cols = ("id", "account", "amount", "reason", "operator", "at", "status", "decided_by", "decided_at")
        return [dict(zip(cols, r)) for r in rows]

    # ------------------------------------------------------------ gaps settled for good

    def write_off(self, device: str, from_seq: int, to_seq: int, reason: str, operator: str) -> dict[str, Any]:
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
                raise EnrolmentError(f"{device} has seqs {', '.join(map(str, ledgered[:5]))}"
                                     f"{' …' if len(ledgered) > 5 else ''} ledgered in {from_seq}-{to_seq}: "
                                     "write off only seqs that are missing")
            overlap = self.store.con.execute(
                "SELECT from_seq, to_seq FROM write_offs WHERE device = ? AND from_seq <= ? AND to_seq >= ? LIMIT 1",
                [device, to_seq, from_seq]).fetchone()
            if overlap is not None:
                raise EnrolmentError(f"seqs {overlap[0]}-{overlap[1]} of {device} are already written off")
            at, height = now_ms(), self.height + 1
            sealed = self._record({"entry": "seqs_written_off", "device": device, "from_seq": from_seq,
                                   "to_seq": to_seq, "reason": reason, "operator": operator, "at": at},
                                  "INSERT INTO write_offs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  [device, from_seq, to_seq, reason, operator, at, height])
            for callback in self.on_written_off:  # ingest moves the device's ack past them, under the lock
                callback(device, from_seq, to_seq, sealed)
        return {"device": device, "from_seq": from_seq, "to_seq": to_seq, "reason": reason, "operator": operator,
                "block": sealed.hash}

    def roll_up(self, max_readings: int = 500_000,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Bring the per-device daily summaries up to the head, a chunk per transaction.

        Each chunk is summarised on a read snapshot without the lock (DuckDB reads every
        reading of the days it touches, on its own threads), and the lock is held only to
        write the summaries: ingest keeps sealing meanwhile (issue 14; it used to wait
        for the whole chunk's aggregation). It stops at the head as it was when called:
        chasing the blocks sealed meanwhile would summarise today's readings again and
        again under load; the next run takes them.
        """
        chunks = readings = 0
        head = self.height
        while True:
            summary = device_days.summarise_next(self.store, max_readings, upto=head)
            if summary is None:
                return {"height": device_days.rolled_up(self.store), "chunks": chunks, "readings": readings}
            with self.lock:
                with self.store.transaction():
                    stored = device_days.store_summary(self.store, summary)
                target = self.height
            if not stored:
                continue  # another roll-up moved the mark meanwhile: summarise from where it is now
            chunks, readings = chunks + 1, readings + summary.readings
            if progress:
                progress(summary.hi, target)

    def issue_bills(self, month: str, bills: Sequence[dict[str, Any]], per_block: int = 5000) -> dict[str, Any]:
        """Seal bills not yet issued: each bill's hash goes into the chain, its body into `bills`.

        Issued bills are never replaced, so running the close again issues nothing new.
        """
        issued = 0
        issued_sql = "SELECT account FROM bills WHERE month = ?"
        done = {r[0] for r in self.store.con.execute(issued_sql, [month]).fetchall()}
        todo = [b for b in bills if b["account"] not in done and b.get("status") != "issued"]
        for start in range(0, len(todo), per_block):
            # Bodies and hashes are made before the lock, and the lock is held per block, not for
            # the whole close: ingest seals between blocks (issue 14). Each block checks again
            # which bills are issued by now, so a close running at the same time issues none twice.
            at = now_ms()
            rows, entries = [], []
            for bill in todo[start:start + per_block]:
                body = canonical_json({**bill, "status": "issued"}).decode()
                digest = hashlib.sha256(body.encode()).hexdigest()
                entries.append({"entry": "bill_issued", "account": bill["account"], "month": month,
                                "total": bill["total"], "bill_hash": digest, "at": at})
                rows.append((bill["account"], month, at, bill["total"], body, digest))
            with self.lock:
                now_done = {r[0] for r in self.store.con.execute(issued_sql, [month]).fetchall()}
                keep = [i for i, row in enumerate(rows) if row[0] not in now_done]
                if not keep:
                    continue
                rows, entries = [rows[i] for i in keep], [entries[i] for i in keep]
                height = self.height + 1

                def insert(s: Store, rows: list[tuple[Any, ...]] = rows, height: int = height) -> None:
                    cols = list(zip(*rows))
                    s._insert_arrow("bills", pa.table({
                        "account": cols[0], "month": cols[1], "issued_at": pa.array(cols[2], pa.int64()),
                        "total": cols[3], "body": cols[4], "hash": cols[5],
                        "height": pa.array([height] * len(rows), pa.int64())}))

                self.commit(Batch(), entries, also=insert)
                issued += len(rows)
        return {"month": month, "issued": issued, "already_issued": len(done)}

    # ------------------------------------------------------------ dashboard logins

    def set_password(self, role: str, principal: str, password: str) -> dict[str, Any]:
        """Set or reset a citizen's or operator's dashboard password (kept only as Argon2id)."""
        exists = {"citizen": "SELECT 1 FROM accounts WHERE account = ?",
                  "operator": "SELECT 1 FROM operators WHERE operator = ?"}.get(role)
        if exists is None:
            raise EnrolmentError("role must be citizen or operator")
        try:
            hashed = auth.hash_password(password)
        except ValueError as exc:
            raise EnrolmentError(str(exc)) from exc
        with self.lock:
            if not self.store.con.execute(exists, [principal]).fetchone():
                raise EnrolmentError(f"no {role} {principal}")
            self.store.con.execute("INSERT OR REPLACE INTO logins VALUES (?, ?, ?, ?, 0, 0)",
                                   [role, principal, hashed, now_ms()])
        return {"role": role, "id": principal, "password_set": True}

    def add_operator(self, operator: str, name: str, districts: str) -> dict[str, Any]:
        if not valid_device_id(operator):
            raise EnrolmentError(f"invalid operator id {operator!r}")
        try:
            scope = auth.parse_districts(districts)
        except ValueError as exc:
            raise EnrolmentError(str(exc)) from exc
        with self.lock:
            if self.store.con.execute("SELECT 1 FROM operators WHERE operator = ?", [operator]).fetchone():
                raise AlreadyEnrolled(f"operator {operator} exists")
            self.store.con.execute("INSERT INTO operators VALUES (?, ?, ?, ?)", [operator, name, ",".join(scope), now_ms()])
        return {"operator": operator, "name": name, "districts": list(scope)}

    def authenticate(self, role: str, principal: str, password: str,
                     source: str = signin.LOCAL) -> signin.Outcome:
        """Signed in, wrong, or throttled (ledger/people/signin.py): no hard lock that a stranger could set off.
        A throttled attempt costs no Argon2 check. The counts are read again once this attempt holds
        one of the two check slots, so a burst of parallel attempts gains at most one extra guess."""
        keys = signin.keys_for(role, principal, source)
        counts = signin.load_counts(self.store.con, keys)  # a snapshot read: a flood of these never waits for a seal
        wait = signin.verdict(signin.POLICY, counts, now_ms())
        if wait is not None:
            return self._signin_failed(role, principal, source, keys, wait)
        with PASSWORD_CHECKS:
            with self.lock:
                counts = signin.load_counts(self.store.con, keys)
                row = self.store.con.execute("SELECT password_hash FROM logins WHERE role = ? AND id = ?",
                                             [role, principal]).fetchone()
            wait = signin.verdict(signin.POLICY, counts, now_ms())
            if wait is not None:
                return self._signin_failed(role, principal, source, keys, wait)
            # an unknown login is checked against a dummy hash: the same time as a real check, so ids do not leak
            right = auth.check_password(row[0] if row else _DUMMY_HASH, password) and row is not None
            found = self._principal(role, principal) if right else None
            if found is None:
                return self._signin_failed(role, principal, source, keys, None)
            with self.lock:  # counted afresh under the lock: a parallel attempt may have counted meanwhile
                cleared = signin.after_success(signin.load_counts(self.store.con, keys), now_ms())
                signin.save_counts(self.store.con, keys, cleared, scopes=("pair",))
        return signin.SignedIn(found)

    def _principal(self, role: str, principal: str) -> auth.Principal | None:
        """Who a login with the right password is (None: an operator's login whose operator is gone)."""
        with self.lock:
            if role == "citizen":
                name = self.store.con.execute("SELECT name FROM accounts WHERE account = ?", [principal]).fetchone()
                return auth.Principal("citizen", principal, name[0] if name else principal)
            op = self.store.con.execute("SELECT name, districts FROM operators WHERE operator = ?", [principal]).fetchone()
        if op is None:
            return None
        return auth.Principal("operator", principal, op[0], tuple(op[1].split(",")))

    def _signin_failed(self, role: str, principal: str, source: str, keys: signin.Keys,
                       wait: signin.Wait | None) -> signin.Wrong | signin.Throttled:
        """Count a wrong password (a throttled attempt counts for nothing: it only waits) and record
        the failure for operators, without the password. Counts are read and written under the
        lock, so parallel failures all count."""
        now = now_ms()
        with self.lock:
            if wait is None:
                counts = signin.load_counts(self.store.con, keys)
                signin.save_counts(self.store.con, keys, signin.after_failure(signin.POLICY, counts, now))
                signin.forget_stale(self.store.con, signin.POLICY, now)
            added = signin.record_failure(self.store.con, now, role, principal, source, wait)
        if added:
            signin.log_failure(role, principal, source, wait)
        return signin.Wrong() if wait is None else signin.Throttled(wait.scope, wait.retry_after_s)

    # ------------------------------------------------------------ disputes

    def dispute(self, dispute_id: str | None, account: str, author: str, status: str, message: str,
                subject: str | None = None) -> dict[str, Any]:
        """Append to a dispute (a new one when `dispute_id` is None): a citizen's message or an operator's answer."""
        if not message.strip():
            raise EnrolmentError("a dispute needs a message")
        if status not in ("open", "answered", "closed"):
            raise EnrolmentError("status must be open, answered or closed")
        with self.lock:
            if dispute_id is None:
                dispute_id = f"dsp-{secrets.token_hex(5)}"
            else:
                known = self.store.con.execute("SELECT account FROM disputes WHERE id = ? LIMIT 1", [dispute_id]).fetchone()
                if known is None or known[0] != account:
                    raise EnrolmentError(f"no dispute {dispute_id} for account {account}")
            self.store.con.execute("INSERT INTO disputes VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   [dispute_id, now_ms(), account, author, status, subject, message[:4000]])
        return {"id": dispute_id, "status": status}

    def publish_access(self) -> None:
        """Tell the subscribers who may log in now: the active devices and every service."""
        devices = [d for d in self.registry.values() if d.status == "active"]
        services = self.store.services()
        for callback in self.on_access:
            callback(devices, services)


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


def initialize(home: Home) -> dict[str, Any]:
    """Create the home, ledger key, schema, service logins and genesis; idempotent."""
    home.ensure()
    created = not home.ledger_key.exists()
    key = create_key_file(home.ledger_key) if created else load_signing_key(home.ledger_key)
    store = Store.open(home.database)
    try:
        known = store.get_meta("ledger_key")
        if known is None:
            store.set_meta("ledger_key", public_hex(key))
            store.set_meta("first_ledger_key", public_hex(key))
            home.trusted_key.write_text(public_hex(key) + "\n")
        elif known != public_hex(key) and not home.ledger_next_key.exists():
            raise RuntimeError(f"{home.ledger_key} does not match the ledger's key {known}")
        logins = installed_logins(home)
        for username, role in SERVICES:
            ensure_service_login(home, store, logins, username, role)
        writer = LedgerWriter(home, store, key, logins)
        if writer.height < 0:
            district = {"district": home.district} if home.district else {}
            writer.commit(Batch(), [{"entry": "ledger_init", "ledger_key": public_hex(key), **district, "at": now_ms()}])
        if store.con.execute("SELECT count(*) FROM tariff_versions").fetchone()[0] == 0:
            writer.load_tariffs(DEFAULT_FILE.read_text())
        writer.publish_access()
        return {"home": str(home.root), "ledger_key": public_hex(key), "created": created,
                "height": writer.height}
    finally:
        store.close()
