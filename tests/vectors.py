"""Locate the shared, published test vectors that live outside the repository.

They are third-party data under their own licences, so they are read in place rather
than copied into the repo: ``$CITYLEDGER_VECTORS`` if set, else ``<repo>/../shared/vectors``
(the layout both on dev machines and in CI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def vectors_dir() -> Path:
    """The vectors root; not checked for existence so callers can report it clearly."""
    env = os.environ.get("CITYLEDGER_VECTORS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "vectors"


def load_json(relpath: str | os.PathLike[str]) -> Any:
    """Parse ``vectors_dir() / relpath`` as JSON."""
    return json.loads((vectors_dir() / relpath).read_text(encoding="utf-8"))
