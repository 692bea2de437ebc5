"""Broker logins as the ledger's service needs them: a port, kept by the broker package.

Why a port: the writer changes the registry, and the broker (Mosquitto's password and
ACL files, and its reload) must follow. The service does not import the broker (the
floor plan's contracts in pyproject.toml): the keeper is named by the entry point group
`cityledger.logins` in pyproject.toml (`broker.access:MosquittoLogins`), and each writer
subscribes the installed one to its access changes (`LedgerWriter.on_access`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Protocol

from ledger.chain.records import DeviceRecord, ServiceRecord
from ledger.home import Home

GROUP = "cityledger.logins"


class Logins(Protocol):
    """What the writer asks of whoever keeps the broker's logins."""

    def new_login(self) -> tuple[str, str]:
        """A fresh password and the hash the registry keeps of it."""
        ...

    def logins_elsewhere(self) -> set[str]:
        """Logins other homes on the same broker hold: a new device or service may not take one."""
        ...

    def keep_in_step(self, devices: Sequence[DeviceRecord], services: Sequence[ServiceRecord]) -> None:
        """Who may log in now: the active devices and every service."""
        ...


@functools.cache
def _keeper() -> Callable[[Home], Logins]:
    found = list(entry_points(group=GROUP))
    if len(found) != 1:
        # An installation error, not a runtime condition: without a keeper no device could log in.
        raise RuntimeError(
            f"expected one entry point in group {GROUP!r}, found {len(found)}: "
            "install cityledger (pip install -e .), which names broker.access:MosquittoLogins"
        )
    keeper: Callable[[Home], Logins] = found[0].load()
    return keeper


def installed_logins(home: Home) -> Logins:
    """The installed keeper of the broker's logins, for this home."""
    return _keeper()(home)
