"""Ingest as several worker processes on one MQTT 5 shared subscription, with the real
broker and the real `cityledger ingest --workers N`.

The end-to-end suite already runs every outcome through two workers
(tests/test_end_to_end.py); here is what only workers can get wrong: the
share, a worker dying, the registry changing under them, and sessions left
behind when the number of workers changes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger.chain.protocol import Reading, parse_ack, parse_reading, sign_reading
from ledger.chain.records import QuarantineRow
from ledger.ingest.intake import Incoming, Screened
from ledger.ingest.workers import HandOver, WorkerPool, pack, unpack, worker_count
from tests.support.broker import client_log, close_client, subscribe, wait_for
from tests.support.stack import SimDevice, Stack

NOW = lambda: int(time.time() * 1000)  # noqa: E731


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (the spawned workers, and multiprocessing's helper)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _workers(stack: Stack) -> list[int]:
    assert stack.ingest is not None
    return [
        p
        for p in _children(stack.ingest.pid)
        if b"multiprocessing.spawn" in Path(f"/proc/{p}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()
    ]


def _send(stack: Stack, devices: list[SimDevice], per_device: int) -> None:
    for dev in devices:
        client = stack.connect(dev)
        sent = [
            client.publish(
                dev.topic, dev.reading(value=n % 2 if dev.kind == "parking" else n, ts=NOW()).payload(), qos=1
            )
            for n in range(per_device)
        ]
        for info in sent:  # the broker has them (PUBACK) before the device goes away
            info.wait_for_publish(10)
        close_client(client)


def test_the_hand_over_format_round_trips_every_outcome() -> None:
    key = SigningKey(b"\x01" * 32)
    r = sign_reading(key, device="wm-d01-000001", kind="water", seq=3, ts=1_764_000_000_000, value=9)
    payload = r.payload()
    msg = Incoming("city/d01/water/wm-d01-000001/reading", payload, 17)
    row = QuarantineRow(17, "city/x", "malformed", None, "not JSON", b"{")
    parsed = parse_reading(payload)
    assert isinstance(parsed, Reading)
    screened = Screened(msg, parsed, "ab" * 32)
    readings, others = unpack(pickle.loads(pickle.dumps(pack([screened, row, ("wm-d01-000001", "online", 3)]))))
    assert others == [row, ("wm-d01-000001", "online", 3)]
    assert readings is not None and readings.outcomes() == [screened]
    assert readings.readings.leaf == [payload] and readings.readings.sig_bytes == [r.sig_bytes()]
    # Read in canonical form, its payload is its leaf: the same bytes object, pickled once.
    assert readings.readings.leaf[0] is readings.payload[0]


def test_a_payload_in_another_spelling_keeps_its_bytes_and_gets_its_canonical_leaf() -> None:
    r = sign_reading(SigningKey(b"\x01" * 32), device="wm-d01-000001", kind="water", seq=3, ts=5, value=9)
    spaced = json.dumps(r.as_dict()).encode()  # valid, not canonical
    parsed = parse_reading(spaced)
    assert isinstance(parsed, Reading)
    readings, _ = unpack(pack([Screened(Incoming("t", spaced, 1), parsed, "k")]))
    assert readings is not None and readings.payload == [spaced]  # for a quarantine row, should it come to that
    assert readings.readings.leaf == [r.leaf_data()] and r.leaf_data() != spaced


def test_a_hand_over_is_acknowledged_only_to_the_worker_process_that_sent_it() -> None:
    """Numbers restart with each worker process: an ack meant for a dead one must not reach its successor."""
    pool = WorkerPool([])
    ours, theirs = multiprocessing.Pipe()
    pool.conns[1], pool.locks[1], pool.incarnations[1] = ours, threading.Lock(), 2
    pool.ack(HandOver(1, 1, 7, 0, None, []))  # from the worker's first process
    assert not theirs.poll(0.1)
    pool.ack(HandOver(1, 2, 7, 0, None, []))
    assert theirs.poll(1) and theirs.recv() == ("ack", 7)


def test_two_workers_share_the_readings_of_two_districts(tmp_path: Path) -> None:
    with Stack(tmp_path / "home", workers=2) as stack:
        devices = [stack.enroll(f"wm-{d}-{i:06d}", district=d) for d in ("d01", "d02") for i in range(6)]
        _send(stack, devices, 50)
        wait_for(lambda: stack.status()["readings"] == 600, 60, "600 readings ledgered")
        assert len(_workers(stack)) == 2
        stack.stop_ingest()
    log = stack.ingest_log.read_text()
    shares = [int(n) for n in re.findall(r"worker \d screened (\d+) messages", log)]
    assert len(shares) == 2 and all(n > 0 for n in shares) and sum(shares) >= 600, log
    assert stack.cli("verify").returncode == 0


def test_a_killed_worker_is_restarted_and_nothing_it_held_is_lost(tmp_path: Path) -> None:
    with Stack(tmp_path / "home", workers=2) as stack:
        devices = [stack.enroll(f"em-d01-{i:06d}", kind="electricity") for i in range(8)]
        clients = []
        for dev in devices:
            client = stack.connect(dev)
            subscribe(client, dev.ack_topic)
            clients.append(client)
        for n in range(40):
            for dev, client in zip(devices, clients):
                client.publish(
                    dev.topic, dev.reading(value=n % 2 if dev.kind == "parking" else n, ts=NOW()).payload(), qos=1
                )
            if n == 10:
                os.kill(_workers(stack)[0], signal.SIGKILL)
        wait_for(lambda: stack.status()["readings"] == 320, 60, "320 readings ledgered after a worker died")
        wait_for(lambda: len(_workers(stack)) == 2, 30, "the worker restarted")
        for dev, client in zip(devices, clients):
            wait_for(
                lambda client=client, dev=dev: any(
                    (a := parse_ack(m.payload)) and a[0] == 40 for m in client_log(client).received(dev.ack_topic)
                ),
                30,
                f"ack 40 for {dev.device}",
            )
            close_client(client)
        status = stack.status()
        assert status["readings"] == 320 and status["quarantined"] == 0
        assert "restarting it" in stack.ingest_log.read_text()


def test_a_device_enrolled_while_workers_run_is_ledgered_not_unknown(tmp_path: Path) -> None:
    with Stack(tmp_path / "home", workers=2) as stack:
        _send(stack, [stack.enroll("gm-d02-000001", kind="gas", district="d02")], 1)
        wait_for(lambda: stack.status()["readings"] == 1, 30, "the first device's reading")
        late = stack.enroll("gm-d02-000002", kind="gas", district="d02")  # pushed to the running workers
        _send(stack, [late], 5)
        wait_for(lambda: stack.status()["readings"] == 6, 30, "the new device's readings")
        assert stack.status()["quarantined"] == 0


def _subscribed(stack: Stack, dev: SimDevice) -> None:
    """Re-send one reading, as a device does until it is acked, until it is ledgered: then
    whatever now consumes the readings is subscribed (the extra copies are duplicates)."""
    before = stack.status()["readings"]
    client = stack.connect(dev)
    payload = dev.reading(value=0, ts=NOW()).payload()

    def ledgered() -> bool:
        client.publish(dev.topic, payload, qos=1)
        return stack.status()["readings"] > before

    try:
        wait_for(ledgered, 30, "a consumer of the readings", every=0.5)
    finally:
        close_client(client)


def test_fewer_workers_after_a_restart_leave_no_share_behind(tmp_path: Path) -> None:
    with Stack(tmp_path / "home", workers=3) as stack:
        devices = [stack.enroll(f"ps-d03-{i:06d}", kind="parking", district="d03") for i in range(4)]
        _send(stack, devices, 5)
        wait_for(lambda: stack.status()["readings"] == 20, 30, "first readings")
        for workers in (1, 0):
            stack.stop_ingest()
            stack.workers = workers
            stack.start_ingest()
            _subscribed(stack, devices[0])
            before = stack.status()["readings"]
            # Were workers 2 and 3 still subscribed, their shares would wait for them.
            _send(stack, devices, 30)
            wait_for(
                lambda before=before: stack.status()["readings"] == before + 120,
                30,
                f"every reading with {workers} workers",
            )
    assert "ended the broker session of idle worker login ingest-w3" in stack.ingest_log.read_text()


def test_the_worker_count_defaults_to_one_per_core_and_none_on_a_single_core() -> None:
    assert worker_count("auto", cores=2) == 2
    assert worker_count("AUTO", cores=32) == 8
    assert worker_count("auto", cores=1) == 0
    assert worker_count("3") == 3 and worker_count(0) == 0
    for bad in ("-1", "65", "two"):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad)
