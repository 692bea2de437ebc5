"""What the ledger's API answers, as typed values: the contract between the ledger and
the CLI, the dashboard and the scheduler, in process or over the socket.

Each result is a frozen pydantic model named after what it is (a bill, a receipt, a
verify report), so a caller reads `bill.total`, a type checker sees a misspelt field,
and the socket carries exactly the model's JSON. Optional fields that a result leaves
out stay out of its JSON (`plain`), so a CLI's `--json` shows what it always showed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    """The base of every result: immutable, and no field the contract does not name."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def plain(value: Any) -> Any:
    """A result as JSON-able data: models as their fields (those set), containers item by item."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
