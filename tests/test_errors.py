"""One exception tree (ledger/errors.py), and the same class on both sides of the socket.

Unit tests for the families; then a real DuckDB ledger behind the real socket, where a
refusal, a conflict, a missing thing and a bug each reach the caller as the class the
ledger raised, without anybody comparing class-name strings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger.anomalies.investigations import InvestigationError
from ledger.billing.bills import BillError
from ledger.billing.tariffs import TariffError
from ledger.errors import Busy, InternalError, LedgerError, NotFound, Refused, Unavailable, by_name, family
from ledger.home import Home
from ledger.service import rpc
from ledger.service.api import LedgerAPI, local_api
from ledger.service.homes import initialize
from ledger.service.writer import AlreadyEnrolled, EnrolmentError, LedgerWriter
from ledger.store.archive import ArchiveError


def test_every_module_error_is_in_one_family_of_the_tree() -> None:
    for cls, base in [
        (EnrolmentError, Refused),
        (AlreadyEnrolled, Refused),
        (InvestigationError, Refused),
        (TariffError, Refused),
        (ArchiveError, Refused),
        (BillError, NotFound),
        (Busy, Unavailable),
    ]:
        assert issubclass(cls, base) and issubclass(cls, LedgerError), cls
    # The built-ins they stand for still catch them, so older callers keep working.
    assert isinstance(NotFound("x"), KeyError) and isinstance(Refused("x"), ValueError)
    assert str(NotFound("no anomaly 7")) == "no anomaly 7"  # not KeyError's quoted form


def test_family_and_by_name() -> None:
    assert family(AlreadyEnrolled("x")) is Refused and family(KeyError("x")) is NotFound
    assert family(FileNotFoundError("x")) is Unavailable and family(TypeError("x")) is Refused
    assert family(ZeroDivisionError()) is InternalError
    assert by_name("AlreadyEnrolled") is AlreadyEnrolled and by_name("KeyError") is None


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[rpc.RemoteLedger]:
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    server, _ = rpc.serve(local_api(home, writer), home.rpc_socket)
    try:
        yield rpc.RemoteLedger(home.rpc_socket)
    finally:
        rpc.stop(server, home.rpc_socket)
        writer.close()


KEY = SigningKey.generate().verify_key.encode().hex()


def test_over_the_socket_each_error_arrives_as_the_class_the_ledger_raised(
    remote: rpc.RemoteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote.enroll_device(device="wm-d01-000001", kind="water", district="d01", public_key=KEY)
    with pytest.raises(AlreadyEnrolled, match="already enrolled"):
        remote.enroll_device(device="wm-d01-000001", kind="water", district="d01", public_key=KEY)
    with pytest.raises(EnrolmentError) as refused:
        remote.enroll_device(
            device="wm-d01-000002",
            kind="lava",
            district="d01",
            public_key=SigningKey.generate().verify_key.encode().hex(),
        )
    assert type(refused.value) is EnrolmentError
    with pytest.raises(NotFound, match="^no anomaly 424242$"):
        remote.anomaly(anomaly_id="424242")
    with pytest.raises(NotFound, match="no such method"):
        remote.call("drop_everything")

    def broken(self: LedgerAPI) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(LedgerAPI, "status", broken)
    with pytest.raises(InternalError, match="internal error: ZeroDivisionError"):
        remote.status()
