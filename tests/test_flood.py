"""A flood against the running system: one hostile but authenticated device, a hundred honest ones.

The hostile device (enrolled, its broker login valid) publishes garbage QoS 1 as fast
as it can for 30 seconds from its own process (`bench.flood`'s hostile device: random
bytes, broken JSON, deep nesting, NaN and floats, duplicate members, 1-8 KB payloads,
bad signatures, replays of its own seqs, claims to be other devices) while
`cityledger fleet --devices 100 --interval 1` publishes normally. Afterwards:
every honest reading is in the ledger, every hostile message is accounted for, the
hostile device is flagged and its quarantine rows are capped, and ingest's memory
stayed under a stated bound.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb

from bench.flood import (
    HOSTILE_DEVICE,
    HOSTILE_DISTRICT,
    HOSTILE_KIND,
    PRIMED,
    HostileConfig,
    finish_hostile,
    peak_rss_mb,
    start_hostile,
)
from broker.sessions import RECEIVE_MAXIMUM
from edge.fleet import OUTBOX_FILE
from edge.outbox import Outbox
from ledger.protocol import Reason
from tests.support.broker import wait_for
from tests.support.stack import Stack

FLOOD_SECONDS = 30
HONEST = 100
QUARANTINE_CAP = 1000  # `cityledger ingest --quarantine-cap` default: stored rows per device and hour
FLAG_THRESHOLD = 60  # `cityledger devices flagged` default: rejects per minute

# Ingest peak RSS bound, MB (VmHWM of the ingest process over the whole test).
#   baseline: Python, paho, pydantic, DuckDB with this ledger, after the fleet's 100 enrolments
#     and while sealing a block a second: measured 200-205 MB just before the flood.
#   inbox: at most RECEIVE_MAXIMUM (20000) unacknowledged messages, since ingest PUBACKs only
#     after the batch holding them commits. In the worst case, 20000 packets at the 8 KB
#     maximum would be ~170 MB with their Python objects (~350 B each), but this flood's
#     messages average ~600 B (8% are 1-8 KB, the rest at most 1 KB), so any 20000 of them
#     in a row hold ~12 MB of payload (standard deviation ~0.2 MB) plus ~7 MB of objects.
#   batch work: a 5000-message batch being classified, its rows in Arrow, DuckDB's buffers.
# Measured peak with the flood: 220-225 MB (ingest kept up: its inbox never filled). 300 MB
# leaves ~75 MB of margin. A queue that held the whole flood instead (120k-150k messages,
# 70-90 MB of payload, ~50 MB of objects) would reach 320-340 MB and fail.
INGEST_RSS_BOUND_MB = 300


def _flagged(stack: Stack, threshold: int) -> dict[str, dict[str, Any]]:
    return {r["device"]: r for r in stack.api.flagged_devices(minutes=60, threshold=threshold)}


def test_a_hostile_device_flooding_garbage_cannot_crowd_out_honest_devices(tmp_path: Path) -> None:
    assert RECEIVE_MAXIMUM == 20000, "INGEST_RSS_BOUND_MB is derived from this Receive Maximum"
    # Ingest as in production: blocks of up to 5000 messages or 1 s.
    with Stack(tmp_path / "home", block_readings=5000, block_seconds=1.0) as stack:
        assert stack.ingest is not None
        ingest_pid = stack.ingest.pid
        hostile = stack.enroll(HOSTILE_DEVICE, kind=HOSTILE_KIND, district=HOSTILE_DISTRICT)
        fleet_out, fleet_err = tmp_path / "fleet.out", tmp_path / "fleet.err"  # files: a full pipe would stall it
        with fleet_out.open("w") as out, fleet_err.open("w") as err:
            fleet = subprocess.Popen([sys.executable, "-m", "ledger.cli", "fleet", "--devices", str(HONEST),
                                      "--interval", "1"], env=stack.env, stdout=out, stderr=err)
        worker = None
        try:
            def all_online() -> bool:
                return sum(1 for s, _ in stack.api.device_statuses().values() if s == "online") >= HONEST
            wait_for(all_online, 90, f"all {HONEST} honest devices online")
            baseline_mb = peak_rss_mb(ingest_pid)

            worker = start_hostile(HostileConfig("127.0.0.1", stack.broker.port, hostile.device, hostile.password,
                                                 bytes(hostile.key).hex(), FLOOD_SECONDS))
            report = finish_hostile(worker, FLOOD_SECONDS + 90)
            sent = report["sent"]
            print(f"\nhostile: {json.dumps({k: v for k, v in report.items() if k != 'kinds'})}")
            # Every publish PUBACKed by the broker, on one connection: `sent` is exactly what ingest gets.
            assert report["refused"] == 0 and report["disconnects"] == []
            assert report["published"] == sent
            assert sent >= 500 * FLOOD_SECONDS, "not much of a flood"

            def hostile_accounted() -> bool:
                return _flagged(stack, 1).get(HOSTILE_DEVICE, {}).get("rejects", 0) >= sent
            wait_for(hostile_accounted, 120, f"ingest to count all {sent} hostile messages")
            assert stack.ingest is not None and stack.ingest.poll() is None, "ingest died under the flood"
        finally:
            fleet.send_signal(signal.SIGTERM)
            try:
                fleet.wait(timeout=60)
            finally:
                if fleet.poll() is None:
                    fleet.kill()
                    fleet.wait()
                if worker is not None and worker.poll() is None:
                    worker.kill()
                    worker.wait()
        assert fleet.returncode == 0, fleet_err.read_text()[-3000:]
        fleet_stats = json.loads(fleet_out.read_text().strip().splitlines()[-1])

        # What the honest devices generated: the outbox keeps each device's highest seq.
        with Outbox(stack.home.fleet / OUTBOX_FILE) as outbox:
            last_seq = {d: outbox.state(d).last_seq for d in outbox.devices()}
        assert len(last_seq) == HONEST and HOSTILE_DEVICE not in last_seq
        assert sum(last_seq.values()) == fleet_stats["generated"]
        # The fleet kept measuring through the flood: meters once a second, parking sensors on a change
        # or at least every 10th second (their heartbeat).
        at_least = {d: FLOOD_SECONDS // 10 if d.startswith("ps-") else FLOOD_SECONDS for d in last_seq}
        quiet = {d: n for d, n in last_seq.items() if n < at_least[d]}
        assert not quiet, f"devices that stopped measuring during the flood: {quiet}"
        expected_readings = sum(last_seq.values()) + PRIMED
        wait_for(lambda: stack.status()["readings"] >= expected_readings, 60,
                 f"all {expected_readings} readings ledgered (honest ones and the hostile device's primers)")

        status = stack.cli_json("status", "--json")
        assert status["readings"] == expected_readings
        assert status["quarantine_dropped"] > 0
        # Flagged for operators with its rate of rejects; honest devices have no rejects at all.
        flagged = {r["device"]: r for r in stack.cli_json("devices", "flagged", "--json")}
        assert set(flagged) == {HOSTILE_DEVICE}
        assert flagged[HOSTILE_DEVICE]["rejects"] == sent
        assert flagged[HOSTILE_DEVICE]["peak_rejects_per_minute"] >= FLAG_THRESHOLD
        assert set(_flagged(stack, 1)) == {HOSTILE_DEVICE}

        peak_mb = peak_rss_mb(ingest_pid)
        print(f"ingest peak RSS: {baseline_mb:.0f} MB before the flood, {peak_mb:.0f} MB peak; {sent} hostile "
              f"messages ({report['per_second']}/s); fleet {fleet_stats}")
        assert peak_mb < INGEST_RSS_BOUND_MB, f"ingest peak RSS {peak_mb:.0f} MB >= {INGEST_RSS_BOUND_MB} MB"
        stack.stop_ingest()

        con = duckdb.connect(str(stack.home.database), read_only=True)
        try:
            ledgered: dict[str, set[int]] = {}
            for device, seq in con.execute("SELECT device, seq FROM readings").fetchall():
                ledgered.setdefault(device, set()).add(seq)
            rejects = dict(con.execute("SELECT device, sum(count) FROM reject_counts GROUP BY device").fetchall())
            per_minute = con.execute("SELECT max(n) FROM (SELECT sum(count) AS n FROM reject_counts"
                                     " WHERE device = ? GROUP BY minute)", [HOSTILE_DEVICE]).fetchone()
            stored_per_hour = dict(con.execute(
                "SELECT received_at // 3600000, count(*) FROM quarantine WHERE device = ? GROUP BY 1",
                [HOSTILE_DEVICE]).fetchall())
            stored_reasons = {r for (r,) in con.execute("SELECT DISTINCT reason FROM quarantine").fetchall()}
            stored_other = con.execute("SELECT count(*) FROM quarantine WHERE device IS DISTINCT FROM ?",
                                       [HOSTILE_DEVICE]).fetchone()
        finally:
            con.close()

        # Every honest reading is ledgered: seqs 1..last of every device, nothing else.
        missing = {d: sorted(set(range(1, n + 1)) - ledgered.get(d, set())) for d, n in last_seq.items()}
        assert not any(missing.values()), {d: m[:10] for d, m in missing.items() if m}
        assert all(ledgered[d] == set(range(1, n + 1)) for d, n in last_seq.items())
        assert ledgered[HOSTILE_DEVICE] == set(range(1, PRIMED + 1))  # its valid primers, and not one forgery

        # Every hostile message accounted for: counted as a reject, nothing silently dropped.
        assert rejects == {HOSTILE_DEVICE: sent}
        assert per_minute is not None and per_minute[0] == flagged[HOSTILE_DEVICE]["peak_rejects_per_minute"]
        # ... and its stored details capped so it cannot fill the disk: the rest only counted.
        assert all(n <= QUARANTINE_CAP for n in stored_per_hour.values()), stored_per_hour
        assert sum(stored_per_hour.values()) + status["quarantine_dropped"] == sent
        assert stored_reasons <= {r.value for r in Reason}
        assert stored_other == (0,)

        verify = stack.cli("verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
