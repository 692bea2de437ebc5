"""What the chain and the registry answer (ledger/service/writer.py and the chain part of
ledger/service/api.py): enrolments, broker logins, revocations, key rotations, write-offs,
budget rules, the ledger's status and what verifiers fetch from the live ledger.

Rows the store makes (a quarantine entry, a recent block, a write-off) are declared beside
their queries in ledger/store/store.py; the verify report and the receipt are the chain's
(ledger/chain/audit.py, ledger/chain/receipts.py), a device as shown is the registry
record's (`DevicePublic`, ledger/chain/records.py) and the budget rule is
ledger/service/budget.py's (`BudgetRule`). A block header is the chain's `Header`
(ledger/chain/blocks.py).
"""

from __future__ import annotations

from typing import NotRequired

from typing_extensions import TypedDict

from ledger.chain.blocks import Header
from ledger.chain.records import DevicePublic
from ledger.documents import document
from ledger.service.budget import BudgetRule

# ------------------------------------------------------------------ the registry


@document
class DeviceLogin(TypedDict):
    """A device's broker login, its password shown this once (`reset_device_password`, and each
    device of `enroll_devices`)."""

    device: str
    mqtt_username: str
    mqtt_password: str


@document
class Enrolled(DeviceLogin):
    """`enroll_device`: the device's broker login and the block of its enrolment entry."""

    block: str


@document
class Enrolments(TypedDict):
    """`enroll_devices`: the one block of every enrolment entry, and each device's broker login."""

    block: str
    devices: list[DeviceLogin]


@document
class ServiceLogin(TypedDict):
    """`add_witness`: a service's broker login, its password shown this once."""

    username: str
    role: str
    mqtt_password: str


@document
class Revoked(TypedDict):
    """`revoke_device`."""

    device: str
    revoked_at: int
    operator: str
    block: str


@document
class Reinstated(TypedDict):
    """`reinstate_device`: a suspension ended; `operator` when one ended it early (not ingest)."""

    device: str
    at: int
    operator: NotRequired[str]
    block: str


@document
class DeviceListed(DevicePublic):
    """One of `devices`: the registry's record as shown, and what the device last said of itself
    (`online`: its status message, "unknown" before it sent one)."""

    online: str


@document
class DeviceKeyRotated(TypedDict):
    """`rotate_device_key`: the device's new key signs its readings from `from_seq` on."""

    device: str
    public_key: str
    previous_key: str
    from_seq: int
    operator: str
    block: str


@document
class LedgerKeyRotated(TypedDict):
    """`rotate_ledger_key`: block `height` (signed by `old_key`) hands signing to `new_key`."""

    old_key: str
    new_key: str
    height: int
    block: str


@document
class WrittenOff(TypedDict):
    """`write_off`: seqs `from_seq`..`to_seq` of a device settled for good."""

    device: str
    from_seq: int
    to_seq: int
    reason: str
    operator: str
    block: str


@document
class HeldBack(TypedDict):
    """One of `held_back`: a device whose ack stays at `acked` while seqs `missing_from`..`missing_to`
    are missing and `ledgered_above` seqs above them are settled."""

    device: str
    acked: int
    missing_from: int
    missing_to: int
    ledgered_above: int


@document
class BudgetPolicySet(BudgetRule):
    """`set_budget_policy`: the rule now in force, sealed in `block`."""

    block: str


# ------------------------------------------------------------------ status


@document
class IngestState(TypedDict):
    """`status`'s `ingest`: `{"running": False}` alone when no ingest runs (or outside it);
    inside a running ingest, its view of itself (ledger/service/health.py)."""

    running: bool
    workers: NotRequired[int]
    started_at: NotRequired[int]
    lag_ms: NotRequired[int]
    last_seal_at: NotRequired[int | None]
    pending: NotRequired[int]
    silence_margin_ms: NotRequired[int]
    blocks_sealed: NotRequired[int]
    readings_sealed: NotRequired[int]


@document
class JobStatus(TypedDict):
    """`status`'s `jobs`: what a background job of the scheduler did last (ledger/service/jobs.py)."""

    job: str
    runs: int
    failures: int  # in a row, up to the last run
    failures_total: int
    last_started_at: int | None
    last_finished_at: int | None
    last_ok_at: int | None
    last_seconds: float | None
    last_error: str | None
    failing: bool


@document
class PartStatus(TypedDict):
    """`status`'s `supervisor`: what `cityledger up`'s state file says of one part
    (ledger/service/supervision.py); `state` is `unsupervised` when that `up` is gone."""

    state: str  # starting | running | backoff | stopped | unsupervised
    pid: int | None
    restarts: int
    last_restart_at: int | None
    last_exit_code: int | None
    last_exit: str | None
    last_exit_at: int | None
    started_at: int | None
    crash_looping: bool


@document
class Status(TypedDict):
    """`status`: the ledger's totals (`Store.counts`), its head, and how ingest, the scheduler's
    jobs and `cityledger up`'s parts are doing."""

    ledger_key: str
    blocks: int
    readings: int
    quarantined: int
    duplicates: int
    devices: int  # active ones
    quarantine_dropped: int
    height: int | None
    last_block_hash: str | None
    ingest: IngestState
    jobs: dict[str, JobStatus]
    supervisor: dict[str, PartStatus]  # {} when no `cityledger up` ran here
    log: LogStatus


@document
class LogStatus(TypedDict):
    """The transparency log (PROTOCOL.md section 7): its origin, its size at the head, and the
    newest checkpoint published (in home/tlog/checkpoint) with the witnesses that cosigned it."""

    origin: str | None
    size: int  # leaves in the log at the chain's head
    checkpoint_size: int | None  # the newest published checkpoint's
    cosigners: list[str]
    policy: str  # the witness quorum, in words ("none" without a policy)
    alarm: str | None  # the checkpointer's, when the policy has not been met for too long
    witnesses: dict[str, str]  # each witness's last answer, while ingest runs


# ------------------------------------------------------------------ for verifiers


@document
class ArchiveAnchor(TypedDict):
    """`archive_anchor`: where the live ledger says an archive ending at a height joins it
    (the hash of that block, the `prev` of the next), its head, and its first key."""

    first_key: str | None
    head: int | None
    hash_at: str | None
    next_prev: str | None


@document
class KeyLink(TypedDict):
    """One of `key_chain`: a header handing signing to a new key (`next_key`), with its hash and
    its signature (base64) by the key then in force."""

    hash: str
    header: Header
    sig: str
