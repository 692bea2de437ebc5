"""The dashboard's only way to the ledger: scoped by the signed-in principal.

Pages never call the ledger API themselves. They get a `CitizenData` or an
`OperatorData` for the principal in their session, and these decide what may be
seen: a citizen's account comes from the principal, never from a widget or a
URL; an operator's district filter is intersected with their districts. An id
for something outside the scope is answered exactly as an id that does not
exist (`NotFound`), so nothing leaks about other people's data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from dashboard import bills as billfmt
from dashboard import usage as use
from dashboard.fmt import unit_label, zone
from ledger.anomalies.investigations import AnomalyDetail
from ledger.chain.receipts import Receipt
from ledger.clock import now_ms
from ledger.errors import LedgerError, NotFound, Refused, Unavailable
from ledger.home import Home
from ledger.people.signin import LOCAL, Throttled, Wrong
from ledger.service.api import LedgerAPI
from ledger.service.results.billing import Adjustment, AdjustmentDecided
from ledger.service.results.chain import Revoked
from ledger.service.results.people import Dispute, DisputePosted
from ledger.service.rpc import open_ledger

log = logging.getLogger("cityledger.dashboard")
P = ParamSpec("P")
R = TypeVar("R")

DAY_MS = 86_400_000
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
ANOMALY_STATES = ("open", "acknowledged", "resolved", "dismissed")
DISPUTE_STATES = ("open", "answered", "closed")


# ---------------------------------------------------------------- errors shown to people


def call(fn: Callable[P, R], *args: P.args, **params: P.kwargs) -> R:
    """One API call (`call(ledger().bill, account=..., month=...)`: typed as the method is), its
    failures as the families a page can explain (ledger/errors.py): NotFound, Refused,
    Unavailable; over the socket they arrive as such already."""
    try:
        return fn(*args, **params)
    except LedgerError:
        raise
    except (KeyError, LookupError) as exc:
        raise NotFound(str(exc)) from exc
    except FileNotFoundError as exc:
        raise Unavailable(str(exc)) from exc
    except ConnectionError as exc:
        raise Unavailable(f"the ledger's socket did not answer ({type(exc).__name__})") from exc
    except ValueError as exc:
        raise Refused(str(exc)) from exc


def ledger() -> LedgerAPI:
    """The ledger API: the ingest's socket while it runs, else the file for one call at a time."""
    return open_ledger(Home.from_env())


def view(name: str, **params: Any) -> Any:
    """A named read-only query (ledger/store/views.py): the dashboard's read side, by name."""
    return call(ledger().view, name=name, params=params)


# ---------------------------------------------------------------- a small shared cache


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.ok = False


class _Cache:
    """Results shared by every session of this dashboard process for a few seconds, so that
    many people watching the same page cost the ledger one query, not one each. Keys always
    carry the scope (account or districts) the result was computed for. A result being
    computed is waited for, not computed a second time."""

    def __init__(self, size: int = 1024) -> None:
        self._data: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._flights: dict[tuple[Any, ...], _Flight] = {}
        self._lock = threading.Lock()
        self.size = size

    def get(self, key: tuple[Any, ...], ttl: float, compute: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and time.monotonic() - hit[0] < ttl:
                return hit[1]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if flight.done.wait(timeout=600) and flight.ok:
                return flight.value
            return compute()  # the first caller failed: try again for this one
        try:
            value = compute()
            flight.value, flight.ok = value, True
            with self._lock:
                if len(self._data) >= self.size:
                    for k in sorted(self._data, key=lambda k: self._data[k][0])[: self.size // 4]:
                        del self._data[k]
                self._data[key] = (time.monotonic(), value)
            return value
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def peek(self, key: tuple[Any, ...], ttl: float) -> Any:
        with self._lock:
            hit = self._data.get(key)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < ttl else None

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._data[key] = (time.monotonic(), value)

    def forget(self, *prefix: Any) -> None:
        with self._lock:
            for k in [k for k in self._data if k[: len(prefix)] == prefix]:
                del self._data[k]


CACHE = _Cache()


def tariffs() -> dict[str, Any]:
    return CACHE.get(("tariffs",), 300, lambda: view("tariff_summary"))


# ---------------------------------------------------------------- who is signed in


@dataclass(frozen=True)
class Principal:
    role: str  # "citizen" | "operator"
    id: str
    name: str
    districts: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Principal:
        return cls(str(d["role"]), str(d["id"]), str(d.get("name") or d["id"]), tuple(d.get("districts") or ()))

    @property
    def whole_city(self) -> bool:
        return "all" in self.districts


def authenticate(role: str, principal: str, password: str, source: str = LOCAL) -> Principal | Wrong | Throttled:
    """Who signed in, or why not: `Throttled` says how long to wait; `Wrong` never says whether the id exists."""
    if role not in ("citizen", "operator") or not principal.strip() or not password:
        return Wrong()
    return sign_in_outcome(
        call(ledger().authenticate, role=role, principal=principal.strip(), password=password, source=source)
    )


def sign_in_outcome(found: Any) -> Principal | Wrong | Throttled:
    """The API's answer as a value (ledger.signin.outcome_as_dict); anything unexpected is a refusal."""
    kind = found.get("outcome") if isinstance(found, dict) else None
    if kind == "signed_in":
        return Principal.from_dict(found)
    if kind == "throttled":
        return Throttled(str(found.get("scope") or "pair"), max(1, int(found.get("retry_after_s") or 1)))
    return Wrong()


# ---------------------------------------------------------------- citizens


class CitizenData:
    """What one account holder may see and do: their own account, always."""

    def __init__(self, principal: Principal) -> None:
        if principal.role != "citizen":
            raise PermissionError("not a citizen")
        self.principal = principal
        self.account = principal.id  # the only account this object ever asks about

    def _devices(self) -> list[dict[str, Any]]:
        return CACHE.get(("devices_of", self.account), 30, lambda: view("devices_of_account", account=self.account))

    def profile(self) -> dict[str, Any]:
        found = CACHE.get(("profile", self.account), 60, lambda: view("account_profile", account=self.account))
        if found is None:
            raise NotFound("account")
        return found

    def meters(self) -> list[dict[str, Any]]:
        return [d for d in self._devices() if d["kind"] != "parking"]

    def meter(self, device: str | None) -> dict[str, Any]:
        for d in self.meters():
            if d["device"] == device:
                return d
        raise NotFound("meter")

    def held_since(self, device: str) -> int:
        """Since when this account has held the device: readings before that are a previous holder's."""
        since = CACHE.get(
            ("held", self.account, device), 30, lambda: view("held_since", device=device, account=self.account)
        )
        if since is None:
            raise NotFound("device")
        return int(since)

    # -------------------------------------------------------- alerts

    ALERT_TYPES = ("leak", "spike")  # what a household can act on: a leak to fix, a use to explain

    def alerts(self) -> list[dict[str, Any]]:
        """The account's open or acknowledged leak and unusually-high-use findings, newest first, with
        their evidence (the readings they rest on). Only this account's meters: the query names the
        meters' districts, and each row is kept only when it is this account's."""
        districts = sorted({d["district"] for d in self._devices()})
        if not districts:
            return []

        def fetch() -> list[dict[str, Any]]:
            rows = call(ledger().anomalies, districts=districts, limit=500)
            mine = {d["device"] for d in self._devices()}
            return [
                dict(a)
                for a in rows
                if a["account"] == self.account
                and a["device"] in mine
                and a["type"] in self.ALERT_TYPES
                and a["status"] in ("open", "acknowledged")
            ]

        return CACHE.get(("alerts", self.account), 30, fetch)

    # -------------------------------------------------------- usage

    def usage(self, device: str, granularity: str, now: int | None = None) -> dict[str, Any]:
        """One of the account's meters over days, weeks or months: this period, a year earlier,
        the district's typical household, and the tier the year's use has reached."""
        meter = self.meter(device)
        summary = tariffs()
        tz = zone(summary["timezone"])
        now = now or now_ms()
        ps = use.periods(granularity, now, tz)
        months = use.periods("Monthly", now, tz)
        bounds = sorted(set(use.boundaries(ps, tz)) | set(use.boundaries(months, tz)))
        rows = view("registers_at", devices=[device], boundaries=bounds)
        since = self.held_since(device)  # nothing from before this account held the meter
        registers = {b: None for b in bounds} | {b: v for b, v in use.register_values(rows).items() if b >= since}
        customer_class = self.profile()["customer_class"]
        today = dt.datetime.fromtimestamp(now / 1000, tz).date()
        tariff = use.select_tariff(summary, meter["kind"], customer_class, today)
        if tariff is None:
            raise NotFound("tariff")
        first: dict[int, int] = {}
        for start in use.first_reading_needed(ps, registers, now, tz):
            # Look only near the start (or the meter's enrolment): a bounded slice, never a year.
            lo = max(start, since, int(meter.get("enrolled_at") or 0) - DAY_MS)
            found = view("first_reading", device=device, start=lo, end=min(now, lo + 2 * DAY_MS))
            if found is not None:
                first[start] = int(found["value"])  # exact: a register may be near 2^63
        typical = typical_household(meter["district"], meter["kind"], ps, now)
        tiers = use.tiers_of(tariff) if tariff["basis"] == "calendar_year" or len(tariff["tiers"]) == 1 else []
        return {
            "meter": meter,
            "granularity": granularity,
            "unit": tariff["unit"],
            "tariff": tariff,
            "tiers": tiers,
            "timezone": summary["timezone"],
            "rows": use.series(
                ps, registers, typical, tariff["base_per_unit"], tiers, unit_label(tariff["unit"]), tz, first
            ),
            "year_to_date": use.year_to_date(registers, now, tz, tariff["base_per_unit"], first),
        }

    # -------------------------------------------------------- bills

    def _check_month(self, month: str) -> str:
        if not isinstance(month, str) or not MONTH.match(month):
            raise NotFound("month")
        return month

    def bill_months(self, now: int | None = None) -> list[dict[str, Any]]:
        """This month, last month and every month with an issued bill, newest first."""
        tz = zone(tariffs()["timezone"])
        today = dt.datetime.fromtimestamp((now or now_ms()) / 1000, tz).date().replace(day=1)
        issued = {
            b["month"]: b
            for b in CACHE.get(("bills", self.account), 10, lambda: call(ledger().bills, account=self.account))
        }
        months = {today.strftime("%Y-%m"), (today - dt.timedelta(days=1)).strftime("%Y-%m"), *issued}
        return [
            {"month": m, "issued": m in issued, "total": issued.get(m, {}).get("total")}
            for m in sorted(months, reverse=True)
        ]

    def bill(self, month: str) -> dict[str, Any]:
        month = self._check_month(month)
        found = CACHE.peek(("issued-bill", self.account, month), 3600)  # an issued bill never changes
        if found is None:
            found = CACHE.get(
                ("bill", self.account, month), 30, lambda: call(ledger().bill, account=self.account, month=month)
            )
            if found.get("status") == "issued":
                CACHE.put(("issued-bill", self.account, month), found)
        if found.get("account") != self.account:  # never show anything but the principal's own bill
            raise NotFound("bill")
        return found

    def parking(self, month: str) -> list[dict[str, Any]]:
        """The month's parking lines: from the issued bill when there is one (its prices are final),
        else as they stand, computed without the utility lines."""
        month = self._check_month(month)
        issued = {m["month"] for m in self.bill_months() if m["issued"]}
        if month in issued:
            return [line for line in self.bill(month)["lines"] if line["type"] == "parking"]
        cached = CACHE.peek(("bill", self.account, month), 30)
        if cached is not None:
            return [line for line in cached["lines"] if line["type"] == "parking"]
        return CACHE.get(
            ("parking", self.account, month), 30, lambda: view("parking_lines", account=self.account, month=month)
        )

    # -------------------------------------------------------- proof

    def receipt(self, device: str, seq: int, month: str | None = None) -> Receipt:
        """The receipt of one of the account's own meter readings, or of a reading one of its bills
        rests on (a parking space's reports); anything else is not found."""
        try:
            seq = int(seq)
        except (TypeError, ValueError) as exc:
            raise NotFound("reading") from exc
        own = {d["device"] for d in self._devices()}
        on_bill = month is not None and any(
            (d, s) == (device, seq) for _, d, s in billfmt.all_readings(self.bill(month))
        )
        if not on_bill and device not in own:
            raise NotFound("reading")
        found = call(ledger().receipt, device=device, seq=seq)
        if not on_bill and found["reading"]["ts"] < self.held_since(device):
            raise NotFound("reading")  # a previous holder's reading
        return found

    def tlog_receipt(self, device: str, seq: int, month: str | None = None) -> str:
        """The version 2 receipt (a C2SP tlog-proof) of a reading `receipt` would prove: the same
        reading, the same rule on whose it is."""
        self.receipt(device, seq, month=month)  # NotFound unless it is this account's to see
        return str(call(ledger().tlog_receipt, device=device, seq=seq))

    def reading_near(self, device: str, at: int) -> dict[str, Any]:
        """The reading of one of the account's own devices closest to `at` (within 6 hours)."""
        if device not in {d["device"] for d in self._devices()}:
            raise NotFound("reading")
        since = self.held_since(device)
        found = [
            p
            for p in view(
                "device_readings",
                device=device,
                start=int(at) - 6 * 3_600_000,
                end=int(at) + 6 * 3_600_000,
                max_points=10_000,
            )["points"]
            if p["ts"] >= since
        ]
        if not found:
            raise Refused("no reading of that meter within 6 hours of that time")
        return min(found, key=lambda p: abs(p["ts"] - at))

    # -------------------------------------------------------- disputes

    def disputes(self) -> list[Dispute]:
        return call(ledger().disputes, account=self.account)

    def dispute(self, dispute_id: str) -> Dispute:
        for d in self.disputes():
            if d["id"] == dispute_id:
                return d
        raise NotFound("dispute")

    def open_dispute(self, subject: str, message: str) -> DisputePosted:
        if not message.strip():
            raise Refused("Please write what is wrong.")
        return call(
            ledger().dispute,
            account=self.account,
            author=self.account,
            message=message.strip(),
            subject=subject[:200],
            status="open",
        )

    def reply(self, dispute_id: str, message: str) -> DisputePosted:
        d = self.dispute(dispute_id)
        if not message.strip():
            raise Refused("Please write a message.")
        return call(
            ledger().dispute,
            account=self.account,
            author=self.account,
            message=message.strip(),
            dispute_id=d["id"],
            status="open",
        )


def typical_household(district: str, kind: str, ps: list[use.Period], now: int) -> dict[tuple[int, int], float | None]:
    """Median use per period of the district's households (cached for 15 minutes; the running
    period's end is rounded down, `_running_end`, so the cache holds)."""
    bounds = sorted({p.start for p in ps} | {_running_end(p, now) if p.partial else p.end for p in ps})
    rows = CACHE.get(
        ("typical", district, kind, tuple(bounds)),
        900,
        lambda: view("typical_usage", district=district, kind=kind, boundaries=bounds),
    )
    out = {(r["start"], r["end"]): r["median"] for r in rows}
    for p in ps:  # the running period: the median up to the rounded end
        if p.partial:
            out[(p.start, p.end)] = out.get((p.start, _running_end(p, now)))
    return out


def _running_end(p: use.Period, now: int) -> int:
    """Where the running period's median ends: `now` rounded down to 15 minutes, so that the cache
    holds; in the period's first quarter of an hour, to the minute, or `now` itself (rounded to 15
    minutes, a period that began at midnight would have no length, and so no median, until 00:15)."""
    for step in (900_000, 60_000, 1):
        end = now - now % step
        if end > p.start:
            return min(p.end, end)
    return p.end


# ---------------------------------------------------------------- operators


class OperatorData:
    """What an operator may see and do: their districts, or the whole city."""

    def __init__(self, principal: Principal) -> None:
        if principal.role != "operator":
            raise PermissionError("not an operator")
        self.principal = principal
        self.operator = principal.id
        self.limited: tuple[str, ...] | None = None if principal.whole_city else tuple(sorted(principal.districts))

    # -------------------------------------------------------- scope

    def districts(self) -> list[str]:
        """The districts this operator may pick from."""
        if self.limited is not None:
            return list(self.limited)
        return CACHE.get(("districts",), 60, lambda: view("districts"))

    def scope(self, wanted: list[str] | str | None = None) -> list[str] | None:
        """The districts to ask about: what was asked for, within the operator's own
        (None: the whole city, for a whole-city operator who asked for no filter)."""
        if isinstance(wanted, str):
            wanted = [wanted]
        if wanted:
            asked = {str(w) for w in wanted}
            return sorted(asked & set(self.limited)) if self.limited is not None else sorted(asked)
        return list(self.limited) if self.limited is not None else None

    def sees(self, district: str | None) -> bool:
        return district is not None and (self.limited is None or district in self.limited)

    # -------------------------------------------------------- the city now

    def overview(self, districts: list[str] | None = None) -> dict[str, Any]:
        scope = self.scope(districts)
        key = ("overview", tuple(scope) if scope is not None else None)
        return CACHE.get(key, 2, lambda: view("overview", districts=scope))

    def arrivals(self, districts: list[str] | None = None) -> list[dict[str, Any]]:
        scope = self.scope(districts)
        key = ("arrivals", tuple(scope) if scope is not None else None)
        return CACHE.get(key, 2, lambda: view("arrivals", districts=scope))

    def status(self) -> dict[str, Any]:
        return CACHE.get(("status",), 2, lambda: call(ledger().status))

    def last_audit(self) -> dict[str, Any] | None:
        path = Home.from_env().last_audit
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def witness_reports(self, kind: str | None = None, limit: int = 100) -> Sequence[Mapping[str, Any]]:
        return call(ledger().witness_reports, kind=kind, limit=limit)

    def blocks(self, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return view("blocks_page", before=before, limit=limit)

    def failed_sign_ins(self) -> dict[str, list[dict[str, Any]]]:
        """Logins and sources with repeated failed sign-ins in the last hour. A whole-city operator
        sees every login and source; a district operator only their districts' citizens' accounts
        (and the sources as counted on those), never operators' logins or ids that are no account."""
        scope = list(self.limited) if self.limited is not None else None
        key = ("failed_sign_ins", tuple(scope) if scope is not None else None)
        return CACHE.get(key, 5, lambda: call(ledger().failed_sign_ins, districts=scope))

    def district_chains(self) -> list[dict[str, Any]]:
        """A city of district chains: each district and the newest head the city chain anchored."""
        return CACHE.get(("district_chains",), 5, lambda: call(ledger().districts))

    # -------------------------------------------------------- anomalies

    def anomalies(
        self, status: str | None = None, type: str | None = None, districts: list[str] | None = None, limit: int = 500
    ) -> Sequence[Mapping[str, Any]]:
        scope = self.scope(districts)
        if scope == []:
            return []
        return call(ledger().anomalies, status=status or None, type=type or None, districts=scope, limit=limit)

    def anomaly(self, anomaly_id: str | None) -> AnomalyDetail:
        if not anomaly_id or not isinstance(anomaly_id, str) or len(anomaly_id) > 64:
            raise NotFound("anomaly")
        found = call(ledger().anomaly, anomaly_id=anomaly_id)
        if not self.sees(found.get("district")):
            raise NotFound("anomaly")
        return found

    def act_on_anomaly(self, anomaly_id: str, status: str, note: str | None) -> AnomalyDetail:
        self.anomaly(anomaly_id)
        if status not in ("acknowledged", "resolved", "dismissed"):
            raise Refused("unknown action")
        return call(
            ledger().act_on_anomaly,
            anomaly_id=anomaly_id,
            status=status,
            operator=self.operator,
            note=(note or "").strip() or None,
        )

    def anomaly_readings(self, anomaly: Mapping[str, Any]) -> dict[str, Any]:
        """The device's readings around the anomaly's window (a quarter of its length, at least
        6 hours, either side; 30 days at most), thinned for the chart."""
        self.anomaly(anomaly["id"])
        start = anomaly.get("window_start") or anomaly["raised_at"]
        end = anomaly.get("window_end") or anomaly["raised_at"]
        margin = max(6 * 3_600_000, (end - start) // 4)
        lo, hi = start - margin, end + margin
        lo = max(lo, hi - 30 * 86_400_000)
        return view("device_readings", device=anomaly["device"], start=lo, end=hi)

    def device_anomalies(self, device: str) -> Sequence[Mapping[str, Any]]:
        return [a for a in self.anomalies(limit=500) if a["device"] == device]

    # -------------------------------------------------------- devices

    def devices(
        self,
        text: str = "",
        kind: str | None = None,
        status: str | None = None,
        districts: list[str] | None = None,
        limit: int = 200,
    ) -> dict[str, Any]:
        scope = self.scope(districts)
        if scope == []:
            return {"total": 0, "devices": []}
        return view(
            "device_search", districts=scope, text=text[:64], kind=kind or None, status=status or None, limit=limit
        )

    def device(self, device: str | None) -> dict[str, Any]:
        if not device or not isinstance(device, str) or len(device) > 128:
            raise NotFound("device")
        found = view("device_detail", device=device)
        if found is None or not self.sees(found["district"]):
            raise NotFound("device")
        return found

    def key_history(self, device: str) -> Sequence[Mapping[str, Any]]:
        self.device(device)
        return call(ledger().device_key_history, device=device)

    def revoke(self, device: str) -> Revoked:
        d = self.device(device)
        if d["status"] == "revoked":
            raise Refused(f"{device} is already revoked")
        out = call(ledger().revoke_device, device=device, operator=self.operator)
        log.info("operator %s revoked %s", self.operator, device)
        return out

    # -------------------------------------------------------- quarantine

    def quarantine(
        self, reason: str | None = None, device: str | None = None, districts: list[str] | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        scope = self.scope(districts)
        if scope == []:
            return []
        return view(
            "quarantine_rows",
            districts=scope,
            reason=reason or None,
            device=(device or "").strip() or None,
            limit=limit,
        )

    def quarantine_summary(self, districts: list[str] | None = None) -> dict[str, Any]:
        scope = self.scope(districts)
        if scope == []:
            return {"by_reason": [], "stored": 0, "reasons": []}
        return view("quarantine_summary", districts=scope)

    # -------------------------------------------------------- disputes

    def disputes(self, status: str | None = None) -> list[Dispute]:
        found = call(ledger().disputes, districts=list(self.limited) if self.limited is not None else None)
        return [d for d in found if not status or d["status"] == status]

    def dispute(self, dispute_id: str | None) -> Dispute:
        for d in self.disputes():
            if d["id"] == dispute_id:
                return d
        raise NotFound("dispute")

    def answer(self, dispute_id: str, message: str, close: bool = False) -> DisputePosted:
        d = self.dispute(dispute_id)
        if not message.strip():
            raise Refused("Please write an answer.")
        return call(
            ledger().dispute,
            account=d["account"],
            author=self.operator,
            message=message.strip(),
            dispute_id=d["id"],
            status="closed" if close else "answered",
        )

    def close(self, dispute_id: str, message: str = "") -> DisputePosted:
        d = self.dispute(dispute_id)
        return call(
            ledger().dispute,
            account=d["account"],
            author=self.operator,
            dispute_id=d["id"],
            status="closed",
            message=message.strip() or "Closed by the operator.",
        )

    def adjust(self, dispute_id: str, amount: str, reason: str) -> Adjustment:
        """Append a correction to the disputed account's bill, and say so in the dispute."""
        d = self.dispute(dispute_id)
        out = call(
            ledger().adjust, account=d["account"], amount=amount.strip(), reason=reason.strip(), operator=self.operator
        )
        done = (
            "was appended to your bill"
            if out["status"] == "sealed"
            else "was requested; a second operator must approve it before it reaches your bill"
        )
        call(
            ledger().dispute,
            account=d["account"],
            author=self.operator,
            dispute_id=d["id"],
            status="answered",
            message=f"A correction of {out['amount']} CNY {done} ({out['id']}): {reason.strip()}",
        )
        CACHE.forget("bill", d["account"])
        return out

    def pending_adjustments(self) -> Sequence[Mapping[str, Any]]:
        """Corrections above the approval limit waiting for a second operator, on accounts this
        operator handles disputes for (the whole city's for a city-wide operator)."""
        found = call(ledger().adjustment_requests, status="pending")
        if self.limited is None:
            return found
        accounts = {d["account"] for d in self.disputes()}
        return [r for r in found if r["account"] in accounts]

    def decide_adjustment(self, adj_id: str, approve: bool, note: str = "") -> AdjustmentDecided:
        """Approve (sealed now) or reject a requested correction; the requester may only withdraw it."""
        request = next((r for r in self.pending_adjustments() if r["id"] == adj_id), None)
        if request is None:
            raise NotFound("requested adjustment")
        out = call(ledger().decide_adjustment, id=adj_id, operator=self.operator, approve=approve, note=note.strip())
        log.info("operator %s %s adjustment %s", self.operator, out["status"], adj_id)
        CACHE.forget("bill", request["account"])
        return out

    def bill(self, account: str, month: str) -> dict[str, Any]:
        """An account's bill, for an operator answering its dispute."""
        if not MONTH.match(month or "") or not view(
            "account_in_districts", account=account, districts=list(self.limited) if self.limited else None
        ):
            raise NotFound("bill")
        return CACHE.get(("bill", account, month), 30, lambda: call(ledger().bill, account=account, month=month))

    # -------------------------------------------------------- parking

    def occupancy(self, day: dt.date, districts: list[str] | None = None) -> list[dict[str, Any]]:
        scope = self.scope(districts)
        if scope == []:
            return []
        tz = zone(tariffs()["timezone"])
        start = int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)
        key = ("occupancy", tuple(scope) if scope is not None else None, start)
        ttl = 60 if start + 86_400_000 > now_ms() else 3600
        return CACHE.get(
            key, ttl, lambda: view("parking_occupancy", start=start, end=start + 86_400_000, districts=scope)
        )

    def parking_now(self, districts: list[str] | None = None) -> dict[str, Any]:
        scope = self.scope(districts)
        if scope == []:
            return {"spaces": 0, "taken": 0, "reporting": 0}
        return CACHE.get(
            ("parking_now", tuple(scope) if scope is not None else None),
            5,
            lambda: view("parking_today", districts=scope),
        )

    def revenue(self, districts: list[str] | None = None) -> list[dict[str, Any]]:
        scope = self.scope(districts)
        if scope == []:
            return []
        return CACHE.get(
            ("revenue", tuple(scope) if scope is not None else None),
            300,
            lambda: view("parking_revenue", districts=scope),
        )
