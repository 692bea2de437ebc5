"""`cityledger fleet` against a real stack: provisioning, publishing, recovery, clean stop."""

from __future__ import annotations

import json
import signal
import sys

from edge.fleet import plan_fleet
from edge.identity import DeviceIdentity, device_dir
from ledger.processes import PIPE, start
from tests.support.broker import wait_for
from tests.support.stack import Stack


def test_fleet_provisions_publishes_and_recovers_a_half_enrolled_device(stack: Stack) -> None:
    plan = plan_fleet(4, ("d01", "d02"))
    # A device that enrolled, then crashed before saving its broker login.
    first = plan[0]
    crashed = DeviceIdentity.generate(first.device, first.kind, first.district)
    crashed.save_key(device_dir(stack.home, first.device))
    stack.api.enroll_device(
        device=first.device, kind=first.kind, district=first.district, public_key=crashed.public_key_hex
    )

    proc = start(
        [sys.executable, "-m", "ledger.cli", "fleet", "--devices", "4", "--interval", "0.5", "--districts", "d01,d02"],
        env=stack.env,
        stdout=PIPE,
        stderr=PIPE,
        text=True,
    )
    try:

        def every_device_ledgered() -> bool:
            rows = stack.api.recent_readings(limit=200)
            return {r["device"] for r in rows} >= {p.device for p in plan}

        wait_for(every_device_ledgered, 60, "readings of all 4 devices ledgered")
        devices = {d["device"]: d for d in stack.api.devices()}
        assert devices[first.device]["public_key"] == crashed.public_key_hex  # same key, new login
        wait_for(lambda: all(d["online"] == "online" for d in stack.api.devices()), 20, "status online")
    finally:
        proc.stop(signal.SIGTERM, timeout=60)
        out, err = proc.out, proc.err
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["devices"] == 4 and stats["generated"] >= 4
    wait_for(lambda: all(d["online"] == "offline" for d in stack.api.devices()), 20, "status offline after stop")
    assert stack.cli("verify").returncode == 0
