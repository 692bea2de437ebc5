"""The demo city's people: households owning the fleet's meters, and operators.

`cityledger up` runs `populate` once the fleet has enrolled its devices, so
that the dashboard has citizens and operators to sign in as.

The demo is made once, on a new home, and never undoes an operator's work
(docs/architecture.md, "Decision: the demo is made once"):

- A home is new when its ledger holds no people (no account, no operator).
  A home with people is someone's city: `up` makes no demo there.
- The demo only ever looks at the fleet's own devices (the ids `up` asked the
  fleet for), and at each of them once: HOME/demo.json lists every device it
  has looked at, and is written before each change, so a later `up` never
  binds again a meter an operator unbound, reassigned or revoked, and a crash
  half-way leaves a meter unbound rather than bound twice.
- A later `up` with more devices (`--devices 60` after 40) gives the new
  meters households: they are devices the demo has never looked at.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ledger.chain.protocol import DEVICE_PATTERN
from ledger.home import Home, write_private

CITIZEN_PASSWORD = "demo-citizen-2026"
OPERATOR_PASSWORD = "demo-operator-2026"
OPERATORS = (("op-city", "City operations", "all"), ("op-d01", "District d01 desk", "d01"))
DISTRICTS = ("d01", "d02", "d03")  # the districts `up` runs its fleet in
OPERATOR = "demo"  # the operator id the demo's changes are sealed under (every change names one)
RECORD_FILE = "demo.json"
LOGINS_FILE = "demo-logins.txt"

# The fleet's meters (edge/fleet.py plan_fleet): kind prefix, district, number.
_FLEET_METER = re.compile(r"(?:wm|gm|em)-([a-z0-9-]+)-([0-9]+)")
# fullmatch, not valid_device_id's match: `$` alone would let "wm1\n" through.
_DEVICE_ID = re.compile(DEVICE_PATTERN)
_MAX_ID = 64  # ledger/chain/protocol.py DEVICE_PATTERN, which account ids share
_HASH_HEX = 8


def household_of(device: str) -> str | None:
    """The demo household owning meter `device`: always a valid id itself; None for an invalid device id.

    The fleet's meters of one district and number are one home's water, gas and
    electricity: wm-d01-000003, gm-d01-000003 and em-d01-000003 all belong to
    hh-d01-000003 (as long as the device id, so valid too). Any other id the
    protocol allows (an operator's `wm1`, `x.y_z`) is a household of its own,
    `hh.<id>`: the dot keeps these apart from the fleet's `hh-` names. An id
    too long for the prefix keeps its first characters and 8 hex of its SHA-256
    (`hh_<start>.<hash>`), so two long ids sharing a start still differ.
    """
    if not _DEVICE_ID.fullmatch(device):
        return None
    fleet = _FLEET_METER.fullmatch(device)
    if fleet:
        return f"hh-{fleet.group(1)}-{fleet.group(2)}"
    if len(device) + 3 <= _MAX_ID:
        return f"hh.{device}"
    digest = hashlib.sha256(device.encode()).hexdigest()[:_HASH_HEX]
    return f"hh_{device[: _MAX_ID - 4 - _HASH_HEX]}.{digest}"


# ---------------------------------------------------------------- what the demo made


@dataclass
class DemoRecord:
    """What the demo has done in this home, kept in HOME/demo.json.

    A file in the home rather than an entry in the chain: the demo is a
    convenience of `up`, not a fact about the city; every change it makes is
    already sealed (account_opened, device_account, parking_lease entries).
    """

    devices: set[str] = field(default_factory=set)  # fleet devices looked at: never looked at again
    households: list[str] = field(default_factory=list)  # accounts the demo opened (or is opening)
    leases: dict[str, str] = field(default_factory=dict)  # parking space -> the demo household leasing it

    def to_json(self) -> str:
        return (
            json.dumps(
                {"version": 1, "devices": sorted(self.devices), "households": self.households, "leases": self.leases},
                indent=1,
            )
            + "\n"
        )

    @classmethod
    def from_json(cls, text: str) -> DemoRecord | str:
        """The record, or why the text is not one (a damaged file must not restart the demo)."""
        try:
            doc = json.loads(text)
            devices, households, leases = doc["devices"], doc["households"], doc["leases"]
            if not (isinstance(devices, list) and isinstance(households, list) and isinstance(leases, dict)):
                return "unexpected shape"
            return cls(
                set(map(str, devices)), [str(h) for h in households], {str(s): str(a) for s, a in leases.items()}
            )
        except (ValueError, KeyError, TypeError) as exc:
            return f"unreadable: {exc}"


def load_record(home: Home) -> DemoRecord | None | str:
    """The demo's record; None when the demo was never made here; a string saying why it cannot be read."""
    path = home.root / RECORD_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc}"
    record = DemoRecord.from_json(text)
    return f"{path}: {record}" if isinstance(record, str) else record


def save_record(home: Home, record: DemoRecord) -> None:
    """Written before the change it announces: after a crash the demo has done at most what it says."""
    write_private(home.root / RECORD_FILE, record.to_json())


# ---------------------------------------------------------------- populate


@dataclass(frozen=True)
class Demo:
    """What `up` prints: who can sign in, and what the demo did this time."""

    note: str
    citizens: list[str] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    citizen_password: str = CITIZEN_PASSWORD
    operator_password: str = OPERATOR_PASSWORD


def populate(ledger: Any, home: Home, fleet: Iterable[str]) -> Demo:
    """Give the fleet's meters `fleet` households and its parking spaces leases, once; add operators.

    Only on a new home, or one whose demo this is (HOME/demo.json); only
    devices in `fleet` that the demo has never looked at; only active meters
    without an account. Idempotent: a second `up` finds nothing to do.
    """
    record = load_record(home)
    if isinstance(record, str):
        return Demo(f"no demo changes: the demo's record is damaged ({record})")
    if record is None:
        if ledger.accounts() or ledger.operators():
            return Demo(_not_new(home))
        record = DemoRecord()
        save_record(home, record)
    _add_operators(ledger)
    wanted = set(fleet)
    new = [d for d in ledger.devices() if d["device"] in wanted and d["device"] not in record.devices]
    made = _bind_meters(ledger, home, record, new)
    leased = _lease_spaces(ledger, home, record, new)
    record.devices.update(d["device"] for d in new)
    save_record(home, record)
    return _logins(ledger, home, record, f"demo: {made} meters given households, {leased} spaces leased")


def _not_new(home: Home) -> str:
    """Why there is no demo; a home an older `up` populated (before demo.json) still has its logins file."""
    note = "no demo made: this home already has accounts or operators of its own"
    earlier = home.root / LOGINS_FILE
    return f"{note} (earlier demo logins: {earlier})" if earlier.exists() else note


def _bind_meters(ledger: Any, home: Home, record: DemoRecord, devices: list[dict[str, Any]]) -> int:
    """Each active, unowned meter to its household, opened by the demo if need be; returns how many."""
    existing = {a["account"] for a in ledger.accounts()}
    bound = 0
    for d in sorted(devices, key=lambda d: d["device"]):
        if d["kind"] == "parking" or d["status"] != "active" or d["account"] is not None:
            continue
        account = household_of(d["device"])
        if account is None or (account in existing and account not in record.households):
            continue  # not a name the demo can use, or someone else's account
        if account not in existing:
            _open_household(ledger, home, record, account)
            existing.add(account)
        record.devices.add(d["device"])
        save_record(home, record)
        ledger.assign_account(device=d["device"], account=account, operator=OPERATOR)
        bound += 1
    return bound


def _open_household(ledger: Any, home: Home, record: DemoRecord, account: str) -> None:
    if account not in record.households:
        record.households.append(account)
        save_record(home, record)
    ledger.add_account(account=account, name=f"Household {account[3:]}", customer_class="residential")
    ledger.set_password(role="citizen", principal=account, password=CITIZEN_PASSWORD)


def _lease_spaces(ledger: Any, home: Home, record: DemoRecord, devices: list[dict[str, Any]]) -> int:
    """Each new active parking space to a demo household that has none yet; returns how many."""
    spaces = sorted(d["device"] for d in devices if d["kind"] == "parking" and d["status"] == "active")
    taken = set(record.leases.values())
    free = [h for h in record.households if h not in taken]
    for space, account in zip(spaces, free):
        record.leases[space] = account
        record.devices.add(space)
        save_record(home, record)
        ledger.lease(space=space, account=account, operator=OPERATOR)
    return min(len(spaces), len(free))


def _add_operators(ledger: Any) -> None:
    """The demo's operators that are missing (operators are never removed, so missing means never made)."""
    known = {o["operator"] for o in ledger.operators()}
    for operator, name, districts in OPERATORS:
        if operator not in known:
            ledger.add_operator(operator=operator, name=name, districts=districts)
            ledger.set_password(role="operator", principal=operator, password=OPERATOR_PASSWORD)


def _logins(ledger: Any, home: Home, record: DemoRecord, note: str) -> Demo:
    """The demo's logins that exist, also written to HOME/demo-logins.txt (0600)."""
    existing = {a["account"] for a in ledger.accounts()}
    citizens = [h for h in record.households if h in existing]
    write_private(
        home.root / LOGINS_FILE,
        f"citizens: {', '.join(citizens)}\npassword: {CITIZEN_PASSWORD}\n"
        f"operators: op-city (all districts), op-d01 (d01)\npassword: {OPERATOR_PASSWORD}\n",
    )
    return Demo(note, citizens[:3], [o[0] for o in OPERATORS])
