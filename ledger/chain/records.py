"""The ledger's plain records: a device as the registry holds it, a reading as ledgered,
a quarantined message, and the batch ingest hands over for one transaction.

Plain values in the core, so that intake (which builds them), the store (which writes
them) and the writer (which seals them) share one definition without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

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
    """A reading about to be sealed, with when ingest received it."""

    reading: Reading
    received_at: int


@dataclass(slots=True)
class Readings:
    """Readings about to be sealed, as columns, in ledger order.

    Ingest seals about 20,000 readings a second: as columns, a worker's screened readings
    reach the Merkle leaves, the readings table and the acks without an object per reading
    in the sealer (docs/benchmarks.md, issue 17). `of` and iterating give the rows.
    """

    device: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    value: list[int] = field(default_factory=list)
    sig: list[str] = field(default_factory=list)
    sig_bytes: list[bytes] = field(default_factory=list)
    leaf: list[bytes] = field(default_factory=list)  # each one's canonical JSON (PROTOCOL.md section 4)
    received_at: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Iterable[LedgeredReading]) -> Readings:
        out = cls()
        for reading, received_at in rows:
            out.append(reading, received_at)
        return out

    def append(self, r: Reading, received_at: int) -> None:
        self.device.append(r.device)
        self.kind.append(r.kind)
        self.seq.append(r.seq)
        self.ts.append(r.ts)
        self.value.append(r.value)
        self.sig.append(r.sig)
        self.sig_bytes.append(r.sig_bytes())
        self.leaf.append(r.leaf_data())
        self.received_at.append(received_at)

    def extend(self, other: Readings, only: list[int] | None = None) -> None:
        """Add `other`'s readings, or those at the positions `only` names."""
        for name in self.__slots__:
            column: list[Any] = getattr(other, name)
            getattr(self, name).extend(column if only is None else [column[i] for i in only])

    def reading(self, i: int) -> Reading:
        return Reading.trusted(
            device=self.device[i],
            kind=self.kind[i],
            seq=self.seq[i],
            ts=self.ts[i],
            value=self.value[i],
            sig=self.sig[i],
            sig_bytes=self.sig_bytes[i],
            leaf=self.leaf[i],
        )

    def __len__(self) -> int:
        return len(self.device)

    def __getitem__(self, i: int) -> LedgeredReading:
        return LedgeredReading(self.reading(i), self.received_at[i])

    def __iter__(self) -> Iterator[LedgeredReading]:
        return (self[i] for i in range(len(self)))


@dataclass
class Batch:
    """What ingest hands over for one transaction.

    `readings` may be given as rows (`LedgeredReading`s, as tests and tools build them): they
    are kept as columns.
    """

    readings: Readings = field(default_factory=Readings)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    witness_reports: list[tuple[str, str, str, int]] = field(default_factory=list)  # witness, kind, body, at
    rejects: dict[tuple[str, int, str], int] = field(default_factory=dict)  # (device, minute, reason) -> count
    duplicate_counts: dict[tuple[str, int], int] = field(default_factory=dict)  # (device, minute) -> count

    def __post_init__(self) -> None:
        rows: object = self.readings
        if not isinstance(rows, Readings):
            self.readings = Readings.of(cast(Iterable[LedgeredReading], rows))

    def __bool__(self) -> bool:
        return bool(
            len(self.readings)
            or self.quarantine
            or self.duplicates
            or self.statuses
            or self.witness_reports
            or self.rejects
            or self.duplicate_counts
        )
