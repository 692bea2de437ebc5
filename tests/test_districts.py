"""A city of district chains, with the real broker, the real `cityledger ingest` per district and
the real `cityledger anchor`: each district seals its own chain in its own DuckDB file, the city
chain anchors their heads, and `verify --districts` checks all of it from the city's first key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import duckdb
import pytest
from nacl.signing import SigningKey

from ledger.chain.protocol import ChainTopics, parse_ack
from ledger.home import Home
from ledger.ingest.service import IngestService
from ledger.service.homes import initialize
from ledger.service.operations import districts as district_ops
from ledger.service.scheduler import audit_job
from ledger.service.writer import AlreadyEnrolled, EnrolmentError, LedgerWriter
from tests.support.broker import client_log, close_client, subscribe, wait_for
from tests.support.stack import SimDevice, Stack
from tests.test_witness_stack import add_witness, witness

NOW = lambda: int(time.time() * 1000)  # noqa: E731
DISTRICTS = ("d01", "d02")
PER_DEVICE = 40


class City:
    """The city's home running the anchor, and one stack per district sharing its broker."""

    def __init__(self, root: Path, exits: ExitStack) -> None:
        self.city = Stack(root)
        exits.callback(self.city.close)  # closed last: it owns the broker
        self.city.broker.start()
        for d in DISTRICTS:
            self.city.cli("districts", "add", d, check=True)
        self.districts = {d: Stack(root / "districts" / d, workers=1, broker=self.city.broker) for d in DISTRICTS}
        for stack in self.districts.values():
            exits.callback(stack.close)
            stack.start()
        self.city.start_ingest(("anchor", "--every", "0.3"))

    def anchored(self) -> dict[str, int | None]:
        return {r["district"]: r["anchored_height"] for r in self.city.cli_json("districts", "list", "--json")}


@pytest.fixture
def city(tmp_path: Path) -> Iterator[City]:
    with ExitStack() as exits:
        yield City(tmp_path / "city", exits)


def _key() -> str:
    return SigningKey.generate().verify_key.encode().hex()


def _publish(stack: Stack, dev: SimDevice, n: int) -> None:
    """Publish n readings and wait for the district's end-to-end ack covering the last one."""
    client = stack.connect(dev)
    subscribe(client, dev.ack_topic)
    sent = [client.publish(dev.topic, dev.reading(value=i, ts=NOW()).payload(), qos=1) for i in range(n)]
    for info in sent:
        info.wait_for_publish(10)

    def acked() -> int:
        return max([(parse_ack(m.payload) or (0, ""))[0] for m in client_log(client).received(dev.ack_topic)] or [0])

    wait_for(lambda: acked() >= dev.seq, 60, f"{dev.device}'s ack for seq {dev.seq}")
    close_client(client)


def test_two_ingest_workers_on_two_districts_seal_two_chains_that_the_city_anchors(city: City) -> None:
    devices = {
        d: [stack.enroll(f"wm-{d}-{i:04d}", district=d) for i in range(3)] for d, stack in city.districts.items()
    }
    for d, stack in city.districts.items():
        for dev in devices[d]:
            _publish(stack, dev, PER_DEVICE)

    # Two chains, each with its own genesis, heights, readings and key; every header names its district.
    keys = {r["district"]: r["ledger_key"] for r in city.city.cli_json("districts", "list", "--json")}
    heads = {}
    for d, stack in city.districts.items():
        status = stack.status()
        assert status["readings"] == 3 * PER_DEVICE
        heads[d] = status["height"]
        receipt = stack.home.root / "receipt.json"
        stack.cli("receipt", devices[d][0].device, "1", "--out", str(receipt), check=True)
        assert json.loads(receipt.read_text())["block"]["chain"] == d
        other = keys["d02" if d == "d01" else "d01"]
        assert stack.cli("verify-receipt", str(receipt), "--ledger-key", keys[d]).returncode == 0
        assert stack.cli("verify-receipt", str(receipt), "--ledger-key", other).returncode == 1
    geneses = [stack.api.block_hashes(heights=[0]) for stack in city.districts.values()]
    assert geneses[0] != geneses[1]

    # The anchor catches up with both heads, and the city chain holds nothing but its own entries.
    wait_for(lambda: city.anchored() == heads, 30, f"the city anchoring both district heads {heads}")
    city_status = city.city.status()
    assert city_status["readings"] == 0 and city_status["height"] >= 3

    # A district's reading proven to someone who trusts only the city's first key.
    city_key = city.city.home.trusted_key.read_text().strip()
    d01 = city.districts["d01"]
    anchored = d01.home.root / "anchored.json"
    d01.cli("receipt", devices["d01"][1].device, "2", "--anchored", "--out", str(anchored), check=True)
    out = d01.cli("verify-receipt", str(anchored), "--ledger-key", city_key)
    assert out.returncode == 0 and "city_signature" in out.stdout, out.stdout
    assert d01.cli("verify-receipt", str(anchored), "--ledger-key", keys["d01"]).returncode == 1

    report = json.loads(city.city.cli("verify", "--districts", "--json").stdout)
    assert report["ok"], report["failure"]
    assert set(report["districts"]) == set(DISTRICTS)
    assert {d: r["readings"] for d, r in report["districts"].items()} == {d: 3 * PER_DEVICE for d in DISTRICTS}
    assert {d: r["anchored_height"] for d, r in report["districts"].items()} == heads
    assert report["anchors"] >= 2 and report["anchor_failure"] is None

    # The human summary shows each chain and the anchors.
    text = city.city.cli("verify", "--districts").stdout
    assert "d01" in text and "d02" in text and "all held by their district chains" in text


def test_a_district_chain_cut_back_after_anchoring_fails_the_city_audit(city: City) -> None:
    d02 = city.districts["d02"]
    dev = d02.enroll("wm-d02-0001", district="d02")
    _publish(d02, dev, PER_DEVICE)
    head = d02.status()["height"]
    wait_for(lambda: city.anchored()["d02"] == head, 30, "the city anchoring d02's head")
    d02.stop_ingest()  # let go of the file, as someone restoring an older copy would

    con = duckdb.connect(str(d02.home.database))
    try:  # the newest block vanishes: the chain that is left is still intact on its own
        con.execute("DELETE FROM readings WHERE height = ?", [head])
        con.execute("DELETE FROM entries WHERE height = ?", [head])
        con.execute("DELETE FROM blocks WHERE height = ?", [head])
    finally:
        con.close()
    assert json.loads(d02.cli("verify", "--json").stdout)["ok"]

    out = city.city.cli("verify", "--districts", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 1 and not report["ok"]
    assert report["districts"]["d02"]["ok"] and report["districts"]["d01"]["ok"]
    assert report["failure"].startswith(f"district d02 has no block {head}")


def test_a_home_is_a_city_of_district_chains_or_ledgers_readings_itself(tmp_path: Path) -> None:
    city = Home(tmp_path / "city")
    initialize(city)
    writer = LedgerWriter.open(city)
    try:
        assert (
            district_ops.add_district(writer, "d01")["ledger_key"]
            == Home(tmp_path / "city" / "districts" / "d01").trusted_key.read_text().strip()
        )
        with pytest.raises(AlreadyEnrolled):
            district_ops.add_district(writer, "d01")
        for name in ("ledger", "witness", "D01", ""):
            with pytest.raises(EnrolmentError, match="invalid district"):
                district_ops.add_district(writer, name)
        with pytest.raises(ValueError, match="district chains"):  # its ingest would take every district's readings
            IngestService(city, writer, host="127.0.0.1", port=1, username="ingest", password="-")
    finally:
        writer.close()

    single = Home(tmp_path / "single")
    initialize(single)
    writer = LedgerWriter.open(single)
    try:
        writer.enroll_device("wm-d01-1", "water", "d01", _key())
        with pytest.raises(EnrolmentError, match="ledgers readings itself"):
            district_ops.add_district(writer, "d02")
        with pytest.raises(EnrolmentError, match="invalid district"):
            writer.enroll_device("wm-x-1", "water", "ledger", _key())
    finally:
        writer.close()


def test_a_district_keeps_its_own_devices_and_the_city_keeps_none(city: City) -> None:
    d01 = city.districts["d01"]
    out = d01.cli(
        "devices", "enroll", "--id", "wm-d02-9", "--kind", "water", "--district", "d02", "--public-key", _key()
    )
    assert out.returncode == 2 and "district d01's devices only" in out.stderr
    out = city.city.cli(
        "devices", "enroll", "--id", "wm-d01-9", "--kind", "water", "--district", "d01", "--public-key", _key()
    )
    assert out.returncode == 2 and "district chains" in out.stderr
    # One broker, one login namespace: an id taken in one district is refused in another.
    city.districts["d02"].enroll("shared-id", district="d02")
    out = d01.cli(
        "devices", "enroll", "--id", "shared-id", "--kind", "water", "--district", "d01", "--public-key", _key()
    )
    assert out.returncode == 2 and "another district" in out.stderr
    # Each district's services log in under names of their own.
    assert json.loads(d01.home.service_secret("ingest").read_text())["username"] == "d01.ingest"
    assert Home(d01.home.root).broker == city.city.home.broker
    # A district's device reads its own district's checkpoint, which names that chain.
    dev = d01.enroll("wm-d01-0001", district="d01")
    client = d01.connect(dev)
    checkpoint = ChainTopics("d01").checkpoint
    subscribe(client, checkpoint)
    got = wait_for(lambda: client_log(client).received(checkpoint), 20, "the retained district checkpoint")
    assert json.loads(got[-1].payload)["header"]["chain"] == "d01"
    close_client(client)


def test_a_witness_follows_one_district_chain(city: City, tmp_path: Path) -> None:
    d01 = city.districts["d01"]
    key = {r["district"]: r["ledger_key"] for r in city.city.cli_json("districts", "list", "--json")}["d01"]
    password, store = add_witness(d01, "w-d01", tmp_path), tmp_path / "w-d01"
    with witness(d01, store, "w-d01", password, key, extra=("--district", "d01")) as w:
        w.wait_connected()
        _publish(d01, d01.enroll("wm-d01-0001", district="d01"), 10)
        head = d01.status()["height"]
        wait_for(lambda: w.holds_through(head), 30, f"the witness holding d01's head {head}")
    assert d01.cli("verify", "--witness", str(store)).returncode == 0


def test_the_city_dashboard_shows_how_far_each_district_is_anchored(
    city: City, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard import data
    from tests.test_dashboard_app import clean, go, sign_in, texts

    password = tmp_path / "op.password"
    password.write_text("a long operator password 1\n")
    city.city.cli(
        "operators",
        "add",
        "--id",
        "op-city",
        "--name",
        "City desk",
        "--districts",
        "all",
        "--password-file",
        str(password),
        check=True,
    )
    heads = {d: s.status()["height"] for d, s in city.districts.items()}
    wait_for(lambda: city.anchored() == heads, 30, "the city anchoring both district heads")
    monkeypatch.setenv("CITYLEDGER_HOME", str(city.city.home.root))
    data.CACHE.forget()
    try:
        page = texts(clean(go(sign_in("operator", "op-city", "a long operator password 1"), "operator_ledger")))
    finally:
        data.CACHE.forget()
    assert "District chains" in page
    for d, height in heads.items():
        assert f"{d},{height}," in page  # the table's row: district, anchored height, ...


def test_the_anchor_follows_key_rotations_and_resumes_after_a_restart(city: City) -> None:
    d01 = city.districts["d01"]
    dev = d01.enroll("wm-d01-0001", district="d01")

    def anchored_at_head() -> None:
        head = d01.status()["height"]
        wait_for(lambda: city.anchored()["d01"] == head, 30, f"the city anchoring d01 at {head}")

    _publish(d01, dev, 5)
    d01.cli("rotate-ledger-key", check=True)  # while the anchor runs: it must learn the new key
    _publish(d01, dev, 5)
    anchored_at_head()

    city.city.stop_ingest()  # the anchor is down: d01's headers wait in its session
    d01.cli("rotate-ledger-key", check=True)
    _publish(d01, dev, 5)
    city.city.start_ingest(("anchor", "--every", "0.3"))
    anchored_at_head()

    assert city.city.cli_json("witnesses", "reports", "--json") == []  # no alarm on the way
    report = audit_job(city.city.home)  # the scheduler's audit of a city covers its districts
    assert report["ok"], report["failure"]
    assert report["districts"]["d01"]["readings"] == 15
    assert json.loads(city.city.home.last_audit.read_text())["anchors"] == report["anchors"] > 0
