"""Read-only queries the dashboard needs, by name: `LedgerAPI.view(name, **params)`.

Each view is a plain function over a Store returning JSON-able data. Only the
names in VIEWS can be called (over the socket too). Access rules (which account,
which districts) are the caller's: the dashboard's data layer applies them
before it asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger.store import Store

View = Callable[..., Any]
VIEWS: dict[str, View] = {}


def view(fn: View) -> View:
    """Register a function as a view under its own name."""
    VIEWS[fn.__name__] = fn
    return fn


@view
def devices_of_account(store: Store, account: str) -> list[dict[str, Any]]:
    rows = store.con.execute("SELECT device, kind, district, status FROM devices WHERE account = ? ORDER BY device",
                             [account]).fetchall()
    return [dict(zip(("device", "kind", "district", "status"), r)) for r in rows]
