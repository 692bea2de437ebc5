"""Anomaly lifecycle on a real DuckDB file: raised once, updated, worked, never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.anomalies.detectors import Finding as F
from ledger.anomalies.investigations import InvestigationError, get_anomaly, list_anomalies, record_findings, transition
from ledger.store.store import Store


def leak(end: int, start: int = 100, device: str = "wm-d01-000001") -> F:
    return F(
        "leak",
        device,
        "hh-1",
        device.split("-")[1],
        start,
        end,
        "medium",
        ((device, 3), (device, 9)),
        "night flow never below 4 L/h for 5 nights",
        f"leak:{device}",
    )


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(tmp_path / "ledger.duckdb")
    yield s
    s.close()


def test_the_same_condition_is_raised_once_then_updated(store: Store) -> None:
    assert record_findings(store, [leak(200)], now=1000) == {"raised": 1, "updated": 0}
    assert record_findings(store, [leak(200)], now=2000) == {"raised": 0, "updated": 0}  # nothing new
    assert record_findings(store, [leak(300)], now=3000) == {"raised": 0, "updated": 1}
    [a] = list_anomalies(store)
    assert (a["status"], a["window_end"], a["evidence"]) == ("open", 300, [["wm-d01-000001", 3], ["wm-d01-000001", 9]])
    assert [h["status"] for h in get_anomaly(store, a["id"])["history"]] == ["open", "updated"]


def test_lifecycle_is_appended_with_operator_and_note(store: Store) -> None:
    record_findings(store, [leak(200)], now=1000)
    [a] = list_anomalies(store)
    with pytest.raises(InvestigationError, match="needs a note"):
        transition(store, a["id"], "resolved", "op-chen", None, now=1500)
    transition(store, a["id"], "acknowledged", "op-chen", None, now=2000)
    done = transition(store, a["id"], "resolved", "op-chen", "valve replaced at the meter", now=3000)
    assert done["status"] == "resolved"
    assert [(h["status"], h["operator"], h["note"]) for h in done["history"]] == [
        ("open", "detector", None),
        ("acknowledged", "op-chen", None),
        ("resolved", "op-chen", "valve replaced at the meter"),
    ]
    with pytest.raises(InvestigationError, match="cannot become"):
        transition(store, a["id"], "acknowledged", "op-chen", None, now=4000)
    # The condition comes back later: a new anomaly, the resolved one stays as it was.
    record_findings(store, [leak(900, start=800)], now=5000)
    assert sorted(x["status"] for x in list_anomalies(store)) == ["open", "resolved"]


def test_a_dismissed_condition_is_not_raised_again_while_it_lasts(store: Store) -> None:
    record_findings(store, [leak(200)], now=1000)
    [a] = list_anomalies(store)
    transition(store, a["id"], "dismissed", "op-li", "the garden sprinkler runs at night", now=1100)
    assert record_findings(store, [leak(250)], now=1200)["raised"] == 0
    assert record_findings(store, [leak(900, start=800)], now=1300)["raised"] == 1


def test_filters(store: Store) -> None:
    record_findings(
        store,
        [
            leak(200),
            leak(200, device="wm-d02-000001"),
            F(
                "rollback",
                "em-d01-000001",
                None,
                "d01",
                1,
                2,
                "high",
                (("em-d01-000001", 5),),
                "register fell",
                "rollback:em-d01-000001",
            ),
        ],
        now=1000,
    )
    assert {a["type"] for a in list_anomalies(store, type="rollback")} == {"rollback"}
    assert {a["device"] for a in list_anomalies(store, district="d01")} == {"wm-d01-000001", "em-d01-000001"}
    assert {a["device"] for a in list_anomalies(store, districts=["d02"])} == {"wm-d02-000001"}
    assert list_anomalies(store, status="resolved") == []
