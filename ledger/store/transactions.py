"""The one way to run a DuckDB transaction here: `transaction` writes, `snapshot` reads.

Why one helper: a hand-written BEGIN ... COMMIT that forgets the ROLLBACK on an
exception leaves the connection inside a failed transaction, and every later statement
on it fails. Both helpers end the transaction on every path, KeyboardInterrupt included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Everything in the block is written atomically: committed at its end, rolled back if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@contextmanager
def snapshot(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One consistent view for several reads; nothing to keep, so it always ends in a rollback
    (which also ends a transaction a failed statement aborted)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    finally:
        con.execute("ROLLBACK")
