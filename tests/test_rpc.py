"""The ingest's local API socket (ledger/service/rpc.py), with a real DuckDB ledger behind it."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from ledger.chain.records import Batch
from ledger.errors import Busy
from ledger.home import Home
from ledger.service import rpc
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.writer import LedgerWriter
from tests.support.broker import wait_for


def _serve_and_call(home: Home) -> None:
    initialize(home)
    writer = LedgerWriter.open(home)
    server, _ = rpc.serve(local_api(home, writer), home.rpc_socket)
    try:
        assert stat.S_IMODE(home.rpc_socket.stat().st_mode) == 0o600
        remote = rpc.open_ledger(home)
        assert isinstance(remote, rpc.RemoteLedger), "the running server is reachable"
        assert remote.status()["height"] == writer.height
    finally:
        rpc.stop(server, home.rpc_socket)
        writer.close()
    assert not home.rpc_socket.exists()
    assert not isinstance(rpc.open_ledger(home), rpc.RemoteLedger), "nothing answers once it stopped"


def test_the_api_answers_on_its_socket_in_the_home(tmp_path: Path) -> None:
    _serve_and_call(Home(tmp_path / "home"))


def test_a_home_whose_socket_path_is_past_the_unix_limit_still_serves(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "home"
    home = Home(deep)
    assert len(os.fsencode(home.rpc_socket)) > rpc.MAX_SOCKET_PATH
    _serve_and_call(home)


def test_a_caller_past_the_workers_and_the_waiting_line_is_told_busy_and_the_others_finish(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)
    server, _ = rpc.serve(local_api(home, writer), home.rpc_socket, workers=2, waiting=1)
    results: list[object] = []
    try:
        with writer.lock:  # the sealer is busy: the first three calls hold a worker or wait for one
            callers = [
                threading.Thread(
                    target=lambda i=i: results.append(
                        rpc.RemoteLedger(home.rpc_socket).add_account(account=f"acct-{i}", name=f"N{i}")
                    )
                )
                for i in range(3)
            ]
            for t in callers:
                t.start()
            wait_for(lambda: server.slots._value == 0, what="three calls holding every slot")  # type: ignore[attr-defined]
            with pytest.raises(Busy):
                rpc.RemoteLedger(home.rpc_socket, busy_wait=0).status()
            assert server.refused == 1
        for t in callers:
            t.join(timeout=30)
        assert sorted(r["account"] for r in results) == ["acct-0", "acct-1", "acct-2"]  # type: ignore[index]
        assert rpc.RemoteLedger(home.rpc_socket).status()["height"] == writer.height, "free again once they finished"
    finally:
        rpc.stop(server, home.rpc_socket)
        writer.close()


def test_api_threads_read_and_write_while_the_owner_seals_without_colliding(tmp_path: Path) -> None:
    """DuckDB 2 refuses a second call on a busy connection: every thread needs its own cursor."""
    home = Home(tmp_path / "home")
    initialize(home)
    writer = LedgerWriter.open(home)  # this thread opened it: it seals, as ingest's main thread does
    server, _ = rpc.serve(local_api(home, writer), home.rpc_socket)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        remote = rpc.RemoteLedger(home.rpc_socket)
        try:
            for j in range(15):
                remote.add_account(account=f"a{i}-{j}", name="x")
                remote.adjust(account=f"a{i}-{j}", amount="1.50", reason="meter read twice", operator="op")
                remote.status()
                remote.accounts()
                remote.recent_blocks(limit=5)
        except BaseException as exc:
            errors.append(exc)

    callers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    try:
        for t in callers:
            t.start()
        sealed = 0
        while any(t.is_alive() for t in callers):
            writer.commit(Batch(), [{"entry": "test_note", "at": sealed}])
            sealed += 1
        assert not errors, errors[:3]
        assert sealed > 0
        assert len(rpc.RemoteLedger(home.rpc_socket).accounts()) == 8 * 15
    finally:
        rpc.stop(server, home.rpc_socket)
        writer.close()
