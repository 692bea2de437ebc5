"""The dashboard's people: operators, citizens' and operators' passwords, signing in, and
disputes between a citizen and the operators.

These write tables, not the chain: a password or a sign-in count is not a fact the
city's ledger vouches for. They still go through the writer, the one owner of the file.
"""

from __future__ import annotations

import secrets
import threading

from ledger.chain.protocol import valid_device_id
from ledger.clock import now_ms
from ledger.errors import NotFound, Refused
from ledger.people import auth, signin
from ledger.service.results.people import DisputePosted, OperatorAdded, PasswordSet
from ledger.service.writer import AlreadyEnrolled, LedgerWriter, named
from ledger.store import billing_queries, people

# Argon2id takes 64 MiB and a core's worth of time per check, inside the process that seals.
# Two at a time bound both, whatever the number of callers; the rest wait their turn.
PASSWORD_CHECKS = threading.BoundedSemaphore(2)
# Checked against when a login does not exist, so that both cases take the same time.
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=2,p=1$iQjDQJYZfilM++iOX1AKyg$qH/s+n9YDd0wM4QqedfpZg+gF6BCQI4LJwndHoqPTrM"


def set_password(writer: LedgerWriter, role: str, principal: str, password: str) -> PasswordSet:
    """Set or reset a citizen's or operator's dashboard password (kept only as Argon2id)."""
    if role not in ("citizen", "operator"):
        raise Refused("role must be citizen or operator")
    try:
        hashed = auth.hash_password(password)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    with writer.lock:
        store = writer.store
        exists = (
            billing_queries.account(store, principal) is not None
            if role == "citizen"
            else people.operator(store, principal) is not None
        )
        if not exists:
            raise Refused(f"no {role} {principal}")
        people.set_password_hash(store, role, principal, hashed, now_ms())
    return {"role": role, "id": principal, "password_set": True}


def add_operator(writer: LedgerWriter, operator: str, name: str, districts: str) -> OperatorAdded:
    if not valid_device_id(operator):
        raise Refused(f"invalid operator id {operator!r}")
    try:
        scope = auth.parse_districts(districts)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    with writer.lock:
        if people.operator(writer.store, operator) is not None:
            raise AlreadyEnrolled(f"operator {operator} exists")
        people.add_operator(writer.store, operator, name, ",".join(scope), now_ms())
    return {"operator": operator, "name": name, "districts": list(scope)}


def set_operator_districts(writer: LedgerWriter, operator: str, districts: str, by: str) -> OperatorAdded:
    """Change the districts an operator looks after (a ledger entry naming who changed it). Their
    dashboard sign-ins and API tokens follow at once: both read the operator's districts when used."""
    by_operator = named(by)
    try:
        scope = auth.parse_districts(districts)
    except ValueError as exc:
        raise Refused(str(exc)) from exc
    with writer.lock:
        found = people.operator(writer.store, operator)
        if found is None:
            raise NotFound(f"no operator {operator!r}")
        writer.seal(
            {"entry": "operator_districts_set", "subject": operator, "districts": list(scope), **by_operator},
            lambda s: people.set_operator_districts(s, operator, ",".join(scope)),
        )
    return {"operator": operator, "name": found[0], "districts": list(scope)}


def authenticate(
    writer: LedgerWriter, role: str, principal: str, password: str, source: str = signin.LOCAL
) -> signin.Outcome:
    """Signed in, wrong, or throttled (ledger/people/signin.py): no hard lock that a stranger could set off.
    A throttled attempt costs no Argon2 check. The counts are read again once this attempt holds
    one of the two check slots, so a burst of parallel attempts gains at most one extra guess."""
    keys = signin.keys_for(role, principal, source)
    counts = signin.load_counts(writer.store, keys)  # a snapshot read: a flood of these never waits for a seal
    wait = signin.verdict(signin.POLICY, counts, now_ms())
    if wait is not None:
        return _signin_failed(writer, role, principal, source, keys, wait)
    with PASSWORD_CHECKS:
        with writer.lock:
            counts = signin.load_counts(writer.store, keys)
            stored = people.password_hash(writer.store, role, principal)
        wait = signin.verdict(signin.POLICY, counts, now_ms())
        if wait is not None:
            return _signin_failed(writer, role, principal, source, keys, wait)
        # an unknown login is checked against a dummy hash: the same time as a real check, so ids do not leak
        right = auth.check_password(stored or _DUMMY_HASH, password) and stored is not None
        found = _principal(writer, role, principal) if right else None
        if found is None:
            return _signin_failed(writer, role, principal, source, keys, None)
        with writer.lock:  # counted afresh under the lock: a parallel attempt may have counted meanwhile
            cleared = signin.after_success(signin.load_counts(writer.store, keys), now_ms())
            signin.save_counts(writer.store, keys, cleared, scopes=("pair",))
    return signin.SignedIn(found)


def _principal(writer: LedgerWriter, role: str, principal: str) -> auth.Principal | None:
    """Who a login with the right password is (None: an operator's login whose operator is gone)."""
    with writer.lock:
        if role == "citizen":
            return auth.Principal("citizen", principal, people.account_name(writer.store, principal) or principal)
        op = people.operator(writer.store, principal)
    if op is None:
        return None
    return auth.Principal("operator", principal, op[0], tuple(op[1].split(",")))


def _signin_failed(
    writer: LedgerWriter, role: str, principal: str, source: str, keys: signin.Keys, wait: signin.Wait | None
) -> signin.Wrong | signin.Throttled:
    """Count a wrong password (a throttled attempt counts for nothing: it only waits) and record
    the failure for operators, without the password. Counts are read and written under the
    lock, so parallel failures all count."""
    now = now_ms()
    with writer.lock:
        store = writer.store
        if wait is None:
            counts = signin.load_counts(store, keys)
            signin.save_counts(store, keys, signin.after_failure(signin.POLICY, counts, now))
            signin.forget_stale(store, signin.POLICY, now)
        added = signin.record_failure(store, now, role, principal, source, wait)
    if added:
        signin.log_failure(role, principal, source, wait)
    return signin.Wrong() if wait is None else signin.Throttled(wait.scope, wait.retry_after_s)


def dispute(
    writer: LedgerWriter,
    dispute_id: str | None,
    account: str,
    author: str,
    status: str,
    message: str,
    subject: str | None = None,
) -> DisputePosted:
    """Append to a dispute (a new one when `dispute_id` is None): a citizen's message or an operator's answer."""
    if not message.strip():
        raise Refused("a dispute needs a message")
    if status not in ("open", "answered", "closed"):
        raise Refused("status must be open, answered or closed")
    with writer.lock:
        if dispute_id is None:
            dispute_id = f"dsp-{secrets.token_hex(5)}"
        elif people.dispute_account(writer.store, dispute_id) != account:
            raise Refused(f"no dispute {dispute_id} for account {account}")
        people.add_dispute_message(writer.store, dispute_id, now_ms(), account, author, status, subject, message[:4000])
    return {"id": dispute_id, "status": status}
