"""Billing's writes: accounts, tariff versions, meter replacements, corrections (with four
eyes above a limit), the daily roll-up and issuing a month's bills.

Nothing billed is edited: a correction is a new `adjustment` entry that the next bill
shows, and an issued bill is never issued again.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, Literal

from ledger.billing import rules
from ledger.billing.bills import Bill
from ledger.billing.tariffs import parse_tariffs
from ledger.chain.protocol import canonical_json, valid_device_id
from ledger.chain.records import Batch
from ledger.clock import now_ms
from ledger.errors import Refused
from ledger.service.results.billing import (
    AccountAssigned,
    AccountOpened,
    Adjustment,
    AdjustmentDecided,
    AdjustmentLimitSet,
    BillsIssued,
    ReplacementRecorded,
    RolledUp,
    TariffsLoaded,
)
from ledger.service.writer import AlreadyEnrolled, LedgerWriter, checked_operator, named
from ledger.store import accounts, billing_queries, device_days
from ledger.store.accounts import AdjustmentRequest
from ledger.store.store import Store

DEFAULT_ADJUSTMENT_LIMIT = Decimal("1000.00")  # yuan; above it a correction needs a second operator


def add_account(
    writer: LedgerWriter, account: str, name: str, customer_class: str = "residential", operator: str | None = None
) -> AccountOpened:
    by = named(operator)
    if not valid_device_id(account):
        raise Refused(f"invalid account id {account!r} (letters, digits, . _ -)")
    if customer_class not in ("residential", "non-residential"):
        raise Refused("class must be residential or non-residential")
    with writer.lock:  # the check and the insert as one step: two callers cannot both pass the check
        if billing_queries.account(writer.store, account) is not None:
            raise AlreadyEnrolled(f"account {account} exists")
        at = now_ms()
        sealed = writer.seal(
            {"entry": "account_opened", "account": account, "class": customer_class, **by, "at": at},
            lambda s: accounts.add_account(s, account, name, customer_class, at),
        )
    return {"account": account, "name": name, "class": customer_class, "block": sealed.hash}


def assign_account(writer: LedgerWriter, device: str, account: str | None, operator: str) -> AccountAssigned:
    """A meter changes hands (a household moves in): recorded in the chain, billed from now on."""
    operator = checked_operator(operator)
    with writer.lock:
        writer.require_account(account)
        rec = writer.store.device(device)
        if rec is None:
            raise Refused(f"unknown device {device}")
        sealed = writer.seal(
            {"entry": "device_account", "device": device, "account": account, "operator": operator},
            lambda s: s.set_account(device, account),
        )
        writer.registry = {**writer.registry, device: replace(rec, account=account)}
    return {"device": device, "account": account, "operator": operator, "block": sealed.hash}


def load_tariffs(writer: LedgerWriter, source: str, operator: str | None = None) -> TariffsLoaded:
    """Keep a new tariff version; bills already issued keep the prices they were issued with."""
    by = named(operator)
    parse_tariffs(source)  # refuse a file that cannot be used before anything is written
    digest = hashlib.sha256(source.encode()).hexdigest()
    with writer.lock:
        latest = billing_queries.latest_tariffs(writer.store)
        if latest is not None and latest[2] == digest:
            return {"version": latest[0], "sha256": digest, "changed": False}
        version = latest[0] + 1 if latest else 1
        writer.seal(
            {"entry": "tariffs_loaded", "version": version, "sha256": digest, **by},
            lambda s: accounts.add_tariffs(s, version, now_ms(), source, digest),
        )
    return {"version": version, "sha256": digest, "changed": True}


def record_replacement(
    writer: LedgerWriter, device: str, ts: int, old_final: int, new_initial: int, operator: str
) -> ReplacementRecorded:
    operator = checked_operator(operator)
    with writer.lock:
        rec = writer.store.device(device)
        if rec is None or rec.kind == "parking":
            raise Refused(f"{device} is not an enrolled meter")
        sealed = writer.seal(
            {
                "entry": "meter_replaced",
                "device": device,
                "ts": ts,
                "old_final": old_final,
                "new_initial": new_initial,
                "operator": operator,
            },
            lambda s: accounts.add_replacement(s, device, ts, old_final, new_initial, operator, now_ms()),
        )
    return {"device": device, "ts": ts, "block": sealed.hash}


def adjust(writer: LedgerWriter, account: str, amount: str, reason: str, operator: str) -> Adjustment:
    """Append a refund, credit or re-bill; it appears on the account's next bill. Nothing is edited.

    Above the approval limit it is only requested: sealed as `adjustment_requested`, it
    waits for a second operator (`decide_adjustment`) before it is sealed (four eyes).
    """
    operator = checked_operator(operator)
    value = _amount(amount)
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise Refused("an adjustment needs a reason")
    adj_id = f"adj-{secrets.token_hex(6)}"
    with writer.lock:
        writer.require_account(account)
        at, height, limit = now_ms(), writer.height + 1, adjustment_limit(writer)
        if abs(value) > limit:
            writer.seal(
                {
                    "entry": "adjustment_requested",
                    "id": adj_id,
                    "account": account,
                    "amount": str(value),
                    "reason": reason,
                    "operator": operator,
                    "limit": str(limit),
                    "at": at,
                },
                lambda s: accounts.request_adjustment(s, adj_id, account, str(value), reason, operator, at, height),
            )
            return {
                "id": adj_id,
                "account": account,
                "amount": str(value),
                "status": "pending",
                "limit": str(limit),
                "created_at": at,
            }
        writer.seal(
            _adjustment_entry(adj_id, account, value, reason, operator, at),
            lambda s: accounts.add_adjustment(s, adj_id, account, str(value), reason, operator, at, height),
        )
    return {"id": adj_id, "account": account, "amount": str(value), "status": "sealed", "created_at": at}


def _amount(amount: str) -> Decimal:
    try:
        return rules.parse_amount(amount)
    except ValueError as exc:
        raise Refused(str(exc)) from exc


def _adjustment_entry(
    adj_id: str, account: str, value: Decimal, reason: str, operator: str, at: int, approved_by: str | None = None
) -> dict[str, Any]:
    approval = {"approved_by": approved_by} if approved_by else {}
    return {
        "entry": "adjustment",
        "id": adj_id,
        "account": account,
        "amount": str(value),
        "reason": reason,
        "operator": operator,
        **approval,
        "at": at,
    }


def adjustment_limit(writer: LedgerWriter) -> Decimal:
    """Above this (either sign) an adjustment needs a second operator: the latest `adjustment_limit`
    entry, else DEFAULT_ADJUSTMENT_LIMIT."""
    latest = writer.store.latest_entry("adjustment_limit")
    return DEFAULT_ADJUSTMENT_LIMIT if latest is None else Decimal(latest[1]["amount"])


def set_adjustment_limit(writer: LedgerWriter, amount: str, operator: str) -> AdjustmentLimitSet:
    """Seal a new approval limit; adjustments already requested keep waiting for approval."""
    operator = checked_operator(operator)
    limit = _amount(amount)
    if limit < 0:
        raise Refused("the approval limit is an amount of yuan above zero")
    sealed = writer.seal({"entry": "adjustment_limit", "amount": str(limit), "operator": operator, "at": now_ms()})
    return {"limit": str(limit), "operator": operator, "block": sealed.hash}


def decide_adjustment(
    writer: LedgerWriter, adj_id: str, operator: str, approve: bool, note: str = ""
) -> AdjustmentDecided:
    """A second operator approves (the adjustment is sealed with the approval, one block) or
    rejects a requested adjustment. The requester may withdraw it, never approve it."""
    operator = checked_operator(operator)
    with writer.lock:
        request = accounts.adjustment_request(writer.store, adj_id)
        if request is None:
            raise Refused(f"no requested adjustment {adj_id}")
        account, amount, reason, requester, status = request
        if status != "pending":
            raise Refused(f"adjustment {adj_id} is already {status}")
        if approve and operator == requester:
            raise Refused(f"{operator} requested {adj_id}: another operator must approve it")
        at, height = now_ms(), writer.height + 1
        decided: Literal["approved", "rejected"] = "approved" if approve else "rejected"
        entries = [
            {
                "entry": f"adjustment_{decided}",
                "id": adj_id,
                "operator": operator,
                "requested_by": requester,
                **({"note": note} if note else {}),
                "at": at,
            }
        ]
        if approve:
            entries.append(_adjustment_entry(adj_id, account, Decimal(amount), reason, requester, at, operator))

        def record(s: Store) -> None:
            accounts.decide_adjustment_request(s, adj_id, decided, operator, at)
            if approve:
                accounts.add_adjustment(s, adj_id, account, amount, reason, requester, at, height)

        sealed = writer.commit(Batch(), entries, also=record)
    assert sealed is not None
    return {
        "id": adj_id,
        "status": decided,
        "operator": operator,
        "requested_by": requester,
        "account": account,
        "amount": amount,
        "block": sealed.hash,
    }


def adjustment_requests(writer: LedgerWriter, status: str | None = "pending") -> list[AdjustmentRequest]:
    with writer.lock:
        return accounts.adjustment_requests(writer.store, status)


def roll_up(
    writer: LedgerWriter, max_readings: int = 500_000, progress: Callable[[int, int], None] | None = None
) -> RolledUp:
    """Bring the per-device daily summaries up to the head, a chunk per transaction.

    Each chunk is summarised on a read snapshot without the lock (DuckDB reads every
    reading of the days it touches, on its own threads), and the lock is held only to
    write the summaries: ingest keeps sealing meanwhile (issue 14; it used to wait
    for the whole chunk's aggregation). It stops at the head as it was when called:
    chasing the blocks sealed meanwhile would summarise today's readings again and
    again under load; the next run takes them.
    """
    chunks = readings = 0
    head = writer.height
    while True:
        summary = device_days.summarise_next(writer.store, max_readings, upto=head)
        if summary is None:
            return {"height": device_days.rolled_up(writer.store), "chunks": chunks, "readings": readings}
        with writer.lock:
            with writer.store.transaction():
                stored = device_days.store_summary(writer.store, summary)
            target = writer.height
        if not stored:
            continue  # another roll-up moved the mark meanwhile: summarise from where it is now
        chunks, readings = chunks + 1, readings + summary.readings
        if progress:
            progress(summary.hi, target)


def issue_bills(writer: LedgerWriter, month: str, bills: Sequence[Bill], per_block: int = 5000) -> BillsIssued:
    """Seal bills not yet issued: each bill's hash goes into the chain, its body into `bills`.

    Issued bills are never replaced, so running the close again issues nothing new.
    """
    issued = 0
    done = accounts.billed_accounts(writer.store, month)
    todo = [b for b in bills if b["account"] not in done and b.get("status") != "issued"]
    for start in range(0, len(todo), per_block):
        # Bodies and hashes are made before the lock, and the lock is held per block, not for
        # the whole close: ingest seals between blocks (issue 14). Each block checks again
        # which bills are issued by now, so a close running at the same time issues none twice.
        at = now_ms()
        rows, entries = [], []
        for bill in todo[start : start + per_block]:
            body = canonical_json({**bill, "status": "issued"}).decode()
            digest = hashlib.sha256(body.encode()).hexdigest()
            entries.append(
                {
                    "entry": "bill_issued",
                    "account": bill["account"],
                    "month": month,
                    "total": bill["total"],
                    "bill_hash": digest,
                    "at": at,
                }
            )
            rows.append((bill["account"], month, at, bill["total"], body, digest))
        with writer.lock:
            now_done = accounts.billed_accounts(writer.store, month)
            keep = [i for i, row in enumerate(rows) if row[0] not in now_done]
            if not keep:
                continue
            rows, entries = [rows[i] for i in keep], [entries[i] for i in keep]
            height = writer.height + 1
            writer.commit(Batch(), entries, also=functools.partial(accounts.add_bills, rows=rows, height=height))
            issued += len(rows)
    return {"month": month, "issued": issued, "already_issued": len(done)}
