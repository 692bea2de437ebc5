"""The DuckDB layer on a real file: what one commit writes."""

from __future__ import annotations

from pathlib import Path

from ledger.store.store import Commit, Store


def test_a_flood_of_statuses_is_one_write_and_the_last_wins(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ledger.duckdb")
    try:
        statuses = [("wm-d01-000001", "online" if i % 2 else "offline", 1000 + i) for i in range(40_001)]
        store.commit(Commit(statuses=statuses + [("gm-d01-000001", "online", 5)]))
        assert store.device_statuses() == {"wm-d01-000001": ("offline", 41_000), "gm-d01-000001": ("online", 5)}
        store.commit(Commit(statuses=[("wm-d01-000001", "online", 50_000)]))
        assert store.device_statuses()["wm-d01-000001"] == ("online", 50_000)
    finally:
        store.close()


def test_duplicates_are_counted_even_when_no_row_is_kept(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "ledger.duckdb")
    try:
        store.commit(Commit(duplicates=[("d", 1, 60_000)], duplicate_counts={("d", 1): 3}))
        store.commit(Commit(duplicate_counts={("d", 1): 4, ("e", 2): 1}))
        assert store.counts()["duplicates"] == 8
    finally:
        store.close()
