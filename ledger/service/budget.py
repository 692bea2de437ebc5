"""Per-device message budgets: one device cannot starve the others (issue 14, point 5).

Signature verification (about 50 µs) and parsing are what an authenticated but
hostile device makes ingest spend. The budget is checked before either, in the
MQTT receive path, on the device id the topic names (the broker's ACL lets a
device publish only under its own id, so the topic is who sent it):

- `Budget`: a token bucket per device (`rate` messages a second, up to `burst`
  at once). A message over budget is neither queued, parsed, verified nor
  stored; it is only counted per (device, minute, reason) in `Drops`, which the
  sealer writes to `reject_counts` (reason `over_budget`, or `suspended` for a
  device whose suspension the broker has not yet enforced).
- `Streaks`: which devices have been over budget for `suspend_after_min`
  minutes without a break. A break is a pause long enough for the bucket to
  refill completely (`burst / rate` seconds, at least one second).
- `BudgetPolicy`: the operator's rule, sealed in the chain as a `budget_policy`
  entry; each suspension entry names it.

Pure apart from the clocks handed in; `Drops` is the one object shared by two
threads (the receive path adds, the sealer takes), so it alone has a lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Any

from typing_extensions import TypedDict

from ledger.chain.protocol import parse_topic
from ledger.documents import document

OVER_BUDGET = "over_budget"  # the device sent faster than its budget: counted, never verified
SUSPENDED = "suspended"  # a message of a suspended device that reached ingest before the broker cut it off

Count = tuple[str, int, str]  # (device, minute, reason), as Batch.rejects keys them
Span = tuple[int, int, int]  # (first ms, last ms, messages) of a device's over-budget messages


@document
class BudgetRule(TypedDict):
    """A budget rule as entries name it and `budget_policy` answers: JSON numbers (integers, or
    decimal strings for fractions), and the block that set them (None: the defaults)."""

    rate: int | str
    burst: int | str
    suspend_after_min: int | str
    suspend_for_min: int | str
    policy_height: int | None


@dataclass(frozen=True)
class BudgetPolicy:
    """The operator's rule. Minutes are the one unit for time (fractions allowed, for tests).

    The defaults leave an honest device far inside its budget: a meter reports about
    once a second, and re-sending an outbox backlog after an outage the agent sends
    at most `sends_per_tick` (50) readings per 0.2 s tick, 250 a second.
    """

    rate: float = 500.0  # messages per second per device, sustained
    burst: float = 2000.0  # messages at once (what a full bucket holds): 4 s at the rate
    suspend_after_min: float = 1.0  # over budget this long without a break: suspended
    suspend_for_min: float = 60.0  # for this long, then reinstated
    height: int | None = None  # the block of the `budget_policy` entry in force; None: these defaults

    def __post_init__(self) -> None:
        for name in ("rate", "burst", "suspend_after_min", "suspend_for_min"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")

    @property
    def quiet_ms(self) -> int:
        """A pause this long ends an over-budget streak: the bucket is full again."""
        return max(1000, round(self.burst / self.rate * 1000))

    @property
    def suspend_after_ms(self) -> int:
        return round(self.suspend_after_min * 60_000)

    @property
    def suspend_for_ms(self) -> int:
        return round(self.suspend_for_min * 60_000)

    def share(self, workers: int) -> BudgetPolicy:
        """A worker's part of each device's budget: the broker spreads a shared subscription's
        messages over its members one by one, so each sees about 1/workers of a device's."""
        if workers <= 1:
            return self
        return replace(self, rate=self.rate / workers, burst=max(1.0, self.burst / workers))

    def rule(self) -> BudgetRule:
        """What a suspension entry names: the numbers, and the block that set them (None: the defaults)."""
        return {
            "rate": _num(self.rate),
            "burst": _num(self.burst),
            "suspend_after_min": _num(self.suspend_after_min),
            "suspend_for_min": _num(self.suspend_for_min),
            "policy_height": self.height,
        }

    def entry(self, at: int) -> dict[str, Any]:
        """The ledger entry that sets this policy (JSON numbers: integers, or decimal strings)."""
        rule: dict[str, Any] = dict(self.rule())
        del rule["policy_height"]
        return {"entry": "budget_policy", **rule, "at": at}

    @classmethod
    def from_entry(cls, body: dict[str, Any], height: int) -> BudgetPolicy:
        return cls(
            float(body["rate"]),
            float(body["burst"]),
            float(body["suspend_after_min"]),
            float(body["suspend_for_min"]),
            height,
        )


def _num(x: float) -> int | str:
    """The protocol has no floats: whole numbers as integers, others as decimal strings."""
    return int(x) if float(x).is_integer() else repr(float(x))


def device_of(topic: str) -> str | None:
    """The device a topic names (None for anything else, e.g. a witness's report)."""
    parsed = parse_topic(topic)
    return parsed.device if parsed else None


class Drops:
    """Messages refused by a budget, counted per (device, minute, reason); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[Count, int] = {}
        self.spans: dict[str, list[int]] = {}  # over_budget only: device -> [first ms, last ms, n]

    def add(self, device: str, at_ms: int, reason: str, n: int = 1) -> None:
        with self._lock:
            key = (device, at_ms // 60_000, reason)
            self.counts[key] = self.counts.get(key, 0) + n
            if reason == OVER_BUDGET:
                span = self.spans.get(device)
                if span is None:
                    self.spans[device] = [at_ms, at_ms, n]
                else:
                    span[0], span[1], span[2] = min(span[0], at_ms), max(span[1], at_ms), span[2] + n

    def merge(self, counts: dict[Count, int], spans: dict[str, Span]) -> None:
        """What another process (an ingest worker) took from its own `Drops`."""
        with self._lock:
            for key, n in counts.items():
                self.counts[key] = self.counts.get(key, 0) + n
            for device, (first, last, n) in spans.items():
                span = self.spans.get(device)
                if span is None:
                    self.spans[device] = [first, last, n]
                else:
                    span[0], span[1], span[2] = min(span[0], first), max(span[1], last), span[2] + n

    def take(self) -> tuple[dict[Count, int], dict[str, Span]]:
        """Everything counted since the last take, and reset."""
        with self._lock:
            counts, spans = self.counts, self.spans
            self.counts, self.spans = {}, {}
        return counts, {d: (s[0], s[1], s[2]) for d, s in spans.items()}

    def __bool__(self) -> bool:
        return bool(self.counts)


class Budget:
    """Token buckets per device, checked on the receive path before a message is queued.

    Called from one thread (paho's network thread, or a worker's loop); `suspended` is
    replaced whole from other threads, never edited in place.
    """

    def __init__(self, policy: BudgetPolicy | None = None) -> None:
        self.policy = policy or BudgetPolicy()
        self.buckets: dict[str, list[float]] = {}  # device -> [tokens, at (monotonic s)]
        self.suspended: frozenset[str] = frozenset()
        self.drops = Drops()

    def set_policy(self, policy: BudgetPolicy) -> None:
        self.policy = policy  # buckets keep their tokens; the new rate and burst apply from now

    def admit(self, topic: str, now_s: float, at_ms: int) -> str | None:
        """None if the message may go on; else the reason it was counted and dropped."""
        device = device_of(topic)
        if device is None:
            return None  # not a device's topic: a service's (witness reports), which the ACL confines
        if device in self.suspended:
            self.drops.add(device, at_ms, SUSPENDED)
            return SUSPENDED
        policy = self.policy
        bucket = self.buckets.get(device)
        if bucket is None:
            bucket = self.buckets[device] = [policy.burst, now_s]
        tokens = min(policy.burst, bucket[0] + (now_s - bucket[1]) * policy.rate)
        bucket[1] = now_s
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        self.drops.add(device, at_ms, OVER_BUDGET)
        return OVER_BUDGET


@dataclass
class Streak:
    start: int  # ms of the first over-budget message of the streak
    last: int  # ms of the latest
    messages: int


class Streaks:
    """The sealer's view: which devices have been over budget for `suspend_after_min` minutes."""

    def __init__(self) -> None:
        self.streaks: dict[str, Streak] = {}

    def observe(self, spans: dict[str, Span], policy: BudgetPolicy) -> None:
        for device, (first, last, n) in spans.items():
            s = self.streaks.get(device)
            if s is None or first - s.last > policy.quiet_ms:
                self.streaks[device] = Streak(first, last, n)
            else:
                s.last, s.messages = max(s.last, last), s.messages + n

    def due(self, now_ms: int, policy: BudgetPolicy) -> list[tuple[str, Streak]]:
        """Devices to suspend now; streaks that ended (a pause of `quiet_ms`) are forgotten."""
        out = []
        for device, s in list(self.streaks.items()):
            if now_ms - s.last > policy.quiet_ms:
                del self.streaks[device]
            elif s.last - s.start >= policy.suspend_after_ms:
                out.append((device, s))
        return out

    def forget(self, device: str) -> None:
        self.streaks.pop(device, None)
