"""Nothing wedges a device (issue 15.2), with the real agent, Mosquitto and `cityledger ingest`.

The ack is the ledger's contiguous prefix, so one reading the ledger can never
take would hold a device's ack back for good and fill its outbox. Two ways that
happened: a key rotation while readings signed under the old key were unsent, and
a reading that can never verify (corrupt flash). The first must lose nothing; the
second is settled by an operator's write-off, after which the ack passes it and the
agent drops it, saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from edge.agent import AgentSettings, DeviceAgent, DeviceIdentity
from edge.netloop import Backoff, NetLoop
from edge.outbox import Outbox
from ledger.chain.protocol import Reading
from tests.support.broker import wait_for
from tests.support.stack import SimDevice, Stack

QUICK = AgentSettings(resend_after=0.5, resend_max=1.0)


class Device:
    """The real device agent for an enrolled SimDevice, on its own network loop thread."""

    def __init__(self, stack: Stack, dev: SimDevice) -> None:
        identity = DeviceIdentity(dev.device, dev.kind, dev.district, dev.key, dev.device, dev.password)
        self.outbox = Outbox(stack.home.root / "device-outbox.sqlite")
        self.agent = DeviceAgent(identity, self.outbox, host="127.0.0.1", port=stack.broker.port, settings=QUICK)
        self.loop = NetLoop(tick_every=0.05, backoff=Backoff(initial=0.1, maximum=0.5))
        self.loop.add(self.agent)
        self.stop = threading.Event()
        self.thread = self.loop.start(self.stop)

    def call(self, fn: Any) -> Any:
        return self.loop.call_soon(fn).result(timeout=10)

    def record(self, n: int = 1) -> list[Reading]:
        return [self.call(lambda i=i: self.agent.record(time.time_ns() // 1_000_000, 1000 + i)) for i in range(n)]

    def acked_up_to(self, seq: int) -> bool:
        return self.agent.acked_seq >= seq and self.outbox.count(self.agent.device) == 0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        self.outbox.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path / "home") as s:
        yield s


@pytest.fixture
def device(stack: Stack) -> Iterator[Device]:
    d = Device(stack, stack.enroll("wm-d01-000001"))
    wait_for(lambda: d.agent.ready, 20, "the agent connected")
    try:
        yield d
    finally:
        d.close()


def bad_signatures(stack: Stack, device: str) -> list[dict[str, Any]]:
    return [q for q in stack.api.quarantine(device=device) if q["reason"] == "bad_signature"]


def test_a_key_rotation_with_readings_unsent_loses_none(stack: Stack, device: Device) -> None:
    name = device.agent.device
    device.record(3)
    wait_for(lambda: device.acked_up_to(3), 30, "the first readings acknowledged")

    stack.stop_ingest()  # readings 4-7 are signed under the old key and wait, unledgered
    old_key = [r.sig for r in device.record(4)]
    public_key, from_seq = device.call(lambda: device.agent.rotate_key(SigningKey.generate()))
    assert from_seq == 8
    rotated = stack.cli_json(
        "devices", "rotate-key", name, "--public-key", public_key, "--from-seq", str(from_seq), "--operator", "op-li"
    )
    assert rotated["from_seq"] == 8 and rotated["operator"] == "op-li"
    new_key = device.record(3)  # seqs 8-10 under the new key
    assert {r.seq for r in new_key} == {8, 9, 10} and len(old_key) == 4
    stack.start_ingest()

    wait_for(lambda: device.acked_up_to(10), 60, "every reading, old key and new, acknowledged")
    assert stack.status()["readings"] == 10
    assert bad_signatures(stack, name) == []
    history = stack.cli_json("devices", "keys", name)
    assert [(k["public_key"], k["from_seq"]) for k in history][-1] == (public_key, 8)
    assert stack.cli("verify", "--deep").returncode == 0
    for seq in (5, 9):  # receipts name the key each reading was signed with
        receipt = stack.api.receipt(device=name, seq=seq)
        assert (receipt["device_key"] == public_key) == (seq >= 8)


def test_a_rotation_cannot_claim_seqs_already_ledgered(stack: Stack, device: Device) -> None:
    name = device.agent.device
    device.record(2)
    wait_for(lambda: device.acked_up_to(2), 30, "two readings acknowledged")
    out = stack.cli(
        "devices",
        "rotate-key",
        name,
        "--public-key",
        SigningKey.generate().verify_key.encode().hex(),
        "--from-seq",
        "2",
        "--operator",
        "op-li",
    )
    assert out.returncode != 0 and "from-seq must be above 2" in out.stderr


def test_a_written_off_reading_releases_the_ack_and_the_agent_drops_it(
    stack: Stack, device: Device, caplog: pytest.LogCaptureFixture
) -> None:
    name, honest = device.agent.device, device.agent.identity
    device.record(1)
    # Corrupt flash: seq 2 is stored with a signature that can never verify.
    device.call(lambda: setattr(device.agent, "identity", replace(honest, key=SigningKey.generate())))
    device.record(1)
    device.call(lambda: setattr(device.agent, "identity", honest))
    device.record(3)  # seqs 3-5 verify and are ledgered, but the ack stays at 1
    wait_for(
        lambda: stack.status()["readings"] == 4 and bad_signatures(stack, name) and device.agent.acked_seq == 1,
        30,
        "four readings ledgered, seq 2 quarantined, and the ack for seq 1 received",
    )
    assert device.outbox.count(name) == 4  # the ack goes no further: seq 2 holds it back
    held = stack.cli_json("devices", "held-back", "--json")
    assert [(h["device"], h["missing_from"], h["missing_to"]) for h in held] == [(name, 2, 2)]

    refused = stack.cli("devices", "write-off", name, "--seqs", "2-3", "--reason", "x", "--operator", "op-li")
    assert refused.returncode != 0 and "ledgered" in refused.stderr  # only what is missing

    with caplog.at_level(logging.WARNING, logger="cityledger.device"):
        out = stack.cli_json(
            "devices", "write-off", name, "--seqs", "2", "--reason", "corrupt flash, replaced", "--operator", "op-li"
        )
        assert (out["from_seq"], out["to_seq"], out["operator"]) == (2, 2, "op-li")
        wait_for(lambda: device.acked_up_to(5), 30, "the ack past the written-off seq and the outbox empty")
    assert any("wrote off seqs 2-2" in r.getMessage() and "dropped 1" in r.getMessage() for r in caplog.records)

    assert stack.cli_json("devices", "held-back", "--json") == []
    [entry] = stack.cli_json("devices", "write-offs", name)
    assert (entry["reason"], entry["operator"]) == ("corrupt flash, replaced", "op-li")
    device.record(1)
    wait_for(lambda: device.acked_up_to(6), 30, "the device carries on")
    assert stack.cli("verify", "--deep").returncode == 0
