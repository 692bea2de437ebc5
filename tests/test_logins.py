"""The writer publishes who may log in; the broker's keeper of logins follows (issue 16).

The service imports no broker module: the installed keeper is found through the entry
point group `cityledger.logins`. These tests use real DuckDB files and the real keeper's
files; the subscriber list is where a registry change becomes a broker login.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

from nacl.signing import SigningKey

from broker.access import MosquittoLogins, hash_password
from ledger.chain.records import DeviceRecord, ServiceRecord
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.logins import installed_logins
from ledger.service.writer import LedgerWriter


def test_the_installed_keeper_is_mosquittos(tmp_path: Path) -> None:
    keeper = installed_logins(Home(tmp_path / "home"))
    assert isinstance(keeper, MosquittoLogins)
    password, hashed = keeper.new_login()
    salt = hashed.split("$")[3]
    assert hash_password(password, salt=base64.b64decode(salt)) == hashed  # the hash the broker checks


def test_every_registry_change_reaches_the_subscribers_and_the_broker_files(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    seen: list[tuple[set[str], set[str]]] = []

    def note(devices: Sequence[DeviceRecord], services: Sequence[ServiceRecord]) -> None:
        seen.append(({d.device for d in devices}, {s.username for s in services}))

    writer.on_access.append(note)
    try:
        key = SigningKey.generate().verify_key.encode().hex()
        login = writer.enroll_device("wm-d01-000001", "water", "d01", key)
        assert seen[-1][0] == {"wm-d01-000001"}
        passwd = home.passwd.read_text()
        assert f"wm-d01-000001:{writer.registry['wm-d01-000001'].mqtt_hash}" in passwd
        assert login["mqtt_password"] not in passwd  # only the hash is kept

        writer.add_service("witness-a", "witness")
        assert "witness-a" in seen[-1][1] and "witness-a:" in home.passwd.read_text()

        writer.revoke_device("wm-d01-000001", operator="op-test")
        assert seen[-1][0] == set()
        assert "wm-d01-000001:" not in home.passwd.read_text()  # its login went with the revocation
    finally:
        writer.close()
