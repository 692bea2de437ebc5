"""`cityledger bench`: its MQTT packet codec, its bulk enrolment, and one short real run.

The run asserts what the bench reports and that it is self-consistent, never how
fast this machine is: timings belong in docs/benchmarks.md.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from bench.city import (
    BenchError,
    BenchOptions,
    _fresh_home,
    bottleneck,
    device_specs,
    encode_reading,
    parse_machine_busy,
    parse_proc_stat,
    sign_supply,
)
from bench.loadgen import weighted_percentile
from broker.access import hash_password
from broker.mqtt import wire
from ledger.chain.protocol import Reading, parse_reading, sign_reading, verify_reading
from ledger.home import Home
from ledger.service import rpc
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.writer import AlreadyEnrolled, EnrolmentError, LedgerWriter

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- MQTT 3.1.1 codec


@pytest.mark.parametrize(
    "n, encoded",
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_matches_the_spec_table(n: int, encoded: bytes) -> None:
    assert wire.encode_remaining_length(n) == encoded
    assert wire.decode_remaining_length(b"\x30" + encoded + b"rest", 1) == (n, 1 + len(encoded))


def test_remaining_length_refuses_what_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        wire.encode_remaining_length(268_435_456)
    with pytest.raises(ValueError):
        wire.encode_remaining_length(-1)
    with pytest.raises(ValueError):
        wire.decode_remaining_length(b"\x30\xff\xff\xff\xff\x01", 1)
    assert wire.decode_remaining_length(b"\x30\x80", 1) is None  # the buffer ends inside it


def test_connect_packet_bytes() -> None:
    packet = wire.connect_packet("dev", "dev", "pw", keepalive=0)
    body = b"\x00\x04MQTT\x04\xc2\x00\x00" + b"\x00\x03dev" + b"\x00\x03dev" + b"\x00\x02pw"
    assert packet == b"\x10" + bytes([len(body)]) + body
    assert wire.connect_packet("d", "d", "p", clean_session=False)[9] == 0xC0


def test_subscribe_puback_and_disconnect_bytes() -> None:
    assert wire.subscribe_packet(1, "a/b", qos=0) == b"\x82\x08\x00\x01\x00\x03a/b\x00"
    assert wire.puback_packet(0x1234) == b"\x40\x02\x12\x34"
    assert wire.DISCONNECT_PACKET == b"\xe0\x00"
    with pytest.raises(ValueError):
        wire.puback_packet(0)
    with pytest.raises(ValueError):
        wire.subscribe_packet(65_536, "a")


@pytest.mark.parametrize("qos, packet_id, retain", [(0, None, False), (1, 7, False), (1, 65_535, True), (2, 1, False)])
def test_publish_round_trips(qos: int, packet_id: int | None, retain: bool) -> None:
    payload = b'{"seq":3}' * 30  # long enough for a two-byte remaining length
    packet = wire.publish_packet("city/d01/water/x/ack", payload, qos=qos, packet_id=packet_id, retain=retain)
    pubacks, packets, used = wire.split_packets(packet)
    assert (pubacks, used, len(packets)) == (0, len(packet), 1)
    msg = wire.parse_publish(*packets[0])
    assert msg == wire.Publish("city/d01/water/x/ack", payload, qos, retain, packet_id)


def test_publish_needs_a_packet_id_exactly_when_qos_is_not_zero() -> None:
    with pytest.raises(ValueError):
        wire.publish_packet("t", b"x", qos=1)
    with pytest.raises(ValueError):
        wire.publish_packet("t", b"x", qos=0, packet_id=1)
    with pytest.raises(ValueError):
        wire.publish_packet("t", b"x", qos=3, packet_id=1)


def test_split_packets_counts_pubacks_and_keeps_a_partial_packet() -> None:
    ack = wire.publish_packet("city/d01/water/x/ack", b'{"block":"h","seq":9}', qos=0, retain=True)
    stream = wire.puback_packet(1) + wire.puback_packet(2) + ack + wire.puback_packet(3) + b"\xd0\x00" + ack[:5]
    pubacks, packets, used = wire.split_packets(stream)
    assert pubacks == 3
    assert [first for first, _ in packets] == [ack[0], 0xD0]
    assert used == len(stream) - 5
    assert wire.split_packets(bytearray(stream[used:] + ack[5:]))[1:] == ([(ack[0], ack[2:])], len(ack))


def test_split_packets_on_every_cut_of_a_stream() -> None:
    stream = wire.puback_packet(5) + wire.publish_packet("t", b"p" * 200, qos=1, packet_id=4) + wire.puback_packet(6)
    for cut in range(len(stream) + 1):
        a_pubacks, a_packets, used = wire.split_packets(stream[:cut])
        b_pubacks, b_packets, rest = wire.split_packets(stream[used:])
        assert used <= cut and used + rest == len(stream)
        assert (a_pubacks + b_pubacks, len(a_packets) + len(b_packets)) == (2, 1)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 126, 127, 128, 300, 16_383, 16_384, 20_000]), max_size=6), data=st.data())
def test_split_packets_reads_every_length_the_same_at_any_cut(sizes: list[int], data: st.DataObject) -> None:
    """Remaining lengths of one, two and three bytes, the short ones decoded inline, cut anywhere."""
    bodies = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(bytes([0xD0]) + wire.encode_remaining_length(len(b)) + b for b in bodies)
    cut = data.draw(st.integers(0, len(stream)))
    _, first, used = wire.split_packets(stream[:cut])
    _, rest, more = wire.split_packets(stream[used:])
    assert used <= cut and used + more == len(stream)
    assert [b for _, b in first + rest] == bodies


def test_connack_and_suback() -> None:
    assert wire.parse_connack(b"\x00\x00") == 0
    assert wire.parse_connack(b"\x00\x05") == 5
    assert wire.parse_suback(b"\x00\x01\x00") == (1, [0])
    assert wire.parse_suback(b"\x00\x02\x80") == (2, [0x80])
    with pytest.raises(ValueError):
        wire.parse_connack(b"\x00")
    with pytest.raises(ValueError):
        wire.parse_publish(0x40, b"\x00\x01")


def test_packet_ids_cycle_through_the_valid_range() -> None:
    assert [wire.packet_id_for(s) for s in (1, 2, 65_535, 65_536, 65_537)] == [1, 2, 65_535, 1, 2]


# ---------------------------------------------------------------- readings and figures


def test_encoded_readings_equal_the_protocols_own() -> None:
    key = SigningKey(bytes(range(1, 33)))
    fast = encode_reading(key, "wm-d01-000042", "water", 7, 1_764_000_000_000, 123_456)
    assert (
        fast
        == sign_reading(key, device="wm-d01-000042", kind="water", seq=7, ts=1_764_000_000_000, value=123_456).payload()
    )


def test_a_supply_is_consecutive_publishes_of_valid_readings() -> None:
    seed = bytes(32)
    device, blob, raw = sign_supply(("bench-000001", "d02", "gas", seed, 5, 1_764_000_000_000))
    offsets = array("Q")
    offsets.frombytes(raw)
    assert device == "bench-000001" and len(offsets) == 6 and offsets[-1] == len(blob)
    key = SigningKey(seed).verify_key
    for i in range(5):
        msg = wire.parse_publish(*wire.split_packets(blob[offsets[i] : offsets[i + 1]])[1][0])
        assert (msg.topic, msg.qos, msg.packet_id) == ("city/d02/gas/bench-000001/reading", 1, i + 1)
        reading = parse_reading(msg.payload)
        assert isinstance(reading, Reading) and reading.seq == i + 1 and verify_reading(key, reading)
    assert [parse_reading(wire.parse_publish(*p).payload).ts for p in wire.split_packets(blob)[1]] == [
        1_764_000_000_000 - 4 + i for i in range(5)
    ]


def test_weighted_percentiles() -> None:
    pairs = [(0.5, 98), (1.0, 1), (3.0, 1)]
    assert weighted_percentile(pairs, 0.5) == 0.5
    assert weighted_percentile(pairs, 0.99) == 1.0
    assert weighted_percentile(pairs, 1.0) == 3.0
    assert weighted_percentile([], 0.5) is None
    with pytest.raises(ValueError):
        weighted_percentile(pairs, 1.5)


def test_proc_stat_parsing_survives_odd_command_names() -> None:
    text = "42 (a ) b (c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 10 5 20 0 1 0 100 1000 10"
    assert parse_proc_stat(text) == (7, 300.0, 15.0)


def test_machine_busy_ticks_leave_out_idle_and_iowait() -> None:
    assert parse_machine_busy("cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n") == 161.0


def test_window_and_supply_sizing() -> None:
    opt = BenchOptions(seconds=60, devices=1000, block_readings=5000, supply_rate=30_000)
    assert opt.warmup() == 5.0
    assert opt.window_per_device() == 10  # two blocks in flight across the fleet
    assert opt.readings_per_device() == 30_000 * 65 // 1000 + 10  # the rate for the whole run, plus a window
    assert BenchOptions(devices=100_000).window_per_device() == 2
    assert BenchOptions(window=3).window_per_device() == 3
    assert BenchOptions(seconds=3).warmup() == 1.0
    assert BenchOptions(devices=1000, districts=4).window_per_device() == 40  # two blocks in flight on each chain


def test_district_devices_are_spread_evenly_and_named_after_their_district() -> None:
    specs = device_specs(7, districts=3)
    assert [(s.device, s.district, s.kind) for s in specs] == [
        ("wm-d01-000001", "d01", "water"),
        ("wm-d02-000001", "d02", "water"),
        ("wm-d03-000001", "d03", "water"),
        ("em-d01-000002", "d01", "electricity"),
        ("em-d02-000002", "d02", "electricity"),
        ("em-d03-000002", "d03", "electricity"),
        ("gm-d01-000003", "d01", "gas"),
    ]
    assert len({s.seed for s in specs}) == 7
    assert [s.device for s in device_specs(2)] == ["bench-000000", "bench-000001"]


def test_a_given_home_that_holds_a_ledger_is_refused(tmp_path: Path) -> None:
    initialize(Home(tmp_path / "home"))
    with pytest.raises(BenchError, match="already holds a ledger"):
        _fresh_home(tmp_path / "home")
    home, temporary = _fresh_home(tmp_path / "empty")
    assert not temporary and home.root == (tmp_path / "empty").resolve()


# ---------------------------------------------------------------- bulk enrolment


def _rows(n: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {
            "device": f"bulk-{i:04d}",
            "kind": "water",
            "district": "d01",
            "public_key": SigningKey(bytes([i + 1]) * 32).verify_key.encode().hex(),
        }
        for i in range(start, start + n)
    ]


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[LedgerWriter]:
    home = Home(tmp_path / "home")
    initialize(home)
    w = LedgerWriter.open(home)
    yield w
    w.close()


def test_enroll_devices_seals_one_block_like_single_enrolments(writer: LedgerWriter) -> None:
    single = writer.enroll_device("single-1", "gas", "d02", SigningKey(b"\x99" * 32).verify_key.encode().hex())
    height = writer.height
    out = writer.enroll_devices(_rows(3))
    assert writer.height == height + 1
    assert out["block"] == writer.head_hash
    assert [d["device"] for d in out["devices"]] == ["bulk-0000", "bulk-0001", "bulk-0002"]
    con = writer.store.con
    entries = con.execute("SELECT type, body FROM entries WHERE height = ? ORDER BY idx", [writer.height]).fetchall()
    assert [t for t, _ in entries] == ["device_enrolled"] * 3
    single_body = json.loads(con.execute("SELECT body FROM entries WHERE height = ?", [height]).fetchone()[0])
    assert [set(json.loads(b)) for _, b in entries] == [set(single_body)] * 3
    passwd = writer.home.passwd.read_text()
    for login, row in zip(out["devices"], _rows(3)):
        rec = writer.store.device(login["device"])
        assert rec is not None and rec.status == "active" and rec.public_key == row["public_key"]
        assert writer.registry[login["device"]] == rec
        assert login["mqtt_username"] == login["device"] and f"{login['device']}:" in passwd
        salt = base64.b64decode(rec.mqtt_hash.split("$")[3])
        assert hash_password(login["mqtt_password"], salt=salt) == rec.mqtt_hash  # the one-time password works
        assert writer.store.device_key_for(login["device"], 1, writer.height) == row["public_key"]
    assert single["device"] in passwd


@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda rows: rows + [dict(rows[0], public_key=_rows(1, 9)[0]["public_key"])], "appears twice"),
        (lambda rows: rows + [dict(_rows(1, 9)[0], public_key=rows[0]["public_key"])], "appears twice"),
        (lambda rows: rows + [dict(_rows(1, 9)[0], kind="steam")], "kind must be"),
        (lambda rows: rows + [dict(_rows(1, 9)[0], device="bad id")], "invalid device id"),
        (lambda rows: rows + [dict(_rows(1, 9)[0], district="D 1")], "invalid district"),
        (lambda rows: rows + [dict(_rows(1, 9)[0], public_key="00" * 32)], "weak public key"),
        (lambda rows: rows + [dict(_rows(1, 9)[0], account="nobody")], "no account"),
        (lambda rows: [], "no devices"),
    ],
)
def test_enroll_devices_refuses_the_whole_batch(writer: LedgerWriter, bad: object, error: str) -> None:
    height = writer.height
    with pytest.raises(EnrolmentError, match=error):
        writer.enroll_devices(bad(_rows(2)))  # type: ignore[operator]
    assert writer.height == height and writer.store.device("bulk-0000") is None


def test_enroll_devices_refuses_taken_ids_and_keys(writer: LedgerWriter) -> None:
    writer.enroll_devices(_rows(2))
    with pytest.raises(AlreadyEnrolled):
        writer.enroll_devices(_rows(1, 1) + _rows(1, 5))
    with pytest.raises(EnrolmentError, match="already enrolled for bulk-0000"):
        writer.enroll_devices([dict(_rows(1)[0], device="other-1")])
    assert writer.store.device("bulk-0005") is None


def test_enroll_devices_is_reachable_through_the_api(writer: LedgerWriter) -> None:
    assert "enroll_devices" in rpc.REMOTE
    out = local_api(writer.home, writer).enroll_devices(rows=_rows(2))
    assert len(out["devices"]) == 2 and writer.store.device("bulk-0001") is not None


# ---------------------------------------------------------------- a real run


def _bench(tmpdir: Path, *args: str) -> dict[str, Any]:
    """`cityledger bench ARGS --json` on a temporary home in tmpdir; its JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYLEDGER_")}
    env["TMPDIR"] = str(tmpdir)
    argv = [sys.executable, "-m", "ledger.cli", "bench", *args, "--json"]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_short_bench_run_reports_every_figure(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--seconds", "3", "--devices", "20")
    for name in (
        "readings_per_s",
        "ingest_cpu_us_per_reading",
        "verify_us_per_signature",
        "ratio",
        "ack_p50_ms",
        "ack_p99_ms",
        "bytes_per_reading",
        "peak_rss_mb",
    ):
        assert isinstance(result[name], (int, float)) and result[name] > 0, name
    assert result["readings_in_window"] > 0
    assert result["readings_total"] >= result["readings_in_window"]
    assert result["acked_readings_timed"] > 0
    assert result["ack_p50_ms"] <= result["ack_p99_ms"] <= result["ack_max_ms"]
    assert 0 < result["used_bytes_per_reading"] <= result["bytes_per_reading"]
    assert result["quarantined"] == 0 and result["duplicates"] == 0
    assert result["devices"] == 20 and result["machine"]["cpus"] >= 1
    assert "bench --seconds 3 --devices 20 --json" in result["command"]
    assert result["bottleneck"]["limit"] in ("generator", "broker", "cores", "window")
    assert abs(sum(result["bottleneck"]["cpu_share"].values()) - 1) < 0.05
    assert not list(tmp_path.glob("cityledger-bench-*")), "the temporary home is removed after a good run"


def _cores(ingest: float, broker: float, loadgen: float, other: float = 0.0) -> dict[str, float]:
    return {
        "ingest": ingest,
        "broker": broker,
        "loadgen": loadgen,
        "other": other,
        "machine": ingest + broker + loadgen + other,
    }


@pytest.mark.parametrize(
    ("cores", "exhausted", "limit"),
    [
        (_cores(1.2, 0.4, 0.3), True, "generator"),  # ran dry: whatever the cores did
        (_cores(0.6, 0.3, 0.97), False, "generator"),  # one thread, one whole core
        (_cores(0.7, 0.96, 0.2), False, "broker"),
        (_cores(1.4, 0.35, 0.1), False, "cores"),  # 1.85 of 2 cores busy
        (_cores(0.5, 0.2, 0.1), False, "window"),  # 40 % busy: the devices waited for acks
    ],
)
def test_the_bench_names_what_set_the_rate(cores: dict[str, float], exhausted: bool, limit: str) -> None:
    verdict = bottleneck(2, cores, exhausted, 10)
    assert verdict["limit"] == limit
    assert verdict["machine_busy"] == round(cores["machine"] / 2, 2)
    assert verdict["cpu_share"]["ingest"] == round(cores["ingest"] / cores["machine"], 2)


def test_a_short_bench_run_on_district_chains_reports_each_district_and_the_anchor(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--seconds", "2", "--devices", "20", "--workers", "1", "--districts", "2")
    assert result["districts"] == 2 and result["devices"] == 20 and result["workers"] == 1
    per = result["per_district"]
    assert set(per) == {"d01", "d02"}
    for d in per.values():
        assert d["readings_in_window"] > 0 and d["readings"] > 0 and d["ingest_cpu_s"] > 0 and d["db_bytes"] > 0
        assert d["blocks"] == d["height"] + 1
    assert sum(d["readings_in_window"] for d in per.values()) == result["readings_in_window"]
    assert sum(d["readings"] for d in per.values()) == result["readings_total"]
    assert sum(d["blocks"] for d in per.values()) == result["blocks"]
    assert sum(d["db_bytes"] for d in per.values()) == result["db_bytes"]
    assert result["quarantined"] == 0 and result["duplicates"] == 0
    anchor = result["anchor"]
    assert anchor["caught_up_s"] is not None, anchor
    assert anchor["anchored_heights"] == anchor["district_heads"] == {d: per[d]["height"] for d in per}
    assert anchor["cpu_s"] >= 0 and anchor["cpu_s_total"] > 0 and anchor["city_blocks"] > 2
    assert set(anchor["blocks_behind_at_end"]) == {"d01", "d02"}
    assert not list(tmp_path.glob("cityledger-bench-*")), "the temporary home is removed after a good run"
