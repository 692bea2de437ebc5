"""API tokens, their scopes, sharing grants, and the one rule that decides a request.

Plain values and plain functions: the HTTP shell (ledger/http) asks `decide` for every
request, and the tests check the rule without a server.

A token is `clt_<id>_<secret>`: the id (public, 12 hex) finds the record, the secret (32
random bytes, base64url) is checked against its SHA-256, the only form ever stored. A
password hash (Argon2id) would cost ~90 ms a request; a token's secret is random and long,
so a fast hash is as safe (there is nothing to guess from it) and costs microseconds.

Who may read what:
- an agency's own scopes name districts and datasets, each read or write;
- an operator's token carries the operator's districts, every dataset, read and write;
- a sharing grant lets one agency read one dataset of one district until a date; a read
  made under a grant names the grant, so the granting district's access log can list it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from ledger.chain.protocol import valid_district

TOKEN_PREFIX = "clt"
DATASETS = ("readings", "bills", "payments", "anomalies", "devices", "parking", "receipts", "disputes", "sharing")
ALL = "all"
KINDS = ("agency", "operator")
DEFAULT_TTL_DAYS = 90
MAX_TTL_DAYS = 730
DEFAULT_RATE_PER_MINUTE = 600
_ID = re.compile(r"[0-9a-f]{12}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DAY_MS = 86_400_000


class ScopeError(ValueError):
    """A scope, grant or name that does not parse; the message says what was expected."""


def new_token() -> tuple[str, str, str]:
    """(token id, the token as shown once, the hash stored)."""
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}", secret_hash(secret)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not _ID.fullmatch(parts[1]) or not 20 <= len(parts[2]) <= 64:
        return None
    return parts[1], parts[2]


def secret_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, secret_hash(secret))


def check_name(name: str) -> str:
    """An agency's name: lower-case letters, digits, `.`, `_`, `-` (it appears in URLs and logs)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ScopeError(f"an agency name is 1-63 of a-z 0-9 . _ - starting with a letter or digit, not {name!r}")
    return name


def check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ScopeError(f"unknown dataset {dataset!r}: one of {', '.join(DATASETS)}")
    return dataset


@dataclass(frozen=True, slots=True)
class Scope:
    """Districts (or all) and datasets (or all) a token may read, or also write."""

    districts: tuple[str, ...]
    datasets: tuple[str, ...]
    write: bool = False

    def covers(self, district: str | None, dataset: str, write: bool) -> bool:
        if write and not self.write:
            return False
        if ALL not in self.datasets and dataset not in self.datasets:
            return False
        # A request about no one district (a list across the city) needs every district.
        return ALL in self.districts or (district is not None and district in self.districts)

    def text(self) -> str:
        return f"{','.join(self.districts)}:{','.join(self.datasets)}:{'write' if self.write else 'read'}"


def parse_scope(text: str) -> Scope:
    """`DISTRICTS:DATASETS[:read|write]`, each list comma-separated or `all`: `d01,d02:readings,bills`."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3):
        raise ScopeError(f"a scope is DISTRICTS:DATASETS[:read|write], e.g. d01:readings,bills (not {text!r})")
    mode = parts[2] if len(parts) == 3 else "read"
    if mode not in ("read", "write"):
        raise ScopeError(f"a scope's mode is read or write, not {mode!r}")
    districts = _list(parts[0], "district", valid_district)
    datasets = _list(parts[1], "dataset", lambda d: d in DATASETS, f" of {', '.join(DATASETS)}")
    return Scope(districts, datasets, mode == "write")


def _list(text: str, what: str, valid: Callable[[str], bool], of: str = "") -> tuple[str, ...]:
    items = tuple(sorted({p.strip() for p in text.split(",") if p.strip()}))
    if items == (ALL,):
        return items
    bad = [p for p in items if not valid(p)]
    if not items or bad:
        raise ScopeError(f"{what}s must be `all` or a list{of} (not {', '.join(bad) or 'nothing'})")
    return items


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as the rules see it: who holds it, what it covers, until when (never its secret)."""

    id: str
    kind: str  # agency | operator
    principal: str  # the agency's name or the operator's id
    scopes: tuple[Scope, ...]
    created_at: int
    expires_at: int
    revoked_at: int | None = None
    rate_per_minute: int = DEFAULT_RATE_PER_MINUTE

    def live(self, now: int) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True)
class Grant:
    """One district's dataset shared with one agency, read-only, for a period."""

    id: str
    from_district: str
    to_agency: str
    dataset: str
    granted_at: int
    until: int
    revoked_at: int | None = None

    def live(self, now: int) -> bool:
        return self.revoked_at is None and self.granted_at <= now < self.until


@dataclass(frozen=True, slots=True)
class Allowed:
    grant: str | None = None  # the grant the request rests on, when the token's own scope does not cover it


@dataclass(frozen=True, slots=True)
class Denied:
    reason: str


def decide(
    token: TokenRecord, grants: tuple[Grant, ...], district: str | None, dataset: str, write: bool, now: int
) -> Allowed | Denied:
    """May this token do this now? Its own scope first, then a live grant (reads of one district only)."""
    if not token.live(now):
        return Denied("the token has expired or was revoked")
    if any(s.covers(district, dataset, write) for s in token.scopes):
        return Allowed()
    if not write and district is not None and token.kind == "agency":
        for g in grants:
            if g.to_agency == token.principal and g.from_district == district and g.dataset == dataset and g.live(now):
                return Allowed(g.id)
    where = f"district {district}" if district else "every district"
    return Denied(f"this token may not {'write' if write else 'read'} {dataset} of {where}")


def districts_readable(token: TokenRecord, grants: tuple[Grant, ...], dataset: str, now: int) -> tuple[str, ...] | None:
    """The districts whose `dataset` this token may read now: None for all of them."""
    if not token.live(now):
        return ()
    found: set[str] = set()
    for s in token.scopes:
        if ALL in s.datasets or dataset in s.datasets:
            if ALL in s.districts:
                return None
            found.update(s.districts)
    if token.kind == "agency":
        found.update(
            g.from_district for g in grants if g.to_agency == token.principal and g.dataset == dataset and g.live(now)
        )
    return tuple(sorted(found))


def parse_until(text: str, now: int) -> int:
    """A grant's or token's end: `Nd` days from now, `YYYY-MM-DD` (the start of that day, UTC), or an
    RFC 3339 time (`2027-06-30T12:00:00+08:00`), in the future and at most MAX_TTL_DAYS away."""
    text = text.strip()
    if re.fullmatch(r"\d{1,4}d", text):
        days = int(text[:-1])
        if not 1 <= days <= MAX_TTL_DAYS:
            raise ScopeError(f"between 1 and {MAX_TTL_DAYS} days, not {days}")
        return now + days * DAY_MS
    try:
        if "T" in text:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError
        else:
            day = dt.date.fromisoformat(text)
            when = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    except ValueError:
        raise ScopeError(f"a date YYYY-MM-DD, a time with its offset, or days like 90d, not {text!r}") from None
    at = int(when.timestamp() * 1000)
    if at <= now:
        raise ScopeError(f"{text} is not in the future")
    if at > now + MAX_TTL_DAYS * DAY_MS:
        raise ScopeError(f"{text} is more than {MAX_TTL_DAYS} days away")
    return at
