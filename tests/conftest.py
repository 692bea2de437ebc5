"""Shared fixtures: a real stack (Mosquitto + ingest) on a temporary home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack

# the Go cross-check of the transparency log (`tlogcheck`); the HTTP API over a city of data (`api_city`)
pytest_plugins = ["tests.gotools", "tests.support.api"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path / "home") as s:
        yield s
