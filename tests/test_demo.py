"""The demo city is made once (issue 15, point 6): household names, and `populate` on real DuckDB files.

`populate` is driven here through the local API on a real ledger, as `up` drives it through
ingest's socket once the fleet has enrolled: the same calls, without a broker or a fleet.
tests/test_up.py starts `up` itself on a home holding an operator's device `wm1`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from edge.fleet import plan_fleet
from ledger.chain.protocol import valid_device_id
from ledger.city import demo
from ledger.city.up import fleet_devices
from ledger.home import Home
from ledger.service.api import LedgerAPI, local_api
from ledger.service.homes import initialize

# Ids the protocol allows that are not the fleet's: an operator's own meters.
ODD_IDS = ("wm1", "a", "x.y_z", "Z" * 64)
OP = "op-jane"  # the operator undoing the demo's work

# ---------------------------------------------------------------- household naming (pure)


@pytest.mark.parametrize(
    ("device", "household"),
    [
        ("wm-d01-000003", "hh-d01-000003"),
        ("gm-d01-000003", "hh-d01-000003"),
        ("em-d01-000003", "hh-d01-000003"),
        ("em-north-2-000017", "hh-north-2-000017"),  # a district with a dash keeps it
        ("wm1", "hh.wm1"),
        ("a", "hh.a"),
        ("x.y_z", "hh.x.y_z"),
        ("ps-d01-000001", "hh.ps-d01-000001"),  # not a meter of the fleet's: a household of its own
        ("wm-d01-x", "hh.wm-d01-x"),
        ("wm--000001", "hh.wm--000001"),
    ],
)
def test_household_of_names_fleet_homes_and_gives_other_ids_their_own(device: str, household: str) -> None:
    assert demo.household_of(device) == household
    assert valid_device_id(household)


@pytest.mark.parametrize("length", [61, 62, 64])
def test_household_of_a_long_id_is_still_a_valid_id(length: int) -> None:
    device = "m" * length
    household = demo.household_of(device)
    assert household is not None and valid_device_id(household), household
    assert len(household) <= 64
    if length == 61:
        assert household == f"hh.{device}"


def test_household_of_long_ids_sharing_a_start_differ() -> None:
    first, second = "a" * 63 + "1", "a" * 63 + "2"
    assert demo.household_of(first) != demo.household_of(second)


@pytest.mark.parametrize("device", ["", "a b", "a/b", "é", "m" * 65, "wm-d01-000003\n"])
def test_household_of_an_id_the_protocol_refuses_is_none(device: str) -> None:
    assert demo.household_of(device) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=64))
def test_every_valid_device_id_has_a_valid_household(device: str) -> None:
    household = demo.household_of(device)
    assert household is not None and valid_device_id(household), (device, household)


# ---------------------------------------------------------------- populate on a real ledger


def _home(tmp_path: Path) -> tuple[Home, LedgerAPI]:
    home = Home(tmp_path / "home")
    initialize(home)
    return home, local_api(home)


def _enroll(ledger: LedgerAPI, devices: int, *, odd: tuple[str, ...] = ()) -> frozenset[str]:
    """The first `devices` of `up`'s fleet (and `odd` water meters of an operator's), without accounts."""
    have = {d["device"] for d in ledger.devices()}
    rows = [
        {"device": p.device, "kind": p.kind, "district": p.district}
        for p in plan_fleet(devices, demo.DISTRICTS)
        if p.device not in have
    ]
    rows += [{"device": d, "kind": "water", "district": "d01"} for d in odd]
    ledger.enroll_devices([{**r, "public_key": SigningKey.generate().verify_key.encode().hex()} for r in rows])
    return fleet_devices(devices)


def _accounts(ledger: LedgerAPI) -> dict[str, str | None]:
    return {d["device"]: d["account"] for d in ledger.devices()}


def _height(ledger: LedgerAPI) -> int:
    return int(ledger.status()["height"])


def test_populate_on_a_new_home_binds_only_the_fleets_meters(tmp_path: Path) -> None:
    home, ledger = _home(tmp_path)
    fleet = _enroll(ledger, 12, odd=ODD_IDS)
    made = demo.populate(ledger, home, fleet)

    owners = _accounts(ledger)
    kinds = {d["device"]: d["kind"] for d in ledger.devices()}
    for device in fleet:
        expected = None if kinds[device] == "parking" else demo.household_of(device)
        assert owners[device] == expected, device
    assert all(owners[d] is None for d in ODD_IDS)
    assert {o["operator"] for o in ledger.operators()} == {"op-city", "op-d01"}
    assert made.citizens and made.citizens[0].startswith("hh-")
    signed = ledger.authenticate(role="citizen", principal=made.citizens[0], password=demo.CITIZEN_PASSWORD)
    assert signed["outcome"] == "signed_in"
    record = demo.load_record(home)
    assert isinstance(record, demo.DemoRecord) and record.devices == set(fleet)
    assert set(record.leases) == {d for d in fleet if kinds[d] == "parking"}


def test_a_second_populate_never_rebinds_an_unbound_or_revoked_meter(tmp_path: Path) -> None:
    home, ledger = _home(tmp_path)
    fleet = _enroll(ledger, 12)
    meters = sorted(d["device"] for d in ledger.devices() if d["kind"] != "parking")
    revoked_before, unbound, revoked_after, moved = meters[:4]
    ledger.revoke_device(device=revoked_before, operator=OP)  # retired before the demo ever saw it: no account
    demo.populate(ledger, home, fleet)
    assert _accounts(ledger)[revoked_before] is None

    ledger.add_account(account="acme", name="Acme Ltd", customer_class="non-residential")
    ledger.assign_account(device=unbound, account=None, operator=OP)  # the operator unbinds it
    ledger.assign_account(device=revoked_after, account=None, operator=OP)
    ledger.revoke_device(device=revoked_after, operator=OP)
    ledger.assign_account(device=moved, account="acme", operator=OP)
    before, height = _accounts(ledger), _height(ledger)

    again = demo.populate(ledger, home, fleet)

    assert _accounts(ledger) == before
    assert before[unbound] is None and before[revoked_after] is None and before[moved] == "acme"
    assert _height(ledger) == height, "a second populate sealed something"
    assert "0 meters" in again.note and again.citizens


def test_a_bigger_fleet_later_gives_only_its_new_meters_households(tmp_path: Path) -> None:
    home, ledger = _home(tmp_path)
    first = _enroll(ledger, 8)
    demo.populate(ledger, home, first)
    unbound = min(d for d in first if not d.startswith("ps-"))
    ledger.assign_account(device=unbound, account=None, operator=OP)

    second = _enroll(ledger, 14)
    demo.populate(ledger, home, second)

    owners = _accounts(ledger)
    assert owners[unbound] is None
    for device in second - first:
        assert owners[device] == (None if device.startswith("ps-") else demo.household_of(device)), device


def test_a_home_with_people_of_its_own_gets_no_demo(tmp_path: Path) -> None:
    home, ledger = _home(tmp_path)
    ledger.add_account(account="hh-d01-000001", name="An operator's customer")
    fleet = _enroll(ledger, 6, odd=("wm1",))
    height = _height(ledger)

    made = demo.populate(ledger, home, fleet)

    assert "no demo" in made.note and not made.citizens
    assert all(account is None for account in _accounts(ledger).values())
    assert _height(ledger) == height and ledger.operators() == []
    assert demo.load_record(home) is None


def test_a_damaged_record_changes_nothing(tmp_path: Path) -> None:
    home, ledger = _home(tmp_path)
    fleet = _enroll(ledger, 6)
    (home.root / demo.RECORD_FILE).write_text("{not json")
    height = _height(ledger)

    made = demo.populate(ledger, home, fleet)

    assert "damaged" in made.note
    assert _height(ledger) == height and all(a is None for a in _accounts(ledger).values())


class _CrashOnAssign:
    """The ledger, failing on its `n`-th assign_account: `up` stopped half-way through the demo."""

    def __init__(self, ledger: LedgerAPI, n: int) -> None:
        self.ledger, self.left = ledger, n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)

    def assign_account(self, **kwargs: Any) -> dict[str, Any]:
        self.left -= 1
        if self.left == 0:
            raise ConnectionError("ingest went away")
        return self.ledger.assign_account(**kwargs)


def test_a_demo_stopped_half_way_finishes_without_binding_twice(tmp_path: Path) -> None:
    home, ledger = _home(tmp_path)
    fleet = _enroll(ledger, 12)
    with pytest.raises(ConnectionError):
        demo.populate(_CrashOnAssign(ledger, 3), home, fleet)
    owners = _accounts(ledger)
    meters = sorted(d["device"] for d in ledger.devices() if d["kind"] != "parking")
    bound = [m for m in meters if owners[m] is not None]
    assert len(bound) == 2
    lost = meters[2]  # recorded as looked at, then the crash: left unbound, never bound twice

    demo.populate(ledger, home, fleet)

    owners = _accounts(ledger)
    assert owners[lost] is None
    assert all(owners[m] == demo.household_of(m) for m in meters if m != lost)
