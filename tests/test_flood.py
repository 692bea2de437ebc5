"""A flood against the running system: one hostile but authenticated device, a hundred honest ones.

The hostile device (enrolled, its broker login valid) publishes garbage as fast as it
can from its own process (`bench.flood`'s hostile device: random bytes, broken JSON,
deep nesting, NaN and floats, duplicate members, 1-8 KB payloads, bad signatures,
replays of its own seqs, claims to be other devices), once at QoS 0 and once at QoS 1,
while `cityledger fleet --devices 100 --interval 1` publishes normally (issue 14,
point 5: "one device cannot starve the others"). Ingest checks each device's budget
(ledger/service/budget.py) before any parsing or signature check; the operator's rule
(`cityledger devices policy`) suspends the flooder at the broker after M minutes over
budget and reinstates it T minutes later. Afterwards:

- every honest reading is in the ledger exactly once, and their ack latency p99 during
  the flood is under 2 s;
- ingest's peak RSS stayed under the bound docs/security.md states;
- every hostile message is accounted for (QoS 1: exactly what the broker took), the
  device is flagged, its over-budget messages are counted, its quarantine rows capped;
- the suspension and its end are ledger entries naming the rule, shown by `devices
  flagged` and `devices list`; the broker refused the flooder while suspended and takes
  it back afterwards, and its next readings are ledgered.

The ack bound is asserted with `--workers 1` (the lean receive path); with `--workers 0`
everything else is, and the figures are printed (see the second test's docstring).
The default run floods for 8 s (M = 3.6 s, T = 4.8 s); `pytest -m soak tests/test_flood.py -s`
runs the issue's 30 s (M = 15 s, T = 15 s) and prints the figures docs/security.md reports.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from bench.flood import (
    HOSTILE_DEVICE,
    HOSTILE_DISTRICT,
    HOSTILE_KIND,
    PRIMED,
    HostileConfig,
    finish_hostile,
    now_ms,
    peak_rss_mb,
    start_hostile,
)
from broker.mqtt.sessions import RECEIVE_MAXIMUM
from edge.fleet import OUTBOX_FILE
from edge.outbox import Outbox
from ledger.chain.protocol import Reason
from ledger.processes import start
from ledger.service.budget import OVER_BUDGET, SUSPENDED
from tests.support.broker import close_client, connect_client, wait_for
from tests.support.stack import Stack

HONEST = 100
QUARANTINE_CAP = 1000  # `cityledger ingest --quarantine-cap` default: stored rows per device and hour
FLAG_THRESHOLD = 60  # `cityledger devices flagged` default: rejects per minute
ACK_P99_BOUND_MS = 2000  # the issue's bound on honest devices' ack latency during the flood

# Ingest peak RSS bound, MB (VmHWM of the ingest process over the whole test); docs/security.md.
#   baseline: Python, paho, pydantic, DuckDB with this ledger, after the fleet's 100 enrolments
#     and while sealing a block a second: measured 200-205 MB just before the flood.
#   inbox: QoS 1 messages wait there unacknowledged, at most RECEIVE_MAXIMUM (20000) of them.
#     QoS 0 has no such window: the bound is the budget (ledger/service/budget.py), checked before a
#     message is queued, so a device's messages in the inbox grow at most at its rate, and an
#     over-budget one is dropped in the receive callback. Either way a flood's share of the
#     inbox is small: its messages average ~600 B, so 20000 of them are ~12 MB plus ~7 MB of objects.
#   batch work: a 5000-message batch being classified, its rows in Arrow, DuckDB's buffers.
# A queue that held a whole flood instead (before budgets, at QoS 0: 1.35 M messages) reached 635 MB.
INGEST_RSS_BOUND_MB = 300


@dataclass(frozen=True)
class Flood:
    seconds: float  # how long the hostile device floods (and keeps knocking once cut off)
    suspend_after_min: float  # M: minutes over budget before the device is suspended
    suspend_for_min: float  # T: minutes the suspension lasts


SHORT = Flood(8, 0.06, 0.08)  # M = 3.6 s, T = 4.8 s
SOAK = Flood(30, 0.25, 0.25)  # the 30 s; M = T = 15 s
_SOAK_MARKS = [pytest.mark.soak, pytest.mark.timeout(900)]


def _flagged(stack: Stack, threshold: int) -> dict[str, dict[str, Any]]:
    return {r["device"]: r for r in stack.api.flagged_devices(minutes=60, threshold=threshold)}


def _percentile(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@pytest.mark.parametrize(
    ("qos", "flood"),
    [
        pytest.param(0, SHORT, id="qos0"),
        pytest.param(1, SHORT, id="qos1"),
        pytest.param(0, SOAK, id="qos0-soak", marks=_SOAK_MARKS),
        pytest.param(1, SOAK, id="qos1-soak", marks=_SOAK_MARKS),
    ],
)
def test_one_flooding_device_cannot_starve_the_honest_ones(tmp_path: Path, qos: int, flood: Flood) -> None:
    """Ingest with a worker (`--workers 1`): budgets on the lean receive path, as a city exposed to
    untrusted devices runs it (docs/security.md). Everything of `_flood`, and the ack bound."""
    figures = _flood(tmp_path, qos, flood, workers=1)
    assert figures["ack_ms"]["p99"] < ACK_P99_BOUND_MS, figures


@pytest.mark.parametrize("flood", [pytest.param(SHORT, id="short"), pytest.param(SOAK, id="soak", marks=_SOAK_MARKS)])
def test_a_single_process_ingest_sheds_a_qos0_flood_without_loss_or_growth(tmp_path: Path, flood: Flood) -> None:
    """`--workers 0`: the budget in paho's receive callback bounds ingest's memory (the inbox was
    unbounded for QoS 0: 635 MB in issue 14), nothing honest is lost, and the rule suspends the
    flooder. The ack bound is not asserted here: paho spends ~35-45 µs per received message before
    the budget can look at it, so a QoS 0 flood faster than that one thread reads queues honest
    readings behind it at the broker; the figures are printed (docs/security.md)."""
    _flood(tmp_path, 0, flood, workers=0)


def _flood(tmp_path: Path, qos: int, flood: Flood, workers: int) -> dict[str, Any]:
    """The scenario and every assertion but the ack bound; returns the figures."""
    assert RECEIVE_MAXIMUM == 20000, "INGEST_RSS_BOUND_MB is derived from this Receive Maximum"
    # Ingest as in production: blocks of up to 5000 messages or 1 s.
    with Stack(tmp_path / "home", block_readings=5000, block_seconds=1.0, workers=workers) as stack:
        assert stack.ingest is not None
        ingest_pid = stack.ingest.pid
        hostile = stack.enroll(HOSTILE_DEVICE, kind=HOSTILE_KIND, district=HOSTILE_DISTRICT)
        # The operator's rule, sealed in the chain: default rate and burst, M and T for this run.
        stack.cli(
            "devices",
            "policy",
            "--suspend-after",
            str(flood.suspend_after_min),
            "--suspend-for",
            str(flood.suspend_for_min),
            check=True,
        )
        rule = stack.cli_json("devices", "policy")
        assert rule["policy_height"] is not None and float(rule["suspend_after_min"]) == flood.suspend_after_min
        fleet_out, fleet_err = tmp_path / "fleet.out", tmp_path / "fleet.err"  # files: a full pipe would stall it
        fleet = start(
            [sys.executable, "-m", "ledger.cli", "fleet", "--devices", str(HONEST), "--interval", "1"],
            env=stack.env,
            stdout=fleet_out,
            stderr=fleet_err,
        )
        worker = None
        try:

            def all_online() -> bool:
                return sum(1 for s, _ in stack.api.device_statuses().values() if s == "online") >= HONEST

            wait_for(all_online, 90, f"all {HONEST} honest devices online", every=0.2)
            baseline_mb = peak_rss_mb(ingest_pid)

            t0 = now_ms()
            worker = start_hostile(
                HostileConfig(
                    "127.0.0.1",
                    stack.broker.port,
                    hostile.device,
                    hostile.password,
                    bytes(hostile.key).hex(),
                    flood.seconds,
                    qos=qos,
                )
            )

            # Suspended at the broker after M minutes over budget; meanwhile `devices list` says so.
            def suspended() -> dict[str, Any] | None:
                s = _flagged(stack, 1).get(HOSTILE_DEVICE, {}).get("suspension")
                return s if s and s["status"] == "suspended" else None

            suspension = wait_for(suspended, flood.seconds + 60, "the flooder's suspension", every=0.2)
            listed = {d["device"]: d for d in stack.cli_json("devices", "list", "--json")}
            report = finish_hostile(worker, flood.seconds + 90)
            t1 = max(now_ms(), t0 + round(flood.seconds * 1000))
            print(f"\nhostile (QoS {qos}): {json.dumps({k: v for k, v in report.items() if k != 'kinds'})}")
            assert report["published"] >= 500 * flood.suspend_after_min * 60, "not much of a flood"
            # Cut off once, then refused at every reconnect until the flood's time was up.
            assert len(report["disconnects"]) == 1 and report["reconnect_refusals"] and not report["reconnects"], report

            # Reinstated after T minutes, with its login back.
            def reinstated() -> dict[str, Any] | None:
                s = _flagged(stack, 1).get(HOSTILE_DEVICE, {}).get("suspension")
                return s if s and s["status"] == "active" and s["reinstated_at"] else None

            ended = wait_for(reinstated, flood.suspend_for_min * 60 + 60, "the flooder's reinstatement", every=0.2)
            assert stack.ingest is not None and stack.ingest.poll() is None, "ingest died under the flood"
        finally:
            try:
                fleet.stop(signal.SIGTERM, timeout=60)
            finally:
                if worker is not None:
                    worker.stop(signal.SIGKILL)
        assert fleet.returncode == 0, fleet_err.read_text()[-3000:]
        fleet_stats = json.loads(fleet_out.read_text().strip().splitlines()[-1])

        # The suspension named the rule in force, lasted T, and began after M minutes over budget.
        assert listed[HOSTILE_DEVICE]["status"] == "suspended"
        assert suspension["rule"] == {k: rule[k] for k in suspension["rule"]}
        assert suspension["until"] - suspension["at"] == round(flood.suspend_for_min * 60_000)
        to_suspension_s = (suspension["at"] - t0) / 1000
        assert flood.suspend_after_min * 60 <= to_suspension_s <= flood.suspend_after_min * 60 + 5, to_suspension_s
        assert ended["reinstated_at"] >= suspension["until"]

        # Back at the broker: its next readings are ledgered and acknowledged.
        client = connect_client(stack.broker.port, hostile.device, hostile.password, client_id=hostile.device)
        try:
            for seq in range(PRIMED + 1, PRIMED + 4):
                info = client.publish(hostile.topic, hostile.reading(7000 + seq, now_ms(), seq=seq).payload(), qos=1)
                info.wait_for_publish(10)
                assert info.is_published()
        finally:
            close_client(client)

        # What the honest devices generated: the outbox keeps each device's highest seq.
        with Outbox(stack.home.fleet / OUTBOX_FILE) as outbox:
            last_seq = {d: outbox.state(d).last_seq for d in outbox.devices()}
        assert len(last_seq) == HONEST and HOSTILE_DEVICE not in last_seq
        assert sum(last_seq.values()) == fleet_stats["generated"]
        expected_readings = sum(last_seq.values()) + PRIMED + 3
        try:
            wait_for(
                lambda: stack.status()["readings"] >= expected_readings,
                60,
                f"all {expected_readings} readings ledgered (honest ones and the hostile device's valid ones)",
                every=0.2,
            )
        except AssertionError:  # say what is missing
            status = stack.status()
            stack.stop_ingest()
            con = duckdb.connect(str(stack.home.database), read_only=True)
            have = set(con.execute("SELECT device, seq FROM readings").fetchall())
            con.close()
            want = {(d, s) for d, n in last_seq.items() for s in range(1, n + 1)}
            want |= {(HOSTILE_DEVICE, s) for s in range(1, PRIMED + 4)}
            raise AssertionError(
                f"{status}; missing: {sorted(want - have)[:20]} ({len(want - have)}); fleet: {fleet_stats}"
            ) from None

        # Every hostile message counted once ingest is done with them (drops are written every 0.25 s).
        last = [-1]

        def settled() -> bool:
            n = _flagged(stack, 1).get(HOSTILE_DEVICE, {}).get("rejects", 0)
            done, last[0] = n == last[0], n
            return done

        wait_for(settled, 30, "the hostile device's counts to settle", every=1.0)

        status = stack.cli_json("status", "--json")
        assert status["readings"] == expected_readings
        # Flagged for operators, with its over-budget count and its suspension; honest devices have no rejects.
        flagged = {r["device"]: r for r in stack.cli_json("devices", "flagged", "--json")}
        assert set(flagged) == {HOSTILE_DEVICE}
        assert flagged[HOSTILE_DEVICE]["peak_rejects_per_minute"] >= FLAG_THRESHOLD
        assert flagged[HOSTILE_DEVICE]["over_budget"] > 0
        text = stack.cli("devices", "flagged", check=True).stdout
        assert "over budget" in text and "reinstated" in text

        peak_mb = peak_rss_mb(ingest_pid)
        stack.stop_ingest()

        con = duckdb.connect(str(stack.home.database), read_only=True)
        try:
            ledgered: dict[str, set[int]] = {}
            for device, seq in con.execute("SELECT device, seq FROM readings").fetchall():
                ledgered.setdefault(device, set()).add(seq)
            twice = con.execute(
                "SELECT count(*) FROM (SELECT device, seq FROM readings GROUP BY ALL HAVING count(*) > 1)"
            ).fetchone()
            rejects = dict(
                con.execute(
                    "SELECT reason, sum(count) FROM reject_counts WHERE device = ? GROUP BY 1", [HOSTILE_DEVICE]
                ).fetchall()
            )
            others = con.execute("SELECT count(*) FROM reject_counts WHERE device <> ?", [HOSTILE_DEVICE]).fetchone()
            stored_per_hour = dict(
                con.execute(
                    "SELECT received_at // 3600000, count(*) FROM quarantine WHERE device = ? GROUP BY 1",
                    [HOSTILE_DEVICE],
                ).fetchall()
            )
            stored_reasons = {r for (r,) in con.execute("SELECT DISTINCT reason FROM quarantine").fetchall()}
            entries = [
                (t, json.loads(b))
                for t, b in con.execute(
                    "SELECT type, body FROM entries WHERE type IN ('device_suspended', 'device_reinstated')"
                    " ORDER BY height"
                ).fetchall()
            ]
            latencies = [
                x
                for (x,) in con.execute(
                    "SELECT b.sealed_at - r.ts FROM readings r JOIN blocks b USING (height)"
                    " WHERE r.device <> ? AND r.ts BETWEEN ? AND ?",
                    [HOSTILE_DEVICE, t0, t1],
                ).fetchall()
            ]
        finally:
            con.close()

        # Every honest reading is ledgered, once: seqs 1..last of every device, nothing else.
        missing = {d: sorted(set(range(1, n + 1)) - ledgered.get(d, set())) for d, n in last_seq.items()}
        assert not any(missing.values()), {d: m[:10] for d, m in missing.items() if m}
        assert all(ledgered[d] == set(range(1, n + 1)) for d, n in last_seq.items())
        assert twice == (0,)
        # The hostile device's valid readings, and not one forgery.
        assert ledgered[HOSTILE_DEVICE] == set(range(1, PRIMED + 4))

        # Honest acks stayed prompt during the flood: reading measured -> block sealed (then the ack goes).
        p99 = _percentile(latencies, 0.99)
        dropped = rejects.get(OVER_BUDGET, 0) + rejects.get(SUSPENDED, 0)
        figures = {
            "qos": qos,
            "workers": workers,
            "flood_s": flood.seconds,
            "hostile_published": report["published"],
            "hostile_per_second": report["per_second"],
            "hostile_sent": report["sent"],
            "counted": sum(rejects.values()),
            "dropped_over_budget": rejects.get(OVER_BUDGET, 0),
            "dropped_suspended": rejects.get(SUSPENDED, 0),
            "screened_rejects": sum(rejects.values()) - dropped,
            "to_suspension_s": round(to_suspension_s, 1),
            "honest_readings_in_window": len(latencies),
            "ack_ms": {"p50": _percentile(latencies, 0.5), "p99": p99, "max": max(latencies)},
            "ingest_rss_mb": {"before": round(baseline_mb), "peak": round(peak_mb)},
        }
        print(f"flood figures: {json.dumps(figures)}")
        assert len(latencies) >= HONEST * flood.seconds * 0.5
        assert peak_mb < INGEST_RSS_BOUND_MB, f"ingest peak RSS {peak_mb:.0f} MB >= {INGEST_RSS_BOUND_MB} MB"

        # Every hostile message accounted for, nothing silently dropped. At QoS 1 exactly what the broker
        # PUBACKed reaches ingest (give or take the PUBACKs lost when the broker cut the device off);
        # at QoS 0 the broker may drop what it had not passed on when it cut the device off.
        assert others == (0,)
        assert rejects.get(OVER_BUDGET, 0) > 0
        assert sum(rejects.values()) <= report["published"]
        if qos == 1:
            assert sum(rejects.values()) >= report["sent"]
        # ... and its stored details capped so it cannot fill the disk; over-budget ones never stored.
        assert all(n <= QUARANTINE_CAP for n in stored_per_hour.values()), stored_per_hour
        assert stored_reasons <= {r.value for r in Reason}

        # The suspension and its end are ledger entries naming the rule.
        assert [t for t, _ in entries] == ["device_suspended", "device_reinstated"]
        (_, s), (_, r) = entries
        assert s["device"] == r["device"] == HOSTILE_DEVICE
        assert s["rule"] == r["rule"] == suspension["rule"]
        assert s["rule"]["policy_height"] == rule["policy_height"]

        verify = stack.cli("verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    return figures
