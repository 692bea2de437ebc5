"""The demo city's people: households owning the fleet's meters, and operators.

`cityledger up` runs this once the fleet has enrolled its devices, so that the
dashboard has citizens and operators to sign in as. Idempotent: a second `up`
on the same home finds everything in place.
"""

from __future__ import annotations

from typing import Any

from ledger.home import Home, write_private

CITIZEN_PASSWORD = "demo-citizen-2026"
OPERATOR_PASSWORD = "demo-operator-2026"
OPERATORS = (("op-city", "City operations", "all"), ("op-d01", "District d01 desk", "d01"))


def household_of(device: str) -> str:
    """wm-d01-000003, gm-d01-000003 and em-d01-000003 all belong to household hh-d01-000003."""
    _, district, number = device.split("-", 2)
    return f"hh-{district}-{number}"


def populate(ledger: Any, home: Home) -> dict[str, Any]:
    """Create households for unowned meters, lease each parking space to one, add operators."""
    devices = ledger.devices()
    existing = {a["account"] for a in ledger.accounts()}
    households = sorted({household_of(d["device"]) for d in devices if d["kind"] != "parking"})
    for n, account in enumerate(households):
        if account not in existing:
            ledger.add_account(account=account, name=f"Household {account[3:]}", customer_class="residential")
            ledger.set_password(role="citizen", principal=account, password=CITIZEN_PASSWORD)
    for d in devices:
        if d["kind"] != "parking" and d["account"] is None:
            ledger.assign_account(device=d["device"], account=household_of(d["device"]))
    spaces = sorted(d["device"] for d in devices if d["kind"] == "parking")
    for space, account in zip(spaces, households):
        ledger.lease(space=space, account=account)
    known = {o["operator"] for o in ledger.operators()}
    for operator, name, districts in OPERATORS:
        if operator not in known:
            ledger.add_operator(operator=operator, name=name, districts=districts)
            ledger.set_password(role="operator", principal=operator, password=OPERATOR_PASSWORD)
    logins = {"citizens": households[:3], "citizen_password": CITIZEN_PASSWORD,
              "operators": [o[0] for o in OPERATORS], "operator_password": OPERATOR_PASSWORD}
    write_private(home.root / "demo-logins.txt",
                  f"citizens: {', '.join(households)}\npassword: {CITIZEN_PASSWORD}\n"
                  f"operators: op-city (all districts), op-d01 (d01)\npassword: {OPERATOR_PASSWORD}\n")
    return logins
