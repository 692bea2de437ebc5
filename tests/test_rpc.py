"""The ingest's local API socket (ledger/rpc.py), with a real DuckDB ledger behind it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ledger import rpc
from ledger.api import local_api
from ledger.home import Home
from ledger.writer import LedgerWriter, initialize


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
