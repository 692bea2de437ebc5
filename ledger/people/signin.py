"""Sign-in throttling: who may try a password now, and how long everyone else must wait.

Issue 15: a hard lock after five failures let anyone lock any citizen out, because
account ids are sequential. Instead each failed attempt makes the next one wait a
little longer, on three counts at once (docs/security.md, "Sign-in cannot be used
against citizens"):

- the *pair* (this login from this source): a guesser at one address slows down
  to one try every 15 minutes; a success from there clears it;
- the *account* (this login from anywhere): bounds guessing spread over many
  addresses, but its wait is capped at a minute, so a stranger can hold a citizen
  back for at most that long after each of their own (themselves throttled) tries;
- the *source* (this address, any login): slows a stranger walking through the
  sequential ids, with a higher cap (30 minutes).

A source from which this login signed in within 30 days is *known*: there only the
pair counts, so nobody elsewhere can keep a citizen out of their usual place.
Unknown logins are counted exactly like real ones, so no answer tells which exist.

The top half is pure (counts in, a verdict out, a fake clock in tests); the bottom
half keeps counts and failures in the store (ledger/store/signin.py), for the single
writer to call under its lock.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from typing_extensions import TypedDict

from ledger.documents import document
from ledger.people.auth import Principal
from ledger.store import signin as stored
from ledger.store.signin import ANY_LOGIN

if TYPE_CHECKING:
    from ledger.store.store import Store

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
LOCAL = "local"  # a caller on this machine (the CLI, or a browser the dashboard sees through loopback)
MAX_FIELD = 64  # ids and sources are stored and logged at most this long: nobody fills the table with one
RETAIN_MS = 90 * 24 * 60 * 60 * 1000  # failed sign-ins are kept this long for operators
REPEATED = 3  # the operators' console lists logins and sources with at least this many failures in an hour

log = logging.getLogger("cityledger.signin")


# ---------------------------------------------------------------- the policy (pure)


@dataclass(frozen=True)
class Rule:
    """`free` failures cost nothing; then each waits `base_ms`, doubling, up to `cap_ms`.
    A count with no failure for `forget_ms` starts again from zero."""

    free: int
    base_ms: int
    cap_ms: int
    forget_ms: int

    def wait_ms(self, failures: int) -> int:
        """How long after the last of `failures` failures the next attempt must wait."""
        if failures < self.free:
            return 0
        doublings = failures - self.free
        if doublings >= 62 or self.base_ms << doublings >= self.cap_ms:
            return self.cap_ms
        return self.base_ms << doublings


@dataclass(frozen=True)
class Count:
    """One key's failures since it was last cleared, and when it last failed or (pairs) succeeded."""

    failures: int = 0
    last_failure_ms: int = 0
    last_success_ms: int = 0


@dataclass(frozen=True)
class Policy:
    pair: Rule = Rule(free=3, base_ms=SECOND_MS, cap_ms=15 * MINUTE_MS, forget_ms=DAY_MS)
    account: Rule = Rule(free=5, base_ms=SECOND_MS, cap_ms=MINUTE_MS, forget_ms=HOUR_MS)
    source: Rule = Rule(free=20, base_ms=SECOND_MS, cap_ms=30 * MINUTE_MS, forget_ms=DAY_MS)
    known_ms: int = 30 * DAY_MS  # a success from a source makes it known for this long


POLICY = Policy()
SCOPES = ("pair", "account", "source")


@dataclass(frozen=True)
class Keys:
    """Where one attempt is counted: `citizen:hh-0001@203.0.113.7`, `citizen:hh-0001`, `203.0.113.7`."""

    pair: str
    account: str
    source: str

    def of(self, scope: str) -> str:
        return {"pair": self.pair, "account": self.account, "source": self.source}[scope]


@dataclass(frozen=True)
class Counts:
    pair: Count = Count()
    account: Count = Count()
    source: Count = Count()

    def of(self, scope: str) -> Count:
        return {"pair": self.pair, "account": self.account, "source": self.source}[scope]


@dataclass(frozen=True)
class Wait:
    """Not now: `scope` is the count that holds the attempt back longest."""

    scope: str
    retry_after_ms: int

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.retry_after_ms / SECOND_MS))


def clip(text: str) -> str:
    """What is stored and logged of a caller's text: bounded, whatever they send."""
    return str(text)[:MAX_FIELD]


def source_key(source: str) -> str:
    """The address an attempt is counted against. An IPv6 host usually holds a whole /64,
    so the /64 is one source; anything that is not an address counts as itself."""
    text = clip(source.strip()) or LOCAL
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def keys_for(role: str, principal: str, source: str) -> Keys:
    login = f"{clip(role)}:{clip(principal)}"
    where = source_key(source)
    return Keys(pair=f"{login}@{where}", account=login, source=where)


def live(rule: Rule, count: Count, now_ms: int) -> Count:
    """The count as it stands now: failures older than `forget_ms` are forgotten."""
    if count.failures and now_ms - count.last_failure_ms >= rule.forget_ms:
        return replace(count, failures=0)
    return count


def known(policy: Policy, pair: Count, now_ms: int) -> bool:
    """This login signed in from this source lately: strangers elsewhere do not hold it back."""
    return pair.last_success_ms > 0 and now_ms - pair.last_success_ms < policy.known_ms


def retry_after_ms(rule: Rule, count: Count, now_ms: int) -> int:
    current = live(rule, count, now_ms)
    return max(0, current.last_failure_ms + rule.wait_ms(current.failures) - now_ms)


def verdict(policy: Policy, counts: Counts, now_ms: int) -> Wait | None:
    """None: try the password. Else how long to wait, and which count says so."""
    scopes = ("pair",) if known(policy, counts.pair, now_ms) else SCOPES
    waits = [Wait(s, retry_after_ms(getattr(policy, s), counts.of(s), now_ms)) for s in scopes]
    longest = max(waits, key=lambda w: w.retry_after_ms)
    return longest if longest.retry_after_ms > 0 else None


def after_failure(policy: Policy, counts: Counts, now_ms: int) -> Counts:
    """Every count goes up by one; each wait grows from its own count."""

    def bump(scope: str) -> Count:
        c = live(getattr(policy, scope), counts.of(scope), now_ms)
        return replace(c, failures=c.failures + 1, last_failure_ms=now_ms)

    return Counts(pair=bump("pair"), account=bump("account"), source=bump("source"))


def after_success(counts: Counts, now_ms: int) -> Counts:
    """The pair is cleared and its source becomes known. The account's and the source's counts
    stay: a guesser who owns one login must not clear their address by signing in to it."""
    return replace(counts, pair=Count(failures=0, last_failure_ms=0, last_success_ms=now_ms))


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class SignedIn:
    principal: Principal


@dataclass(frozen=True)
class Wrong:
    """The id and password do not match: a wrong password or an unknown id, alike."""


@dataclass(frozen=True)
class Throttled:
    """Not checked: too many failures lately. `scope` is pair, account or source."""

    scope: str
    retry_after_s: int


Outcome = SignedIn | Wrong | Throttled


@document
class SignedInDoc(TypedDict):
    """`SignedIn` as JSON: the principal's fields (auth.PrincipalDoc) at the top."""

    outcome: Literal["signed_in"]
    role: str
    id: str
    name: str
    districts: list[str]


@document
class WrongDoc(TypedDict):
    outcome: Literal["wrong"]


@document
class ThrottledDoc(TypedDict):
    outcome: Literal["throttled"]
    scope: str  # pair | account | source
    retry_after_s: int


OutcomeDoc = SignedInDoc | WrongDoc | ThrottledDoc


def outcome_as_dict(outcome: Outcome) -> OutcomeDoc:
    """The JSON form the API returns; a success carries the principal's fields at the top."""
    if isinstance(outcome, SignedIn):
        return {"outcome": "signed_in", **outcome.principal.as_dict()}
    if isinstance(outcome, Throttled):
        return {"outcome": "throttled", "scope": outcome.scope, "retry_after_s": outcome.retry_after_s}
    return {"outcome": "wrong"}


def throttle_message(scope: str, retry_after_s: int) -> str:
    """What the sign-in page says: plain about the wait, silent about whether the id exists."""
    wait = wait_words(retry_after_s)
    if scope == "source":
        return f"Too many failed sign-ins from here. Try again in {wait}."
    if scope == "account":
        return f"Too many failed attempts for this account. Try again in {wait}."
    return f"Too many failed attempts for this account from here. Try again in {wait}."


def wait_words(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


# ---------------------------------------------------------------- storage (the writer calls these under its lock)


def load_counts(store: Store, keys: Keys) -> Counts:
    found = {scope: Count(*c) for scope, c in stored.load_counts(store, keys.pair, keys.account, keys.source).items()}
    return Counts(**{s: found.get(s, Count()) for s in SCOPES})


def save_counts(store: Store, keys: Keys, counts: Counts, scopes: tuple[str, ...] = SCOPES) -> None:
    for scope in scopes:
        c = counts.of(scope)
        stored.save_count(store, scope, keys.of(scope), c.failures, c.last_failure_ms, c.last_success_ms)


def forget_stale(store: Store, policy: Policy, now_ms: int) -> None:
    """Counts that no longer hold anyone back and mark no known source go, so invented ids do not
    pile up; failures older than RETAIN_MS go too."""
    longest = max(policy.pair.forget_ms, policy.account.forget_ms, policy.source.forget_ms)
    stored.forget_stale(store, now_ms - longest, now_ms - policy.known_ms, now_ms - RETAIN_MS)


def record_failure(store: Store, at_ms: int, role: str, principal: str, source: str, throttled: Wait | None) -> bool:
    """A failed sign-in for the operators (never the password). A wrong password is a row of its own
    (at most two Argon2 checks run at once, which bounds them); throttled attempts cost nothing, so
    they are counted per login, source and minute in one row, and a throttled source's under `*`.
    True when a row was added (the caller logs it), False when an existing row was counted up."""
    login = ANY_LOGIN if throttled is not None and throttled.scope == "source" else clip(principal)
    minute = None if throttled is None else at_ms - at_ms % MINUTE_MS
    return stored.record_failure(store, at_ms, clip(role), login, clip(source), minute)


def log_failure(role: str, principal: str, source: str, throttled: Wait | None) -> None:
    """One line per stored row for operators; ids and sources quoted, so nobody can forge a line."""
    if throttled is None:
        log.warning("failed sign-in: %s %r from %r (wrong id or password)", clip(role), clip(principal), clip(source))
    else:
        log.warning(
            "failed sign-in: %s %r from %r throttled (%s, %d s to wait; more this minute are counted, not logged)",
            clip(role),
            clip(principal),
            clip(source),
            throttled.scope,
            throttled.retry_after_s,
        )
