"""How values look on the API's wire: RFC 3339 times with epoch milliseconds beside them, and
opaque cursors. Money is already a decimal string everywhere in the ledger (billing's rule)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from ledger.errors import Refused


def rfc3339(ms: int) -> str:
    """UTC with millisecond precision, `2026-12-07T21:24:31.123Z`."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last time RFC 3339 writes


def parse_time(text: str, name: str = "time") -> int:
    """Epoch ms from RFC 3339 (`2026-12-01T00:00:00Z`, an offset, or a date) or from digits (epoch ms),
    between 1970 and 9999; Refused, naming the parameter `name`, for anything else."""
    text = text.strip()
    try:
        if text.isascii() and text.isdigit():
            ms = int(text)
        else:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if when.tzinfo is None:
                if len(text) != 10:
                    raise Refused(f"`{name}` needs its offset (Z or +08:00): {text!r}")
                when = when.replace(tzinfo=dt.UTC)
            ms = int(when.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise Refused(f"`{name}` is RFC 3339 (2026-12-01T00:00:00Z) or epoch milliseconds, not {text!r}") from None
    if not 0 <= ms <= LATEST_MS:
        raise Refused(f"`{name}` is between 1970 and 9999")
    return ms


TIME_KEYS = frozenset({"at", "ts", "until", "since"})


def is_time_key(key: str) -> bool:
    return key in TIME_KEYS or key.endswith("_at")


def stamped(doc: Any) -> Any:
    """A ledger document as the API shows it: every time member (`at`, `ts`, `until`, `since`,
    `*_at`, all epoch ms in the ledger) as RFC 3339, with the epoch ms beside it as `NAME_ms`."""
    if isinstance(doc, list):
        return [stamped(d) for d in doc]
    if not isinstance(doc, dict):
        return doc
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if is_time_key(key) and (value is None or (isinstance(value, int) and not isinstance(value, bool))):
            out[key] = None if value is None else rfc3339(value)
            out[key + "_ms"] = value
        else:
            out[key] = stamped(value)
    return out


def encode_cursor(position: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise Refused("the cursor is not one this API gave out") from None
