"""Shared fixtures: a real stack (Mosquitto + ingest) on a temporary home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack

pytest_plugins = ["tests.gotools"]  # the Go cross-check of the transparency log (`tlogcheck`)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path / "home") as s:
        yield s
