"""The DuckDB layer on a real file: what one commit writes."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

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


def test_a_transaction_that_raises_leaves_nothing_and_the_connection_usable(tmp_path: Path) -> None:
    """ledger/store/transactions.py: the one BEGIN/COMMIT/ROLLBACK, on a real DuckDB file."""
    from ledger.store.transactions import snapshot, transaction

    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    try:
        con.execute("CREATE TABLE t (x INTEGER)")
        with transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(KeyboardInterrupt):
            with transaction(con):
                con.execute("INSERT INTO t VALUES (2)")
                raise KeyboardInterrupt
        with pytest.raises(duckdb.Error):
            with snapshot(con):
                con.execute("SELECT no_such_column FROM t")
        assert con.execute("SELECT list(x) FROM t").fetchone() == ([1],)  # 2 was rolled back; the connection works
    finally:
        con.close()
