"""PROTOCOL.md section 3 as a function: each message becomes exactly one outcome.

Pure apart from the `lookup` it is handed (stored contents of already-ledgered
readings, asked once per batch), so the whole outcome table is tested without a
broker. Order of checks: shape, registry, topic, then authenticity before
content, so a forged message is `bad_signature` whatever else is wrong with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from nacl.signing import VerifyKey

from ledger.chain.protocol import (
    FUTURE_TOLERANCE_MS,
    QUARANTINE_RAW_LIMIT,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Reading,
    Reason,
    Rejected,
    parse_reading,
    parse_topic,
    verify_reading,
)
from ledger.chain.records import Batch, DeviceRecord, QuarantineRow, Readings

Key = tuple[str, int]
Lookup = Callable[[Iterable[Key]], Mapping[Key, tuple[int, int, str]]]


class Incoming(NamedTuple):
    """One MQTT message as ingest received it; `token` is what acknowledges it (one ingest process).

    Named tuples, here and for `Screened`: ingest makes them for every message, and a frozen
    dataclass costs three times as much to make.
    """

    topic: str
    payload: bytes
    received_at: int
    token: Any = None


class SeqState:
    """Which seqs of one device are ledgered: all up to `hwm`, plus the few above it.

    Memory stays proportional to the gaps, not to the history.
    """

    __slots__ = ("hwm", "above")

    def __init__(self, hwm: int = 0, above: Iterable[int] = ()) -> None:
        self.hwm = hwm
        self.above = set(above)

    def __contains__(self, seq: int) -> bool:
        return seq <= self.hwm or seq in self.above

    def add(self, seq: int) -> None:
        if seq == self.hwm + 1:
            self.hwm = seq
            while self.hwm + 1 in self.above:
                self.hwm += 1
                self.above.discard(self.hwm)
        elif seq > self.hwm:
            self.above.add(seq)

    def settle_range(self, lo: int, hi: int) -> None:
        """Seqs lo..hi written off by an operator: settled like ledgered ones, so the ack passes them."""
        if lo <= self.hwm + 1:
            self.hwm = max(self.hwm, hi)
            self.above = {s for s in self.above if s > self.hwm}
            while self.hwm + 1 in self.above:
                self.hwm += 1
                self.above.discard(self.hwm)
        else:
            self.above.update(range(lo, hi + 1))


class QuarantineCap:
    """At most `per_hour` stored quarantine entries per sending device and hour.

    A hostile but authenticated device could otherwise fill the disk with
    garbage; past the cap its rejects are only counted (reject_counts).
    """

    def __init__(self, per_hour: int = 1000, stored: Mapping[str, int] | None = None, hour: int = -1) -> None:
        self.per_hour = per_hour
        self.hour = hour  # the latest hour seen
        # Counted per (device, hour), not reset when the hour changes: a batch that straddles
        # the hour (a replay settled after later messages) goes back and forth between two.
        self.counts: dict[tuple[str, int], int] = {(device, hour): n for device, n in (stored or {}).items()}

    def admit(self, device: str, at_ms: int) -> bool:
        hour = at_ms // 3_600_000
        if hour > self.hour:
            self.hour = hour
            self.counts = {k: n for k, n in self.counts.items() if k[1] >= hour - 1}
        key = (device, hour)
        n = self.counts.get(key, 0)
        if n >= self.per_hour:
            return False
        self.counts[key] = n + 1
        return True


Status = tuple[str, str, int]  # (device, "online" | "offline", received_at)
# Rejections that depend on the registry: a worker holding an older copy of it must not have the last word.
REGISTRY_REASONS = frozenset(
    {Reason.UNKNOWN_DEVICE.value, Reason.REVOKED_DEVICE.value, Reason.TOPIC_MISMATCH.value, Reason.BAD_SIGNATURE.value}
)


class Screened(NamedTuple):
    """A reading that passed every check needing no ledger state: shape, registry, topic, signature, clock."""

    msg: Incoming
    reading: Reading
    key: str  # hex of the device key its signature verified under (ledger/chain/keyspans.py)


Screening = Union[QuarantineRow, Screened, Status, "WitnessReport"]


@dataclass(slots=True)
class ScreenedReadings:
    """Many `Screened` at once, as columns: how a worker hands its readings to the sealer."""

    readings: Readings
    topic: list[str]
    payload: list[bytes]
    key: list[str]

    def screened(self, i: int) -> Screened:
        """The i-th as a `Screened` (for the few a batch settles one by one)."""
        msg = Incoming(self.topic[i], self.payload[i], self.readings.received_at[i])
        return Screened(msg, self.readings.reading(i), self.key[i])

    def outcomes(self) -> list[Screened]:
        return [self.screened(i) for i in range(len(self.readings))]


class Screener:
    """The stateless half of section 3, and the costly one (the signature): ingest
    workers run it in parallel, each with its own copy of the registry."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, VerifyKey]] = {}

    def screen(self, msg: Incoming, registry: Mapping[str, DeviceRecord], now_ms: int) -> Screening:
        if msg.topic.startswith("city/witness/"):
            return _witness_report(msg)
        topic = parse_topic(msg.topic)
        if topic is not None and topic.leaf == "status":
            if msg.payload in (STATUS_ONLINE, STATUS_OFFLINE):
                return (topic.device, msg.payload.decode(), msg.received_at)
            return _quarantine(msg, Reason.MALFORMED, "status must be online or offline", topic.device)
        parsed = parse_reading(msg.payload)
        if isinstance(parsed, Rejected):
            return _quarantine(msg, parsed.reason, parsed.detail, topic.device if topic else None)
        reading = parsed
        rec = registry.get(reading.device)
        if rec is None:
            return _quarantine(msg, Reason.UNKNOWN_DEVICE, f"{reading.device} is not enrolled", reading.device)
        if rec.status != "active":
            return _quarantine(msg, Reason.REVOKED_DEVICE, f"{reading.device} is {rec.status}", reading.device)
        if topic is None or topic.leaf != "reading":
            return _quarantine(msg, Reason.TOPIC_MISMATCH, "not a reading topic", reading.device)
        if (topic.device, topic.kind, topic.district) != (
            reading.device,
            reading.kind,
            rec.district,
        ) or reading.kind != rec.kind:
            return _quarantine(
                msg,
                Reason.TOPIC_MISMATCH,
                f"topic {topic} does not match {rec.district}/{rec.kind}/{reading.device}",
                reading.device,
            )
        key = rec.key_for(reading.seq)
        if key is None or not self._verify(rec.device, key, reading):
            return _quarantine(msg, Reason.BAD_SIGNATURE, "signature does not verify", reading.device)
        if reading.ts > now_ms + FUTURE_TOLERANCE_MS:
            return _quarantine(msg, Reason.FUTURE_TIMESTAMP, f"ts is {reading.ts - now_ms} ms ahead", reading.device)
        return Screened(msg, reading, key)

    def _verify(self, device: str, key: str, reading: Reading) -> bool:
        """One cached VerifyKey per device: its current key, or an earlier one while its
        readings from before a rotation arrive (ledger/chain/keyspans.py)."""
        cached = self._keys.get(device)
        if cached is None or cached[0] != key:
            cached = (key, VerifyKey(bytes.fromhex(key)))
            self._keys[device] = cached
        return verify_reading(cached[1], reading)


class Intake:
    """Classifies batches against the registry and what is already ledgered."""

    def __init__(
        self,
        seqs: dict[str, SeqState],
        lookup: Lookup,
        cap: QuarantineCap | None = None,
        duplicate_cap: QuarantineCap | None = None,
    ) -> None:
        self.seqs = seqs
        self.lookup = lookup
        self.cap = cap or QuarantineCap()
        self.duplicate_cap = duplicate_cap or QuarantineCap(self.cap.per_hour)
        self.screener = Screener()

    def classify(self, messages: Iterable[Incoming], registry: Mapping[str, DeviceRecord], now_ms: int) -> Batch:
        """Screen and settle in one go: what a single ingest process does."""
        return self.settle([self.screener.screen(m, registry, now_ms) for m in messages])

    def settle(self, screened: Iterable[Screening], columns: Iterable[ScreenedReadings] = ()) -> Batch:
        """The stateful half: seqs already ledgered (duplicate or replay), the caps, the batch.

        `columns`: readings screened by workers, settled after `screened`. The screening must
        have used the registry in force now: see `recheck` otherwise.
        """
        batch = Batch()
        ledgered = batch.readings
        pending: dict[Key, int] = {}  # what this batch ledgers: its position in `ledgered`
        seen: list[Screened] = []
        for outcome in screened:
            if isinstance(outcome, QuarantineRow):
                batch.quarantine.append(outcome)
            elif isinstance(outcome, Screened):
                reading = outcome.reading
                if self._fresh(reading.device, reading.seq, pending, len(ledgered)):
                    ledgered.append(reading, outcome.msg.received_at)
                else:
                    seen.append(outcome)
            elif isinstance(outcome, WitnessReport):
                batch.witness_reports.append(outcome.row())
            else:
                batch.statuses.append(outcome)
        for cols in columns:
            base = len(ledgered)
            fresh: list[int] = []  # positions in `cols` of readings new to the ledger
            for i, (device, seq) in enumerate(zip(cols.readings.device, cols.readings.seq)):
                if self._fresh(device, seq, pending, base + len(fresh)):
                    fresh.append(i)
                else:
                    seen.append(cols.screened(i))
            ledgered.extend(cols.readings, None if len(fresh) == len(cols.readings) else fresh)
        if seen:
            stored = self.lookup(
                [(x.reading.device, x.reading.seq) for x in seen if (x.reading.device, x.reading.seq) not in pending]
            )
            for x in seen:
                reading, key = x.reading, (x.reading.device, x.reading.seq)
                at = pending.get(key)
                same = (ledgered.ts[at], ledgered.value[at], ledgered.sig[at]) if at is not None else stored.get(key)
                if same is None:  # settled but not ledgered: written off, and here it is after all
                    pending[key] = len(ledgered)
                    ledgered.append(reading, x.msg.received_at)
                elif same == (reading.ts, reading.value, reading.sig):
                    batch.duplicates.append((reading.device, reading.seq, x.msg.received_at))
                else:  # its signature verified: a device re-using a seq for something else
                    batch.quarantine.append(
                        _quarantine(
                            x.msg, Reason.REPLAY, f"seq {reading.seq} is ledgered with other contents", reading.device
                        )
                    )
        self._count_and_cap(batch)
        return batch

    def _fresh(self, device: str, seq: int, pending: dict[Key, int], position: int) -> bool:
        """Whether (device, seq) is neither ledgered nor in this batch yet; if so, it is from now on."""
        key = (device, seq)
        state = self.seqs.get(device)
        if (state is not None and seq in state) or key in pending:
            return False
        if state is None:
            state = self.seqs[device] = SeqState()
        state.add(seq)
        pending[key] = position
        return True

    def recheck(self, outcome: Screening, registry: Mapping[str, DeviceRecord], now_ms: int) -> Screening:
        """An outcome screened under an older registry, brought up to `registry`: a reading whose
        key is no longer the device's active one is screened again, and so is a rejection that
        depends on the registry (the device may have been enrolled since)."""
        if isinstance(outcome, Screened):
            rec = registry.get(outcome.reading.device)
            if rec is not None and rec.status == "active" and rec.key_for(outcome.reading.seq) == outcome.key:
                return outcome  # same key, still active (a device's district and kind never change)
            return self.screener.screen(outcome.msg, registry, now_ms)
        if isinstance(outcome, QuarantineRow) and outcome.reason in REGISTRY_REASONS:
            return self.screener.screen(Incoming(outcome.topic, outcome.payload, outcome.received_at), registry, now_ms)
        return outcome

    def _count_and_cap(self, batch: Batch) -> None:
        """Count every reject and duplicate per sender and minute; keep rows only under the caps."""
        kept_duplicates = []
        for device, seq, at in batch.duplicates:
            key = (device, at // 60_000)
            batch.duplicate_counts[key] = batch.duplicate_counts.get(key, 0) + 1
            if self.duplicate_cap.admit(device, at):
                kept_duplicates.append((device, seq, at))
        batch.duplicates = kept_duplicates
        kept = []
        for q in batch.quarantine:
            device = q.device or "?"
            reject = (device, q.received_at // 60_000, q.reason)
            batch.rejects[reject] = batch.rejects.get(reject, 0) + 1
            if self.cap.admit(device, q.received_at):
                kept.append(q)
        batch.quarantine = kept


@dataclass(frozen=True, slots=True)
class WitnessReport:
    """A witness's alarm or head, kept for operators (the broker vouches for the sender)."""

    witness: str
    kind: str
    body: str
    received_at: int

    def row(self) -> tuple[str, str, str, int]:
        return (self.witness, self.kind, self.body, self.received_at)


def _witness_report(msg: Incoming) -> WitnessReport | QuarantineRow:
    parts = msg.topic.split("/")
    try:
        body = msg.payload.decode("utf-8")
    except UnicodeDecodeError:
        body = ""
    if len(parts) != 4 or parts[3] not in ("alarm", "head") or not body or len(msg.payload) > QUARANTINE_RAW_LIMIT:
        return _quarantine(msg, Reason.MALFORMED, "not a witness report", parts[2] if len(parts) > 2 else None)
    return WitnessReport(parts[2], parts[3], body, msg.received_at)


def _quarantine(msg: Incoming, reason: Reason, detail: str, claimed: str | None) -> QuarantineRow:
    """A quarantine row attributed to the sender: the device its topic names (the broker's
    ACL lets a device publish only under its own id), not whatever the payload claims."""
    topic = parse_topic(msg.topic)
    sender = topic.device if topic else claimed
    return QuarantineRow(msg.received_at, msg.topic, reason.value, sender, detail, msg.payload[:QUARANTINE_RAW_LIMIT])
