"""Per-device budgets (ledger/service/budget.py): the pure parts without a network, then the rule end to end.

The flood itself (100 honest devices, one flooder at QoS 0 and 1) is tests/test_flood.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from ledger.chain.protocol import canonical_json, device_topic
from ledger.service.budget import OVER_BUDGET, SUSPENDED, Budget, BudgetPolicy, Drops, Streaks, device_of
from tests.support.broker import close_client, connect_client, wait_for
from tests.support.stack import Stack

TOPIC = device_topic("d01", "water", "wm-d01-000001", "reading")
OTHER = device_topic("d01", "water", "wm-d01-000002", "reading")


def test_the_device_comes_from_the_topic_and_anything_else_is_no_device() -> None:
    assert device_of(TOPIC) == "wm-d01-000001"
    assert device_of(device_topic("d01", "water", "wm-d01-000001", "status")) == "wm-d01-000001"
    assert device_of("city/witness/w1/alarm") is None
    assert device_of("city/d01/lava/x/reading") is None


def test_a_bucket_admits_its_burst_then_its_rate_and_counts_the_rest() -> None:
    budget = Budget(BudgetPolicy(rate=10, burst=5))
    at = 60_000 * 100
    assert [budget.admit(TOPIC, 0.0, at) for _ in range(7)] == [None] * 5 + [OVER_BUDGET] * 2
    assert budget.admit(OTHER, 0.0, at) is None  # each device has its own bucket
    assert budget.admit(TOPIC, 0.1, at) is None  # 0.1 s at 10/s: one more
    assert budget.admit(TOPIC, 0.1, at) == OVER_BUDGET
    assert budget.admit(TOPIC, 10.0, at) is None  # refilled, but never beyond the burst
    assert [budget.admit(TOPIC, 10.0, at) for _ in range(5)] == [None] * 4 + [OVER_BUDGET]
    assert budget.admit("city/witness/w1/head", 10.0, at) is None  # not a device: no budget
    counts, spans = budget.drops.take()
    assert counts == {("wm-d01-000001", 100, OVER_BUDGET): 4}
    assert spans == {"wm-d01-000001": (at, at, 4)}
    assert budget.drops.take() == ({}, {})


def test_a_suspended_device_is_dropped_whatever_its_bucket_holds() -> None:
    budget = Budget()
    budget.suspended = frozenset({"wm-d01-000001"})
    assert budget.admit(TOPIC, 0.0, 0) == SUSPENDED
    assert budget.admit(OTHER, 0.0, 0) is None
    counts, spans = budget.drops.take()
    assert counts == {("wm-d01-000001", 0, SUSPENDED): 1} and spans == {}


def test_an_honest_device_draining_its_backlog_stays_inside_the_default_budget() -> None:
    """edge/agent.py sends at most 50 readings per 0.2 s tick: 250 a second, for as long as a backlog lasts."""
    budget = Budget()
    dropped = [budget.admit(TOPIC, tick * 0.2, 0) for tick in range(5 * 600) for _ in range(50)]
    assert set(dropped) == {None}


def test_workers_share_a_budget() -> None:
    p = BudgetPolicy(rate=500, burst=5000).share(2)
    assert (p.rate, p.burst) == (250, 2500)
    assert BudgetPolicy().share(1) == BudgetPolicy()


def test_drops_merge_from_workers() -> None:
    drops = Drops()
    drops.add("a", 1000, OVER_BUDGET)
    drops.merge({("a", 0, OVER_BUDGET): 3, ("b", 0, SUSPENDED): 1}, {"a": (500, 2000, 3)})
    assert drops.take() == ({("a", 0, OVER_BUDGET): 4, ("b", 0, SUSPENDED): 1}, {"a": (500, 2000, 4)})


def test_a_streak_over_budget_for_m_minutes_is_due_and_a_pause_ends_it() -> None:
    policy = BudgetPolicy(rate=100, burst=200, suspend_after_min=0.5)  # 30 s; a pause of 2 s ends a streak
    streaks = Streaks()
    for t in range(0, 29_000, 1000):
        streaks.observe({"a": (t, t + 500, 10)}, policy)
        assert streaks.due(t + 500, policy) == []
    streaks.observe({"a": (29_000, 30_000, 10)}, policy)
    [(device, streak)] = streaks.due(30_000, policy)
    assert (device, streak.start, streak.last, streak.messages) == ("a", 0, 30_000, 300)
    # Over budget for 20 s, a pause of 3 s, 20 s again: never 30 s in a row.
    streaks = Streaks()
    streaks.observe({"b": (0, 20_000, 1)}, policy)
    streaks.observe({"b": (23_000, 43_000, 1)}, policy)
    assert streaks.due(43_000, policy) == []
    assert streaks.due(46_000, policy) == [] and streaks.streaks == {}  # the pause forgot it


def test_a_policy_is_a_ledger_entry_without_floats() -> None:
    policy = BudgetPolicy(rate=500, burst=5000, suspend_after_min=0.08, suspend_for_min=60)
    entry = policy.entry(1234)
    assert entry == {
        "entry": "budget_policy",
        "rate": 500,
        "burst": 5000,
        "suspend_after_min": "0.08",
        "suspend_for_min": 60,
        "at": 1234,
    }
    canonical_json(entry)  # no floats in the protocol
    assert BudgetPolicy.from_entry(entry, 7) == BudgetPolicy(500, 5000, 0.08, 60, 7)
    with pytest.raises(ValueError):
        BudgetPolicy(rate=0)
    with pytest.raises(ValueError):
        BudgetPolicy(suspend_for_min=float("nan"))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_rule_suspends_a_device_over_budget_and_reinstates_it(tmp_path: Path, workers: int) -> None:
    """A device sending valid readings too fast: counted over budget, suspended at the broker after M,
    reinstated after T; then it re-sends its outbox and every reading is ledgered once."""
    with Stack(tmp_path / "home", workers=workers) as stack:
        dev = stack.enroll("wm-d01-000001")
        stack.cli(
            "devices",
            "policy",
            "--rate",
            "20",
            "--burst",
            "20",
            "--suspend-after",
            "0.03",
            "--suspend-for",
            "0.1",
            check=True,
        )
        client = connect_client(stack.broker.port, dev.device, dev.password, client_id=dev.device)
        outbox = [dev.reading(1000 + i, 1_764_000_000_000 + i) for i in range(400)]
        try:
            for r in outbox:  # 400 at once: 20 fit the burst, the rest are over budget
                client.publish(dev.topic, r.payload(), qos=1)

            def over_budget() -> int:
                row = {r["device"]: r for r in stack.api.flagged_devices(minutes=60, threshold=1)}.get(dev.device)
                return row["over_budget"] if row else 0

            wait_for(over_budget, 30, "over-budget counts", every=0.2)

            def keep_flooding_until_suspended() -> bool:  # over budget, without a pause, for M (1.8 s)
                for r in outbox[:20]:
                    client.publish(dev.topic, r.payload(), qos=1)
                return any(d["device"] == dev.device and d["status"] == "suspended" for d in stack.api.devices())

            wait_for(keep_flooding_until_suspended, 30, "the suspension", every=0.2)
        finally:
            close_client(client)

        def refused() -> bool:  # the broker drops the login on its reload (SIGHUP), a moment after the entry
            try:
                close_client(
                    connect_client(stack.broker.port, dev.device, dev.password, client_id=dev.device, reconnect=False)
                )
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 30, "the broker refusing the suspended device", every=0.2)
        wait_for(
            lambda: any(d["device"] == dev.device and d["status"] == "active" for d in stack.api.devices()),
            30,
            "the reinstatement",
            every=0.2,
        )
        stack.cli("devices", "policy", "--rate", "500", "--burst", "5000", check=True)
        client = connect_client(stack.broker.port, dev.device, dev.password, client_id=dev.device)
        try:
            for r in outbox:  # the outbox again, all of it: what was dropped is ledgered now
                client.publish(dev.topic, r.payload(), qos=1)
            wait_for(lambda: stack.status()["readings"] >= len(outbox), 30, "the whole outbox ledgered", every=0.2)
        finally:
            close_client(client)
        flagged = stack.cli_json("devices", "flagged", "--json", "--threshold", "1")
        [row] = [r for r in flagged if r["device"] == dev.device]
        assert row["suspension"]["status"] == "active" and row["suspension"]["reinstated_at"]
        assert row["suspension"]["rule"]["rate"] == 20
        stack.stop_ingest()
        con = duckdb.connect(str(stack.home.database), read_only=True)
        try:
            seqs = [s for (s,) in con.execute("SELECT seq FROM readings WHERE device = ?", [dev.device]).fetchall()]
            types = [
                t
                for (t,) in con.execute(
                    "SELECT type FROM entries WHERE type IN ('budget_policy',"
                    " 'device_suspended', 'device_reinstated') ORDER BY height"
                ).fetchall()
            ]
            suspended = json.loads(
                con.execute("SELECT body FROM entries WHERE type = 'device_suspended'").fetchone()[0]
            )
        finally:
            con.close()
        assert sorted(seqs) == list(range(1, len(outbox) + 1))
        assert types == ["budget_policy", "device_suspended", "device_reinstated", "budget_policy"]
        assert suspended["rule"]["suspend_after_min"] == "0.03" and suspended["over_budget"] > 0
        assert stack.cli("verify").returncode == 0
