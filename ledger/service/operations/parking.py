"""Parking's writes: a space's zone class, its lease to an account, and a driver's check-in.

Each is an entry naming its operator, sealed with its row; parking bills read them back
(ledger/billing/rules.py prices a stay by the zone and lease in force when it began).
"""

from __future__ import annotations

from ledger.errors import Refused
from ledger.service.results.billing import CheckedIn, Leased, ZoneSet
from ledger.service.writer import LedgerWriter, checked_operator
from ledger.store import accounts


def _parking_space(writer: LedgerWriter, space: str) -> None:
    rec = writer.store.device(space)
    if rec is None or rec.kind != "parking":
        raise Refused(f"{space} is not an enrolled parking sensor")


def set_zone(writer: LedgerWriter, space: str, zone_class: int, from_ts: int, operator: str) -> ZoneSet:
    operator = checked_operator(operator)
    with writer.lock:  # checks and the record in one step
        _parking_space(writer, space)
        if zone_class not in (1, 2, 3):
            raise Refused("zone class must be 1, 2 or 3")
        sealed = writer.seal(
            {"entry": "parking_zone", "space": space, "class": zone_class, "from": from_ts, "operator": operator},
            lambda s: accounts.add_zone(s, space, zone_class, from_ts),
        )
    return {"space": space, "class": zone_class, "from": from_ts, "operator": operator, "block": sealed.hash}


def lease(writer: LedgerWriter, space: str, account: str | None, from_ts: int, operator: str) -> Leased:
    operator = checked_operator(operator)
    with writer.lock:  # checks and the record in one step
        _parking_space(writer, space)
        writer.require_account(account)
        sealed = writer.seal(
            {"entry": "parking_lease", "space": space, "account": account, "from": from_ts, "operator": operator},
            lambda s: accounts.add_lease(s, space, account, from_ts),
        )
    return {"space": space, "account": account, "from": from_ts, "operator": operator, "block": sealed.hash}


def checkin(writer: LedgerWriter, space: str, account: str, at: int, operator: str) -> CheckedIn:
    operator = checked_operator(operator)
    with writer.lock:  # checks and the record in one step
        _parking_space(writer, space)
        writer.require_account(account)
        sealed = writer.seal(
            {"entry": "parking_checkin", "space": space, "account": account, "at": at, "operator": operator},
            lambda s: accounts.add_checkin(s, space, account, at),
        )
    return {"space": space, "account": account, "at": at, "operator": operator, "block": sealed.hash}
