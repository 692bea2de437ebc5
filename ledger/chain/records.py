"""The ledger's plain records: a device as the registry holds it, a reading as ledgered,
a quarantined message, and the batch ingest hands over for one transaction.

Plain values in the core, so that intake (which builds them), the store (which writes
them) and the writer (which seals them) share one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from typing_extensions import TypedDict

from ledger.chain.keyspans import KeySpan, key_for
from ledger.chain.protocol import Reading
from ledger.documents import document


@document
class DevicePublic(TypedDict):
    """A device's record as it may be shown (`DeviceRecord.public`): all but its broker password hash."""

    device: str
    kind: str
    district: str
    account: str | None
    public_key: str
    status: str  # active | suspended | revoked
    enrolled_at: int
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device: str
    kind: str
    district: str
    account: str | None
    public_key: str
    status: str  # "active" | "revoked"
    mqtt_hash: str
    enrolled_at: int
    revoked_at: int | None = None
    # The keys before `public_key` that still sign some seqs (a rotation naming `from_seq`):
    # empty for the many devices that never rotated with readings unsent.
    earlier_keys: tuple[KeySpan, ...] = ()
    key_from_seq: int = 0  # the first seq `public_key` signs

    def key_for(self, seq: int) -> str | None:
        """The key reading `seq` must be signed with, if ledgered now (ledger/chain/keyspans.py)."""
        if seq >= self.key_from_seq:
            return self.public_key
        return key_for(self.earlier_keys, seq)

    def public(self) -> DevicePublic:
        """What may be shown: everything but the broker password hash."""
        return {
            "device": self.device,
            "kind": self.kind,
            "district": self.district,
            "account": self.account,
            "public_key": self.public_key,
            "status": self.status,
            "enrolled_at": self.enrolled_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    username: str
    role: str  # "ingest" | "observer"
    mqtt_hash: str


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    received_at: int
    topic: str
    reason: str
    device: str | None
    detail: str
    payload: bytes


class LedgeredReading(NamedTuple):
    """A reading about to be sealed (one per reading ingest ledgers: a named tuple, the cheapest value)."""

    reading: Reading
    received_at: int


@dataclass
class Batch:
    """What ingest hands over for one transaction."""

    readings: list[LedgeredReading] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    witness_reports: list[tuple[str, str, str, int]] = field(default_factory=list)  # witness, kind, body, at
    rejects: dict[tuple[str, int, str], int] = field(default_factory=dict)  # (device, minute, reason) -> count
    duplicate_counts: dict[tuple[str, int], int] = field(default_factory=dict)  # (device, minute) -> count

    def __bool__(self) -> bool:
        return bool(
            self.readings
            or self.quarantine
            or self.duplicates
            or self.statuses
            or self.witness_reports
            or self.rejects
            or self.duplicate_counts
        )
