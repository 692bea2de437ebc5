"""What the CLI and the dashboard may ask of the ledger, whoever owns the file.

DuckDB lets one process hold the database file; while ingest runs, that is
ingest, and these operations run inside it (reached over `ledger.rpc`). When no
ingest runs, a `DirectBackend` opens the file for the length of one call, so a
CLI command or a dashboard page never keeps ingest from starting.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from ledger.anomalies import investigations
from ledger.anomalies.investigations import AnomalyDetail
from ledger.billing.bills import Bill, UnpaidStay, close_bills, make_bill, space_stays, unpaid_stays
from ledger.billing.tariffs import TariffBook, parse_tariffs
from ledger.chain import anchors, merkle
from ledger.chain.audit import Progress, VerifyReport, compare_with_witness
from ledger.chain.blocks import Header
from ledger.chain.notes import verifier_key
from ledger.chain.policy import quorum_of
from ledger.chain.protocol import Reading, strict_json
from ledger.chain.receipts import Receipt, build_receipt
from ledger.chain.tlog import inclusion_proof_at
from ledger.chain.tlogproof import build_tlog_proof
from ledger.clock import now_ms
from ledger.defaults import DEFAULT_TIMEZONE
from ledger.errors import NotFound, Refused, Unavailable
from ledger.home import Home
from ledger.keys import load_signing_key, public_hex, verify_key_from_hex
from ledger.people import signin
from ledger.people.signin import OutcomeDoc
from ledger.people.tokens import DEFAULT_RATE_PER_MINUTE, DEFAULT_TTL_DAYS
from ledger.service import jobs, supervision, views
from ledger.service.budget import BudgetRule
from ledger.service.checkpoints import load_policy, published_checkpoint
from ledger.service.health import ACK_BOUNDS_S, SEAL_BOUNDS_S, Histogram, IngestHealth
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import districts as district_ops
from ledger.service.operations import parking as parking_ops
from ledger.service.operations import payments as payment_ops
from ledger.service.operations import people as people_ops
from ledger.service.operations import sharing as sharing_ops
from ledger.service.results.access import (
    AccessDoc,
    AccessPage,
    CallerDoc,
    GrantDoc,
    GrantRevoked,
    Remembered,
    TokenDoc,
    TokenIssued,
    TokenRevoked,
)
from ledger.service.results.anomalies import ScanSummary
from ledger.service.results.billing import (
    AccountAssigned,
    AccountOpened,
    Adjustment,
    AdjustmentDecided,
    AdjustmentLimitSet,
    CheckedIn,
    Leased,
    MonthClosed,
    ReplacementRecorded,
    RolledUp,
    TariffsInForce,
    TariffsLoaded,
    ZoneSet,
)
from ledger.service.results.chain import (
    ArchiveAnchor,
    BudgetPolicySet,
    DeviceKeyRotated,
    DeviceListed,
    DeviceLogin,
    Enrolled,
    Enrolments,
    HeldBack,
    KeyLink,
    LedgerKeyRotated,
    LogStatus,
    Reinstated,
    Revoked,
    ServiceLogin,
    Status,
    WrittenOff,
)
from ledger.service.results.districts import AnchorProof, Anchors, DistrictAdded, DistrictChain
from ledger.service.results.metrics import LedgerMetrics
from ledger.service.results.payments import Balance, PaymentRecorded, Statement
from ledger.service.results.people import Dispute, DisputePosted, Operator, OperatorAdded, PasswordSet
from ledger.service.tiles import TileDirectory
from ledger.service.writer import LOG_META, ORIGIN_META, LedgerWriter, log_edge_size
from ledger.store import anomaly_queries, billing_queries, people, reading_pages
from ledger.store import districts as store_districts
from ledger.store import signin as store_signin
from ledger.store.accounts import AdjustmentRequest
from ledger.store.archive import ArchiveWritten
from ledger.store.billing_queries import AccountWithDevices, IssuedMonth
from ledger.store.investigations import Anomaly
from ledger.store.payments import PaymentRow
from ledger.store.reading_pages import ReadingCount, ReadingPage, ReadingPosition, ReadingSource
from ledger.store.signin import RepeatedFailures
from ledger.store.sqlaudit import audit_store
from ledger.store.store import (
    DeviceKey,
    FlaggedDevice,
    QuarantineEntry,
    RecentBlock,
    RecentReading,
    Store,
    WitnessReportRow,
    WriteOff,
)
from ledger.store.views import quarantine_summary


class Backend(Protocol):
    health: IngestHealth | None  # the running ingest's view of itself, inside ingest only

    def reading(self) -> contextlib.AbstractContextManager[Store]: ...
    def writing(self) -> contextlib.AbstractContextManager[LedgerWriter]: ...


class InProcessBackend:
    """Inside the ingest: reads on a fresh cursor, writes through the live writer."""

    def __init__(self, writer: LedgerWriter, health: IngestHealth | None = None) -> None:
        self.writer = writer
        self.health = health

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

    health: IngestHealth | None = None  # no ingest runs

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
    """The public operations. Every public method is also served over the socket (ledger/service/rpc.py),
    and its result is a typed value (ledger/service/results.py) or plain JSON-able data."""

    def __init__(self, home: Home, backend: Backend) -> None:
        self.home = home
        self.backend = backend

    def ledger_key(self) -> str:
        """The key signing new blocks now (after any rotation)."""
        return public_hex(load_signing_key(self.home.ledger_key))

    def status(self) -> Status:
        with self.backend.reading() as store:
            counts = store.counts()
            head = store.head()
        health = self.backend.health
        return {
            "ledger_key": self.ledger_key(),
            **counts,
            "height": head[0] if head else None,
            "last_block_hash": head[1] if head else None,
            "ingest": health.snapshot(now_ms()) if health else {"running": False},
            "jobs": jobs.statuses(self.home.jobs),
            "supervisor": supervision.parts_status(self.home),  # `cityledger up`'s restarts per part; {} without up
            "log": self.log_status(),
        }

    def log_status(self) -> LogStatus:
        """The transparency log's origin and size, and the newest checkpoint published."""
        with self.backend.reading() as store:
            origin, edge = store.get_meta(ORIGIN_META), store.get_meta(LOG_META)
        writer = getattr(self.backend, "writer", None)
        checkpointer = writer.checkpointer if isinstance(writer, LedgerWriter) else None
        published = published_checkpoint(self.home.tlog)
        policy = load_policy(self.home.witness_policy)
        return {
            "origin": origin,
            "size": log_edge_size(edge),
            "checkpoint_size": published.size if published else None,
            "cosigners": published.cosigners if published else [],
            "policy": quorum_of(policy) if policy else "none",
            "alarm": checkpointer.status.alarm if checkpointer else None,
            "witnesses": dict(checkpointer.status.witnesses) if checkpointer else {},
        }

    def silence_margin_ms(self) -> int:
        """How much later than usual the ledger may hear from a device now (ledger.health)."""
        health = self.backend.health
        return int(health.snapshot(now_ms())["silence_margin_ms"] or 0) if health else 0

    def devices(self) -> list[DeviceListed]:
        with self.backend.reading() as store:
            statuses = store.device_statuses()
            out: list[DeviceListed] = []
            for rec in store.devices():
                out.append({**rec.public(), "online": statuses.get(rec.device, ("unknown", None))[0]})
        return out

    def device_statuses(self) -> dict[str, list[str | int]]:
        with self.backend.reading() as store:
            return {d: [s, at] for d, (s, at) in store.device_statuses().items()}

    def enroll_device(
        self,
        device: str,
        kind: str,
        district: str,
        public_key: str,
        account: str | None = None,
        operator: str | None = None,
    ) -> Enrolled:
        with self.backend.writing() as writer:
            return writer.enroll_device(device, kind, district, public_key, account, operator)

    def enroll_devices(self, rows: list[dict[str, Any]], operator: str | None = None) -> Enrolments:
        """Many devices in one block and one broker reload (a fleet's first day, the benchmark)."""
        with self.backend.writing() as writer:
            return writer.enroll_devices(rows, operator)

    def revoke_device(self, device: str, operator: str) -> Revoked:
        with self.backend.writing() as writer:
            return writer.revoke_device(device, operator)

    def budget_policy(self) -> BudgetRule:
        """The per-device message budget in force (ledger/service/budget.py)."""
        with self.backend.writing() as writer:
            return writer.budget_policy().rule()

    def set_budget_policy(
        self,
        rate: float | None = None,
        burst: float | None = None,
        suspend_after_min: float | None = None,
        suspend_for_min: float | None = None,
        *,
        operator: str,
    ) -> BudgetPolicySet:
        with self.backend.writing() as writer:
            return writer.set_budget_policy(rate, burst, suspend_after_min, suspend_for_min, operator=operator)

    def reinstate_device(self, device: str, operator: str) -> Reinstated:
        """End a suspension before its time (the operator's call); refused if not suspended."""
        with self.backend.writing() as writer:
            done = writer.reinstate_device(device, operator)
        if done is None:
            raise ValueError(f"{device} is not suspended")
        return done

    def reset_device_password(self, device: str, public_key: str | None = None) -> DeviceLogin:
        with self.backend.writing() as writer:
            return writer.reset_password(device, public_key)

    def add_witness(self, name: str) -> ServiceLogin:
        """A broker login with which an outside party follows the header stream."""
        with self.backend.writing() as writer:
            return writer.add_service(name, "witness")

    def quarantine(
        self, reason: str | None = None, device: str | None = None, limit: int = 100
    ) -> list[QuarantineEntry]:
        with self.backend.reading() as store:
            return store.quarantine(reason=reason, device=device, limit=limit)

    def recent_blocks(self, limit: int = 20) -> list[RecentBlock]:
        with self.backend.reading() as store:
            return store.recent_blocks(limit)

    def recent_readings(self, limit: int = 50) -> list[RecentReading]:
        with self.backend.reading() as store:
            return store.recent_readings(limit)

    def verify(
        self,
        deep: bool = False,
        ledger_key: str | None = None,
        witness: str | None = None,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Audit the chain from the first ledger key (or `ledger_key`), then against a witness's copy."""
        with self.backend.reading() as store:
            trusted = verify_key_from_hex(ledger_key or self._first_key(store))
            head = store.head()
            # Structural audit hashed in DuckDB; blocks it cannot clear, and --deep, take the Python audit.
            # Inside ingest it hashes one range at a time, on about one core: the other stays with the
            # sealing (issue 14; `cityledger bench --job audit`).
            inside = isinstance(self.backend, InProcessBackend) and not deep
            report = audit_store(
                store,
                trusted,
                deep=deep,
                total=(head[0] + 1) if head else 0,
                progress=progress,
                workers=1 if inside else None,
            ).as_dict()
            if witness is not None:
                from ledger.store.witness_files import load_headers

                ours = store.block_hashes()
                theirs = {h: b["hash"] for h, b in load_headers(Path(witness)).items()}
                report["witness_blocks"] = len(theirs)
                differs = compare_with_witness(ours, theirs)
                if differs and (report["failed_block"] is None or differs.height < report["failed_block"]):
                    report.update(
                        {"ok": False, "failure": str(differs), "failed_block": differs.height, "failed_reading": None}
                    )
        return report

    def archive(self, out: str, upto_height: int | None = None, progress: Progress | None = None) -> ArchiveWritten:
        """Append sealed blocks up to `upto_height` (default: all) to the Parquet archive in `out`
        (an absolute path: while ingest runs, the files are written by the ingest process)."""
        from ledger.store.archive import write_archive

        with self.backend.reading() as store:
            return write_archive(store, Path(out), upto_height, progress)

    def archive_anchor(self, last_height: int) -> ArchiveAnchor:
        """Where the live ledger says an archive ending at `last_height` joins it, and the first key."""
        from ledger.chain.blocks import block_hash

        with self.backend.reading() as store:
            at, after, head = store.block(last_height), store.block(last_height + 1), store.head()
            try:
                first_key: str | None = self._first_key(store)
            except FileNotFoundError:
                first_key = None
        return {
            "first_key": first_key,
            "head": head[0] if head else None,
            "hash_at": block_hash(at["header"]) if at else None,
            "next_prev": after["header"].get("prev") if after else None,
        }

    def _first_key(self, store: Store) -> str:
        if self.home.trusted_key.exists():
            return self.home.trusted_key.read_text().strip()
        first = store.get_meta("first_ledger_key")
        if first is None:
            raise FileNotFoundError("no trusted ledger key: pass --ledger-key")
        return first

    def receipt(self, device: str, seq: int) -> Receipt:
        """PROTOCOL.md section 5 receipt proving that reading (device, seq) is in the ledger."""
        with self.backend.reading() as store:
            position = store.reading_position(device, seq)
            if position is None:
                raise NotFound(f"no ledgered reading {device}#{seq}")
            height, idx = position
            block = store.block(height)
            leaves = store.leaves(height)
            reading = leaves[idx][1]
            device_key = store.device_key_for(device, seq, height)
            if block is None or not isinstance(reading, Reading) or device_key is None:
                raise ValueError(f"the stored block {height} cannot back a receipt (run `cityledger verify`)")
            hashes = [merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in leaves]  # type: ignore[union-attr]
            return build_receipt(
                reading, device_key, block["header"], block["sig"], store.ledger_key_at(height), hashes, idx
            )

    def log_vkey(self) -> str:
        """The log's C2SP note verifier key (PROTOCOL.md section 7): its origin and the key signing now."""
        with self.backend.reading() as store:
            origin = store.get_meta(ORIGIN_META)
        if origin is None:
            raise NotFound("this ledger has no transparency log yet: seal a block first")
        return verifier_key(origin, bytes.fromhex(self.ledger_key()))

    def tlog_receipt(self, device: str, seq: int) -> str:
        """PROTOCOL.md section 7 receipt (a C2SP tlog-proof) that reading (device, seq) is in the log,
        under the newest published checkpoint: the log's signature and its witnesses' cosignatures."""
        with self.backend.reading() as store:
            position = store.reading_position(device, seq)
            if position is None:
                raise NotFound(f"no ledgered reading {device}#{seq}")
            height, idx = position
            index = store.log_index(height, idx)
            leaves = store.leaves(height)
        reading = leaves[idx][1]
        if not isinstance(reading, Reading):
            raise ValueError(f"the stored block {height} cannot back a receipt (run `cityledger verify`)")
        published = published_checkpoint(self.home.tlog)
        size = published.size if published else 0
        if published is None or size <= index:
            raise Unavailable(
                f"{device}#{seq} is sealed, but no published checkpoint covers it yet "
                f"(it is entry {index}; the checkpoint has {size}): try again in a few seconds"
            )
        hashes = inclusion_proof_at(TileDirectory(self.home.tlog), index, size)
        leaf = reading.leaf_data()
        if not merkle.verify_inclusion(index, size, merkle.leaf_hash(leaf), hashes, published.checkpoint.root):
            raise Unavailable(
                f"the log's tiles do not prove entry {index} under its checkpoint: run `cityledger verify`"
            )
        return build_tlog_proof(leaf, index, hashes, published.note).decode()

    def key_chain(self) -> list[KeyLink]:
        """Headers that rotate the ledger key, for verifiers who trust only the first key."""
        with self.backend.reading() as store:
            return [
                {"hash": b["hash"], "header": b["header"], "sig": base64.b64encode(b["sig"]).decode()}
                for b in store.rotation_headers()
            ]

    def rotate_device_key(self, device: str, public_key: str, from_seq: int, operator: str) -> DeviceKeyRotated:
        """The device's new key, signing its readings from `from_seq` on (ledger/chain/keyspans.py)."""
        with self.backend.writing() as writer:
            return writer.rotate_device_key(device, public_key, from_seq, operator)

    def write_off(self, device: str, from_seq: int, to_seq: int, reason: str, operator: str) -> WrittenOff:
        """Settle seqs of a device that will never be ledgered; its ack passes them."""
        with self.backend.writing() as writer:
            return writer.write_off(device, from_seq, to_seq, reason, operator)

    def held_back(self) -> list[HeldBack]:
        """Devices whose ack is held back by a gap: readings above it are ledgered, the gap is not.

        The gap's first seq is what the device keeps re-sending; if it can never be ledgered
        (see the quarantine for why), an operator writes it off (`write_off`).
        """
        with self.backend.reading() as store:
            state = store.seq_state()
        return [
            {
                "device": device,
                "acked": hwm,
                "missing_from": hwm + 1,
                "missing_to": min(above) - 1,
                "ledgered_above": len(above),
            }
            for device, (hwm, above) in sorted(state.items())
            if above
        ]

    def write_offs(self, device: str | None = None) -> list[WriteOff]:
        with self.backend.reading() as store:
            return store.write_offs(device)

    def rotate_ledger_key(self, operator: str | None = None) -> LedgerKeyRotated:
        with self.backend.writing() as writer:
            return writer.rotate_ledger_key(operator)

    def device_key_history(self, device: str) -> list[DeviceKey]:
        with self.backend.reading() as store:
            return store.device_key_history(device)

    def flagged_devices(self, minutes: int = 60, threshold: int = 60) -> list[FlaggedDevice]:
        """Devices sending rejects at `threshold` or more a minute within the last `minutes`."""
        import time

        with self.backend.reading() as store:
            return store.flagged_devices(int(time.time() // 60) - minutes, threshold)

    # ------------------------------------------------------------ district chains

    def add_district(self, district: str, operator: str | None = None) -> DistrictAdded:
        with self.backend.writing() as writer:
            return district_ops.add_district(writer, district, operator)

    def districts(self) -> list[DistrictChain]:
        """The city's district chains, each with the newest head the city chain anchored."""
        with self.backend.reading() as store:
            rows = store_districts.districts_anchored(store)
        return [
            {
                "district": d,
                "ledger_key": key,
                "added_at": added,
                "home": str(self.home.district_home(d).root),
                "anchored_height": height,
                "anchored_block": block,
                "anchored_at": at,
            }
            for d, key, added, height, block, at in rows
        ]

    def anchors(self) -> Anchors:
        """Each district's first key and every anchor, as the city chain's entries say (for `verify`)."""
        with self.backend.reading() as store:
            entries = store.entries_of(anchors.ADDED_ENTRY, anchors.HEAD_ENTRY)
        keys, found = anchors.anchors_in(entries)
        return {"districts": keys, "anchors": [[a.district, a.height, a.block, a.city_height] for a in found]}

    def headers(self, first: int, last: int) -> list[Header]:
        """The headers of blocks `first`..`last` (at most 10,000), oldest first."""
        if last - first >= 10_000:
            raise ValueError("at most 10,000 headers at a time")
        with self.backend.reading() as store:
            return [strict_json(h) for h in store.headers(first, last)]

    def anchor_proof(self, district: str, height: int) -> AnchorProof:
        """The city chain's first anchor of `district` at or above `height`, with its inclusion path."""
        with self.backend.reading() as store:
            row = store_districts.first_anchor(store, anchors.HEAD_ENTRY, district, height)
            if row is None:
                raise NotFound(f"district {district} block {height} is not anchored yet: try again in a few seconds")
            city_height, idx, body = row
            block = store.block(city_height)
            hashes = [
                merkle.leaf_hash(raw if raw is not None else obj.leaf_data())  # type: ignore[union-attr]
                for _, obj, raw in store.leaves(city_height)
            ]
            if block is None:
                raise ValueError(f"the city chain has no block {city_height} (run `cityledger verify`)")
            return {
                "entry": strict_json(body),
                "city_block": block["header"],
                "city_block_sig": base64.b64encode(block["sig"]).decode(),
                "city_ledger_key": store.ledger_key_at(city_height),
                "leaf_index": idx,
                "proof": [h.hex() for h in merkle.inclusion_proof(hashes, idx)],
            }

    def block_hashes(self, heights: list[int]) -> list[list[int | str]]:
        """[height, hash] of the blocks this chain holds at `heights`."""
        with self.backend.reading() as store:
            return [[h, digest] for h, digest in sorted(store.block_hashes(heights).items())]

    # ------------------------------------------------------------ billing

    def add_account(
        self, account: str, name: str, customer_class: str = "residential", operator: str | None = None
    ) -> AccountOpened:
        with self.backend.writing() as writer:
            return billing_ops.add_account(writer, account, name, customer_class, operator)

    def assign_account(self, device: str, account: str | None, operator: str) -> AccountAssigned:
        with self.backend.writing() as writer:
            return billing_ops.assign_account(writer, device, account, operator)

    def accounts(self) -> list[AccountWithDevices]:
        with self.backend.reading() as store:
            return billing_queries.accounts(store)

    def load_tariffs(self, source: str, operator: str | None = None) -> TariffsLoaded:
        with self.backend.writing() as writer:
            return billing_ops.load_tariffs(writer, source, operator)

    def tariffs(self) -> TariffsInForce:
        """The tariff version in force and its source text."""
        with self.backend.reading() as store:
            latest = billing_queries.latest_tariffs(store)
        if latest is None:
            raise NotFound("no tariffs loaded: run `cityledger init`")
        return {"version": latest[0], "source": latest[1]}

    def _book(self, store: Store) -> tuple[TariffBook, int]:
        latest = billing_queries.latest_tariffs(store)
        if latest is None:
            raise NotFound("no tariffs loaded: run `cityledger init`")
        return parse_tariffs(latest[1]), latest[0]

    def set_zone(self, space: str, zone_class: int, operator: str, from_ts: int | None = None) -> ZoneSet:
        with self.backend.writing() as writer:
            return parking_ops.set_zone(
                writer, space, zone_class, from_ts if from_ts is not None else now_ms(), operator
            )

    def lease(self, space: str, account: str | None, operator: str, from_ts: int | None = None) -> Leased:
        with self.backend.writing() as writer:
            return parking_ops.lease(writer, space, account, from_ts if from_ts is not None else now_ms(), operator)

    def checkin(self, space: str, account: str, operator: str, at: int | None = None) -> CheckedIn:
        with self.backend.writing() as writer:
            return parking_ops.checkin(writer, space, account, at if at is not None else now_ms(), operator)

    def record_replacement(
        self, device: str, ts: int, old_final: int, new_initial: int, operator: str
    ) -> ReplacementRecorded:
        with self.backend.writing() as writer:
            return billing_ops.record_replacement(writer, device, ts, old_final, new_initial, operator)

    def adjust(self, account: str, amount: str, reason: str, operator: str) -> Adjustment:
        """Sealed at once up to the approval limit; above it, requested for a second operator."""
        with self.backend.writing() as writer:
            return billing_ops.adjust(writer, account, amount, reason, operator)

    def adjustment_limit(self) -> str:
        with self.backend.writing() as writer:
            return str(billing_ops.adjustment_limit(writer))

    def set_adjustment_limit(self, amount: str, operator: str) -> AdjustmentLimitSet:
        with self.backend.writing() as writer:
            return billing_ops.set_adjustment_limit(writer, amount, operator)

    def decide_adjustment(self, id: str, operator: str, approve: bool, note: str = "") -> AdjustmentDecided:
        """A second operator approves or rejects a requested adjustment (four eyes)."""
        with self.backend.writing() as writer:
            return billing_ops.decide_adjustment(writer, id, operator, approve, note)

    def adjustment_requests(self, status: str | None = "pending") -> list[AdjustmentRequest]:
        with self.backend.writing() as writer:
            return billing_ops.adjustment_requests(writer, status)

    def bill(self, account: str, month: str) -> Bill:
        """The account's bill for a month: issued if it was, else as it stands now."""
        with self.backend.reading() as store:
            book, version = self._book(store)
            return make_bill(store, book, version, account, month)

    def roll_up(self) -> RolledUp:
        """Summarise readings sealed since the last roll-up per device and day (what keeps bills fast)."""
        with self.backend.writing() as writer:
            return billing_ops.roll_up(writer)

    def bills(self, account: str) -> list[IssuedMonth]:
        with self.backend.reading() as store:
            return billing_queries.issued_months(store, account)

    def close_month(self, month: str, progress: Progress | None = None) -> MonthClosed:
        """Issue every account's bill for `month`; bills already issued stay as they are."""
        started = now_ms()
        with self.backend.reading() as store:
            book, version = self._book(store)
            drafts, _ = close_bills(store, book, version, month, progress)
            accounts = len(billing_queries.accounts(store))
        with self.backend.writing() as writer:
            result = billing_ops.issue_bills(writer, month, drafts)
        if progress:
            progress(accounts, accounts)
        return {**result, "accounts": accounts, "seconds": (now_ms() - started) / 1000}

    def unpaid_stays(self, month: str) -> list[UnpaidStay]:
        with self.backend.reading() as store:
            book, _ = self._book(store)
            return unpaid_stays(store, book, month)

    # ------------------------------------------------------------ anomalies

    def scan_anomalies(self, lookback_days: int = 14) -> ScanSummary:
        """Run every detector now over the recent ledger; raise new anomalies, update ongoing ones."""
        from ledger.anomalies.detectors import AnomalyConfig
        from ledger.anomalies.scan import active_devices, detect_by_group

        now = now_ms()
        since = now - lookback_days * 86_400_000
        with self.backend.reading() as store:
            # A district's devices of one kind at a time, the detectors in a child process: weeks of
            # readings never sit in this (the sealing) process's memory as Python objects (ledger/anomalies/scan.py).
            devices = active_devices(store)
            findings = detect_by_group(
                devices,
                lambda ids: anomaly_queries.readings_table(store, ids, since),
                anomaly_queries.rejects(store, since),
                now,
                self._timezone(store),
                AnomalyConfig(),
                replacements=anomaly_queries.replacements(store),
                lag_ms=self.silence_margin_ms(),
            )
        with self.backend.writing() as writer, writer.lock:
            counts = investigations.record_findings(writer.store, findings, now)
        by_type: dict[str, int] = {}
        for f in findings:
            by_type[f.type] = by_type.get(f.type, 0) + 1
        return {**counts, "findings": len(findings), "by_type": by_type, "devices": len(devices)}

    def timezone(self) -> str:
        """The city's time zone: the tariff book's, or the default while there is none (ledger/defaults.py)."""
        with self.backend.reading() as store:
            return self._timezone(store)

    def _timezone(self, store: Store) -> str:
        try:
            return self._book(store)[0].timezone
        except LookupError:
            return DEFAULT_TIMEZONE

    def anomalies(
        self,
        status: str | None = None,
        type: str | None = None,
        district: str | None = None,
        districts: list[str] | None = None,
        limit: int = 500,
    ) -> list[Anomaly]:
        with self.backend.reading() as store:
            return investigations.list_anomalies(
                store, status=status, type=type, district=district, districts=districts, limit=limit
            )

    def anomaly(self, anomaly_id: str) -> AnomalyDetail:
        with self.backend.reading() as store:
            return investigations.get_anomaly(store, anomaly_id)

    def act_on_anomaly(self, anomaly_id: str, status: str, operator: str, note: str | None = None) -> AnomalyDetail:
        """ack (acknowledged), resolve (resolved) or dismiss (dismissed), with the operator's name."""
        with self.backend.writing() as writer, writer.lock:
            return investigations.transition(writer.store, anomaly_id, status, operator, note, now_ms())

    def view(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """A named read-only query from `ledger.views` (the dashboard's read side)."""
        if name not in views.VIEWS:
            raise NotFound(f"no view {name!r}")
        with self.backend.reading() as store:
            return views.VIEWS[name](store, **(params or {}))

    # ------------------------------------------------------------ people

    def set_password(self, role: str, principal: str, password: str) -> PasswordSet:
        with self.backend.writing() as writer:
            return people_ops.set_password(writer, role, principal, password)

    def add_operator(self, operator: str, name: str, districts: str) -> OperatorAdded:
        with self.backend.writing() as writer:
            return people_ops.add_operator(writer, operator, name, districts)

    def set_operator_districts(self, operator: str, districts: str, by: str) -> OperatorAdded:
        """The districts an operator looks after from now on (`districts`: d01,d02 or all), sealed under `by`."""
        with self.backend.writing() as writer:
            return people_ops.set_operator_districts(writer, operator, districts, by)

    def operators(self) -> list[Operator]:
        with self.backend.reading() as store:
            rows = people.operators(store)
        return [{"operator": o, "name": n, "districts": d.split(","), "created_at": t} for o, n, d, t in rows]

    def authenticate(self, role: str, principal: str, password: str, source: str = signin.LOCAL) -> OutcomeDoc:
        """`{"outcome": "signed_in", role, id, name, districts}`, `{"outcome": "wrong"}`, or
        `{"outcome": "throttled", "scope", "retry_after_s"}`. `source` is the caller's address
        as the dashboard saw it (ledger/people/signin.py); callers on this machine are `local`."""
        with self.backend.writing() as writer:
            return signin.outcome_as_dict(people_ops.authenticate(writer, role, principal, password, source))

    def failed_sign_ins(
        self, districts: list[str] | None = None, since_ms: int | None = None, at_least: int = signin.REPEATED
    ) -> RepeatedFailures:
        """Logins and sources with repeated failed sign-ins (default: the last hour). `districts`:
        only citizens' accounts with a device there; None: every login, for the whole city."""
        since = now_ms() - signin.HOUR_MS if since_ms is None else int(since_ms)
        with self.backend.reading() as store:
            return store_signin.repeated_failures(store, since, districts, at_least)

    def dispute(
        self,
        account: str,
        author: str,
        message: str,
        dispute_id: str | None = None,
        status: str = "open",
        subject: str | None = None,
    ) -> DisputePosted:
        with self.backend.writing() as writer:
            return people_ops.dispute(writer, dispute_id, account, author, status, message, subject)

    def disputes(self, account: str | None = None, districts: list[str] | None = None) -> list[Dispute]:
        """Disputes with their messages, oldest message first; for an account, or for districts' accounts."""
        with self.backend.reading() as store:
            rows = people.dispute_messages(store, account, districts)
        out: dict[str, Dispute] = {}
        for i, at, acct, author, status, subject, message in rows:
            d = out.setdefault(
                i, {"id": i, "account": acct, "subject": subject, "opened_at": at, "messages": [], "status": status}
            )
            d["status"] = status
            d["messages"].append({"at": at, "author": author, "status": status, "message": message})
        return sorted(out.values(), key=lambda d: d["messages"][-1]["at"], reverse=True)

    def witness_reports(self, kind: str | None = None, limit: int = 100) -> list[WitnessReportRow]:
        with self.backend.reading() as store:
            return store.witness_reports(kind, limit)

    # ------------------------------------------------ readings for the HTTP API (issue 19)

    def reading_sources(self, device: str | None = None, account: str | None = None) -> list[ReadingSource]:
        """What a readings listing holds: one device (all its readings), or the meters an account holds
        now, each from when it took it over. NotFound for an unknown device or account."""
        if (device is None) == (account is None):
            raise Refused("name a device or an account")
        with self.backend.reading() as store:
            if device is not None:
                return reading_pages.device_source(store, device)
            return reading_pages.account_sources(store, str(account))

    def readings_page(
        self,
        sources: list[ReadingSource],
        start: int,
        end: int,
        after: ReadingPosition | None = None,
        limit: int = 1000,
        as_of: int | None = None,
    ) -> ReadingPage:
        """`sources`' readings with start <= ts < end in (ts, device, seq) order after `after`, as of
        block `as_of` (None: the head now, returned for the next pages to read the same blocks)."""
        with self.backend.reading() as store:
            return reading_pages.page(store, sources, start, end, after, limit, as_of)

    def readings_count(
        self,
        sources: list[ReadingSource],
        start: int,
        end: int,
        after: ReadingPosition | None = None,
        as_of: int | None = None,
    ) -> ReadingCount:
        """How many readings `readings_page` would list in all: checked before a download starts."""
        with self.backend.reading() as store:
            return reading_pages.count(store, sources, start, end, after, as_of)

    # ------------------------------------------------ payments (issue 19)

    def record_payment(
        self, account: str, month: str, amount: str, reference: str, paid_at: int, recorded_by: str
    ) -> PaymentRecorded:
        """A provider's payment against the account's issued bill for `month` (a ledger entry), and
        the bill's balance after it. The same `reference` twice for an account is refused (Conflict)."""
        with self.backend.writing() as writer:
            return payment_ops.record_payment(writer, account, month, amount, reference, paid_at, recorded_by)

    def payments(self, account: str, month: str | None = None) -> list[PaymentRow]:
        """The account's payments (of one month, or all), oldest first."""
        with self.backend.reading() as store:
            return payment_ops.payments(store, account, month)

    def balances(self, account: str) -> list[Balance]:
        """The account's issued bills, newest first, each with its total, paid, balance and status."""
        with self.backend.reading() as store:
            return payment_ops.balances(store, account)

    def statement(self, account: str, month: str) -> Statement:
        """The account's bill for `month` (issued, or a draft as it stands) with its payments and balance."""
        payment_ops.check_month(month)
        with self.backend.reading() as store:
            book, version = self._book(store)
            return payment_ops.statement(store, make_bill(store, book, version, account, month))

    # ------------------------------------------------ metrics (issue 19)

    def metrics(self) -> LedgerMetrics:
        """What Prometheus scrapes (ledger/http/metrics.py). Totals come from the database, so they
        are right after a restart and without ingest; queue, seal times and ack latencies are the
        running ingest's, kept per block (ledger/service/health.py), empty when none runs."""
        with self.backend.reading() as store:
            counts = store.counts()
            rejected = quarantine_summary(store, since=0)["by_reason"]  # every refusal, stored or only counted
            newest = store.recent_blocks(1)
        now, health = now_ms(), self.backend.health
        ingest = health.snapshot(now) if health else None
        seal, ack = health.histograms() if health else (Histogram(SEAL_BOUNDS_S).doc(), Histogram(ACK_BOUNDS_S).doc())
        return {
            "at": now,
            "ingest_running": ingest is not None,
            "ingest_started_at": ingest.get("started_at") if ingest else None,
            "readings_sealed": counts["readings"],
            "blocks_sealed": counts["blocks"],
            "duplicates": counts["duplicates"],
            "rejected": {r["reason"]: r["count"] for r in rejected},
            "quarantine_stored": counts["quarantined"],
            "last_seal_at": newest[0]["sealed_at"] if newest else None,
            "queue_depth": ingest.get("pending") if ingest else None,
            "lag_ms": ingest.get("lag_ms") if ingest else None,
            "seal_seconds": seal,
            "ack_latency_seconds": ack,
            "jobs": {
                name: {
                    "runs": r.runs,
                    "failures_total": r.failures_total,
                    "failures_in_a_row": r.failures,
                    "last_ok_at": r.last_ok_at,
                    "last_seconds": r.last_seconds,
                }
                for name, r in jobs.load(self.home.jobs).items()
            },
        }

    # ------------------------------------------------ anomalies, devices, disputes, parking, receipts (issue 19)

    def anomaly_page(
        self,
        status: str | None = None,
        type: str | None = None,
        districts: list[str] | None = None,
        before_raised_at: int | None = None,
        before_id: str = "",
        limit: int = 100,
    ) -> list[Anomaly]:
        """Anomalies newest raised first, (raised_at, id) descending, from below (`before_raised_at`,
        `before_id`) on: the HTTP API's pages. Not the CLI's order (last changed first), in which an
        update would move a row from one page to another."""
        below = (2**62, "") if before_raised_at is None else (before_raised_at, before_id)
        with self.backend.reading() as store:
            return investigations.list_anomalies(
                store, status=status, type=type, districts=districts, limit=max(0, limit), raised_before=below
            )

    def device_page(
        self, districts: list[str] | None = None, after: str | None = None, limit: int = 100
    ) -> list[DeviceListed]:
        """Devices in id order after `after`, as `devices` shows them (the record's public part): the
        HTTP API's pages, cut here so that only a page crosses the socket."""
        with self.backend.reading() as store:
            rows = store.device_page(districts, after, max(0, limit))
        keys = ("device", "kind", "district", "account", "public_key", "status", "enrolled_at", "revoked_at", "online")
        return [cast(DeviceListed, dict(zip(keys, row))) for row in rows]

    def dispute_thread(self, dispute_id: str) -> Dispute:
        """One dispute with its messages, as `disputes` shows it; NotFound for an unknown id."""
        with self.backend.reading() as store:
            account = people.dispute_account(store, dispute_id)
        found = [d for d in self.disputes(account=account) if d["id"] == dispute_id] if account is not None else []
        if not found:
            raise NotFound(f"no dispute {dispute_id}")
        return found[0]

    def space_stays(self, space: str, month: str) -> dict[str, views.ParkingLine]:
        """A parking space's stays that start in `month`, priced as bills price them, by who pays each:
        the account's id, or "" for stays nobody pays (no lease, no check-in)."""
        with self.backend.reading() as store:
            if billing_queries.space_district(store, space) is None:
                raise NotFound(f"no parking space {space}")
            book, _ = self._book(store)
            return space_stays(store, book, space, month)

    # ------------------------------------------------ the HTTP API's callers and the sharing register

    def issue_token(
        self,
        kind: str,
        principal: str,
        scopes: list[str] | None = None,
        expires: str = f"{DEFAULT_TTL_DAYS}d",
        rate_per_minute: int = DEFAULT_RATE_PER_MINUTE,
        operator: str | None = None,
    ) -> TokenIssued:
        """A token for an agency (with its scopes) or an operator (with the operator's districts)."""
        with self.backend.writing() as writer:
            return sharing_ops.issue_token(writer, kind, principal, scopes or [], expires, rate_per_minute, operator)

    def revoke_token(self, token_id: str, operator: str | None = None) -> TokenRevoked:
        with self.backend.writing() as writer:
            return sharing_ops.revoke_token(writer, token_id, operator)

    def api_tokens(self, principal: str | None = None) -> list[TokenDoc]:
        with self.backend.reading() as store:
            return sharing_ops.token_list(store, principal)

    def api_caller(self, token: str) -> CallerDoc | None:
        """The holder of a live token and the grants made to it; None for any other text."""
        with self.backend.reading() as store:
            return sharing_ops.caller(store, token, now_ms())

    def grant_sharing(self, from_district: str, to_agency: str, dataset: str, until: str, operator: str) -> GrantDoc:
        with self.backend.writing() as writer:
            return sharing_ops.grant(writer, from_district, to_agency, dataset, until, operator)

    def revoke_sharing(self, grant_id: str, operator: str) -> GrantRevoked:
        with self.backend.writing() as writer:
            return sharing_ops.revoke_grant(writer, grant_id, operator)

    def sharing_grants(self, district: str | None = None, agency: str | None = None) -> list[GrantDoc]:
        with self.backend.reading() as store:
            return sharing_ops.grant_list(store, district, agency)

    def record_access(self, rows: list[AccessDoc]) -> None:
        with self.backend.writing() as writer:
            sharing_ops.record_access(writer.store, rows)

    def access_log(
        self,
        district: str | None,
        since: int,
        until: int,
        grants_only: bool = True,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> AccessPage:
        with self.backend.reading() as store:
            return sharing_ops.access_log(store, district, since, until, grants_only, cursor, limit)

    def idempotent_answer(self, token_id: str, key: str) -> Remembered | None:
        with self.backend.reading() as store:
            return sharing_ops.remembered(store, token_id, key)

    def remember_answer(self, token_id: str, key: str, fingerprint: str, status: int, body: str) -> None:
        with self.backend.writing() as writer:
            sharing_ops.remember(writer.store, token_id, key, fingerprint, status, body)


def local_api(home: Home, writer: LedgerWriter | None = None, health: IngestHealth | None = None) -> LedgerAPI:
    return LedgerAPI(home, InProcessBackend(writer, health) if writer else DirectBackend(home))


ProgressFn = Callable[[int, int], None]
