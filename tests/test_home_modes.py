"""The home is 0700: no other user of the host reaches the database, its WAL, the logs or the keys."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.home import Home
from ledger.service.homes import initialize
from tests.support.stack import Stack


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A folder any user may traverse, as a home's parent often is (pytest's own tmp is 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="cityledger-modes-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _open_to_others(home: Home) -> list[str]:
    return [f"{p} {mode(p):o}" for p in (home.root, *home.root.rglob("*")) if not p.is_symlink() and mode(p) & 0o077]


def test_everything_a_running_city_writes_in_its_home_is_the_owners_alone(stack: Stack) -> None:
    stack.ledger_readings(stack.enroll("wm-d01-000001"), 3)
    assert Path(str(stack.home.database) + ".wal").exists() or stack.home.database.exists()
    assert mode(stack.home.root) == 0o700 and mode(stack.home.database) == 0o600
    assert _open_to_others(stack.home) == []
    stack.stop_ingest()
    stack.start_ingest()  # and again after a restart
    assert _open_to_others(stack.home) == []


def test_a_home_left_open_is_closed_with_a_warning_when_a_service_starts(open_parent: Path) -> None:
    home = Home(open_parent / "home")
    initialize(home)
    home.root.chmod(0o755)
    home.database.chmod(0o644)
    home.logs.chmod(0o755)
    out = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--home", str(home.root), "init"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"WARNING \d+ paths in .* were open to other users", out.stderr), out.stderr
    assert mode(home.root) == 0o700 and mode(home.database) == 0o600 and mode(home.logs) == 0o700
    assert _open_to_others(home) == []


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to act as nobody"
)
def test_the_user_nobody_cannot_read_the_database(open_parent: Path) -> None:
    home = Home(open_parent / "home")
    initialize(home)
    assert home.database.exists()
    read = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat", str(home.database)],
        capture_output=True,
        timeout=30,
    )
    assert read.returncode != 0 and b"Permission denied" in read.stderr
