"""Bills from a real DuckDB ledger: worked examples, close, corrections, immutability."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.chain.protocol import sign_reading
from ledger.chain.records import Batch, LedgeredReading
from ledger.home import Home
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.operations import billing as billing_ops
from ledger.service.operations import parking as parking_ops
from ledger.service.writer import EnrolmentError, LedgerWriter

TZ = ZoneInfo("Asia/Shanghai")


def at(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=TZ).timestamp() * 1000)


class City:
    """A small city built through the writer, as ingest and operators would."""

    def __init__(self, root: Path) -> None:
        self.home = Home(root)
        initialize(self.home)
        self.writer = LedgerWriter.open(self.home)
        self.keys: dict[str, SigningKey] = {}
        self.seq: dict[str, int] = {}
        self.kinds: dict[str, str] = {}

    def device(self, device: str, kind: str, district: str = "d02", account: str | None = None) -> None:
        key = SigningKey.generate()
        self.writer.enroll_device(device, kind, district, key.verify_key.encode().hex(), account)
        self.keys[device], self.seq[device], self.kinds[device] = key, 0, kind

    def readings(self, device: str, points: list[tuple[int, int]], block: int = 1000) -> None:
        rows = []
        for ts, value in points:
            self.seq[device] += 1
            r = sign_reading(
                self.keys[device], device=device, kind=self.kinds[device], seq=self.seq[device], ts=ts, value=value
            )
            rows.append(LedgeredReading(r, ts))
        for i in range(0, len(rows), block):
            self.writer.commit(Batch(readings=rows[i : i + block]))

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
def city(tmp_path: Path):
    c = City(tmp_path / "home")
    yield c
    c.close()


def test_a_households_bill_worked_by_hand(city: City) -> None:
    w = city.writer
    billing_ops.add_account(w, "hh-0001", "Li Na", "residential")
    city.device("wm-d02-000001", "water", account="hh-0001")
    city.device("em-d02-000001", "electricity", account="hh-0001")
    # Water: 170 m3 by Mar 1 00:00, 190 m3 by Apr 1 00:00 (readings exactly on the boundaries).
    city.readings(
        "wm-d02-000001",
        [
            (at(2026, 1, 1), 1_000_000),
            (at(2026, 3, 1), 1_170_000),
            (at(2026, 3, 15), 1_180_000),
            (at(2026, 4, 1), 1_190_000),
        ],
    )
    # Electricity: 2,800 kWh by Mar 1, then 150 kWh in March (2880 crossed).
    city.readings("em-d02-000001", [(at(2026, 1, 1), 0), (at(2026, 3, 1), 2_800_000), (at(2026, 4, 1), 2_950_000)])
    bill = local_api(city.home, city.writer).bill(account="hh-0001", month="2026-03")
    water, power = (next(line for line in bill["lines"] if line["kind"] == k) for k in ("water", "electricity"))
    # Water: 10 m3 at 5.00 + 10 m3 at 7.00 = 120.00
    assert [(t["quantity"], t["amount"]) for t in water["tiers"]] == [("10.000", "50.00"), ("10.000", "70.00")]
    assert water["amount"] == "120.00" and water["consumption"] == "20.000"
    # Electricity: 80 kWh x 0.4883 = 39.064 -> 39.06; 70 kWh x 0.5383 = 37.681 -> 37.68; 76.74
    assert [t["amount"] for t in power["tiers"]] == ["39.06", "37.68"] and power["amount"] == "76.74"
    assert bill["total"] == "196.74"
    assert water["readings"] == [["wm-d02-000001", 2], ["wm-d02-000001", 3], ["wm-d02-000001", 4]]
    # Readings two weeks apart are flagged as gaps (a meter reports every 15 minutes), not hidden.
    assert water["flags"] == ["no reading for 336.0 h after seq 2", "no reading for 408.0 h after seq 3"]


def test_adjustments_close_and_immutability(city: City) -> None:
    w = city.writer
    billing_ops.add_account(w, "hh-0002", "Zhang Wei")
    city.device("wm-d02-000002", "water", account="hh-0002")
    city.readings("wm-d02-000002", [(at(2026, 4, 1), 0), (at(2026, 5, 1), 10_000), (at(2026, 6, 1), 20_000)])
    api = local_api(city.home, city.writer)
    assert api.bill(account="hh-0002", month="2026-04")["total"] == "50.00"  # 10 m3 x 5.00
    first = api.close_month(month="2026-04")
    assert (first["issued"], first["accounts"]) == (1, 1)
    assert api.close_month(month="2026-04")["issued"] == 0  # running the close twice issues nothing new

    issued = api.bill(account="hh-0002", month="2026-04")
    assert issued["status"] == "issued" and issued["total"] == "50.00"
    body = json.loads(city.writer.store.con.execute("SELECT body FROM bills WHERE account = 'hh-0002'").fetchone()[0])
    assert (
        hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == issued["hash"]
    )
    entry = json.loads(
        city.writer.store.con.execute("SELECT body FROM entries WHERE type = 'bill_issued'").fetchone()[0]
    )
    assert entry["bill_hash"] == issued["hash"] and entry["total"] == "50.00"

    # A price change never rewrites an issued bill, but prices the next one.
    source = api.tariffs()["source"].replace('{ up_to = "180", price = "5.00" }', '{ up_to = "180", price = "6.00" }')
    assert api.load_tariffs(source=source)["version"] == 2
    assert api.bill(account="hh-0002", month="2026-04")["total"] == "50.00"
    assert api.bill(account="hh-0002", month="2026-05")["total"] == "60.00"

    # A refund is appended and shows on the next bill; nothing issued changes.
    adj = billing_ops.adjust(w, "hh-0002", "-12.50", "meter read high in April", "op-chen")
    may = api.bill(account="hh-0002", month=dt.datetime.fromtimestamp(adj["created_at"] / 1000, TZ).strftime("%Y-%m"))
    assert any(line["type"] == "adjustment" and line["amount"] == "-12.50" for line in may["lines"])
    assert api.bill(account="hh-0002", month="2026-04")["total"] == "50.00"
    assert api.verify()["ok"]


def test_unknown_account_is_refused_at_enrolment(city: City) -> None:
    with pytest.raises(EnrolmentError, match="no account"):
        city.device("wm-d02-000009", "water", account="nobody")


def test_parking_zone_change_lease_checkin_and_unpaid(city: City) -> None:
    w = city.writer
    billing_ops.add_account(w, "hh-0003", "Chen Jie")
    billing_ops.add_account(w, "biz-0001", "Noodle shop", "non-residential")
    city.device("ps-d01-000001", "parking", district="d01")  # district d01: zone class 1 by default
    parking_ops.lease(w, "ps-d01-000001", "hh-0003", at(2026, 3, 1), "op-chen")
    parking_ops.set_zone(w, "ps-d01-000001", 3, at(2026, 3, 10), "op-chen")
    city.readings(
        "ps-d01-000001",
        [
            (at(2026, 3, 5, 9, 0), 1),
            (at(2026, 3, 5, 9, 30), 0),  # zone 1: 2 quarters x 2.50 = 5.00
            (at(2026, 3, 12, 9, 0), 1),
            (at(2026, 3, 12, 9, 30), 0),  # zone 3: 2 quarters x 0.50 = 1.00
            (at(2026, 3, 20, 12, 0), 1),
            (at(2026, 3, 20, 12, 45), 0),  # checked in by the shop: 3 x 0.50 = 1.50
        ],
    )
    parking_ops.checkin(w, "ps-d01-000001", "biz-0001", at(2026, 3, 20, 12, 5), "op-chen")
    api = local_api(city.home, city.writer)
    household = api.bill(account="hh-0003", month="2026-03")
    park = next(line for line in household["lines"] if line["type"] == "parking")
    assert [(s["zone_class"], s["amount"]) for s in park["sessions"]] == [(1, "5.00"), (3, "1.00")]
    assert household["total"] == "6.00"
    shop = api.bill(account="biz-0001", month="2026-03")
    assert shop["total"] == "1.50"
    # Without a lease, a stay with no check-in is unpaid and listed for operators.
    parking_ops.lease(w, "ps-d01-000001", None, at(2026, 3, 25), "op-chen")
    city.readings("ps-d01-000001", [(at(2026, 3, 26, 10, 0), 1), (at(2026, 3, 26, 11, 0), 0)])
    unpaid = api.unpaid_stays(month="2026-03")
    assert [(u["space"], u["start"][:16]) for u in unpaid] == [("ps-d01-000001", "2026-03-26T10:00")]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=0, max_value=3_000), min_size=5, max_size=40), st.integers(1, 9))
def test_bill_totals_do_not_depend_on_how_readings_were_batched(
    tmp_path_factory: pytest.TempPathFactory, steps: list[int], block: int
) -> None:
    totals = []
    key = SigningKey.generate()
    for size in (1_000, block):
        city = City(tmp_path_factory.mktemp("batch") / "home")
        try:
            billing_ops.add_account(city.writer, "hh-9", "Batch")
            city.writer.enroll_device("wm-d02-000099", "water", "d02", key.verify_key.encode().hex(), "hh-9")
            city.keys["wm-d02-000099"], city.seq["wm-d02-000099"], city.kinds["wm-d02-000099"] = key, 0, "water"
            t0, span, value, pts = at(2026, 2, 20), at(2026, 4, 10) - at(2026, 2, 20), 0, []
            for i, step in enumerate(steps):
                value += step * 1000
                pts.append((t0 + span * i // (len(steps) - 1), value))
            city.readings("wm-d02-000099", pts, block=size)
            bill = local_api(city.home, city.writer).bill(account="hh-9", month="2026-03")
            totals.append((bill["total"], bill["lines"][0]["readings"]))
        finally:
            city.close()
    assert totals[0] == totals[1]


def test_bill_command_json(city: City) -> None:
    billing_ops.add_account(city.writer, "hh-0004", "Sun Li")
    city.device("gm-d02-000001", "gas", account="hh-0004")
    city.readings("gm-d02-000001", [(at(2026, 1, 1), 0), (at(2026, 2, 1), 400_000)])  # 400 m3 in January
    city.close()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "--home",
            str(city.home.root),
            "bill",
            "hh-0004",
            "--month",
            "2026-01",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    bill = json.loads(out.stdout)
    # 350 m3 x 2.61 = 913.50; 50 m3 x 2.83 = 141.50; 1055.00
    assert bill["total"] == "1055.00" and [t["amount"] for t in bill["lines"][0]["tiers"]] == ["913.50", "141.50"]
    city.writer = LedgerWriter.open(city.home)


FAULTS = st.lists(st.tuples(st.integers(0, 365), st.sampled_from(["drop", "lost", "silence"])), max_size=2)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(FAULTS, min_size=1, max_size=3))
def test_the_month_end_close_bills_exactly_what_a_draft_says(
    tmp_path_factory: pytest.TempPathFactory, meters: list[list[tuple[int, str]]]
) -> None:
    """The close takes a fast path for meters with clean data; it must agree with the full path."""
    from ledger.billing.bills import clean_meters, make_bill
    from ledger.billing.tariffs import default_tariffs

    city = City(tmp_path_factory.mktemp("close") / "home")
    try:
        billing_ops.add_account(city.writer, "hh-7", "Close")
        expect_clean = set()
        for m, faults in enumerate(meters):
            device = f"wm-d02-{m:06d}"
            city.device(device, "water", account="hh-7")
            broken = dict(faults)
            value, seq, rows = 10**6, 0, []
            for i in range(366):  # every 4 hours from Dec 31 20:00 to Mar 2: no silence unless injected
                value += 150 + 37 * (i % 5)
                if broken.get(i) == "drop":
                    value -= 5_000
                seq += 2 if broken.get(i) == "lost" else 1
                if broken.get(i) == "silence":
                    continue
                ts = at(2025, 12, 31, 20) + i * 4 * 3_600_000
                r = sign_reading(city.keys[device], device=device, kind="water", seq=seq, ts=ts, value=max(value, 0))
                rows.append(LedgeredReading(r, ts))
            city.writer.commit(Batch(readings=rows))
            if not broken or all(i > 356 for i in broken):  # faults after Mar 1 04:00 do not matter for Feb
                expect_clean.add(device)
        store, book = city.writer.store, default_tariffs()
        clean = clean_meters(store, "2026-02", TZ)
        assert expect_clean <= set(clean)  # the fast path is really taken for clean meters
        for month in ("2026-01", "2026-02"):
            fast = make_bill(store, book, 1, "hh-7", month, clean_meters(store, month, TZ))
            full = make_bill(store, book, 1, "hh-7", month)
            assert fast == full
    finally:
        city.close()
