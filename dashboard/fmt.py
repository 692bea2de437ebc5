"""Formatting for people: times in the city's zone, money, quantities, durations. Pure."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from ledger.defaults import DEFAULT_TIMEZONE


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or DEFAULT_TIMEZONE)
    except (KeyError, ValueError):
        return ZoneInfo(DEFAULT_TIMEZONE)


def when(ms: int | None, tz: ZoneInfo, *, seconds: bool = False) -> str:
    """An instant as local date and time, e.g. `2026-03-05 09:00`; `-` when unknown."""
    if ms is None:
        return "-"
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return dt.datetime.fromtimestamp(ms / 1000, tz).strftime(fmt)


def ago(ms: int | None, now: int) -> str:
    """How long ago, roughly: `12 s ago`, `5 min ago`, `3 h ago`, `4 days ago`."""
    if ms is None:
        return "never"
    s = max(0, (now - ms) // 1000)
    if s < 90:
        return f"{s} s ago"
    if s < 90 * 60:
        return f"{s // 60} min ago"
    if s < 48 * 3600:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def money(amount: str | Decimal | None) -> str:
    """Yuan to the fen, with a thousands separator: `¥1,234.50`, `-¥12.50`."""
    if amount is None:
        return "-"
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    sign = "-" if value < 0 else ""
    return f"{sign}¥{abs(value):,.2f}"


def quantity(value: float | str | None, unit: str, places: int = 3) -> str:
    if value is None:
        return "-"
    return f"{float(value):,.{places}f} {unit}"


def minutes(total: int | None) -> str:
    """A duration: `45 min`, `2 h 05 min`, `1 d 3 h 00 min`."""
    if total is None:
        return "-"
    d, rest = divmod(int(total), 1440)
    h, m = divmod(rest, 60)
    if d:
        return f"{d} d {h} h {m:02d} min"
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min"


def month_label(month: str) -> str:
    """`2026-03` -> `March 2026`."""
    try:
        return dt.date(int(month[:4]), int(month[5:7]), 1).strftime("%B %Y")
    except (ValueError, IndexError):
        return month


def short(text: str | None, n: int = 16) -> str:
    if not text:
        return "-"
    return text if len(text) <= n else text[:n] + "…"


KIND_LABEL = {"water": "Water", "gas": "Gas", "electricity": "Electricity", "parking": "Parking"}


def kind_label(kind: str) -> str:
    return KIND_LABEL.get(kind, kind.title())


UNIT_LABEL = {"m3": "m³", "kWh": "kWh"}


def unit_label(unit: str) -> str:
    return UNIT_LABEL.get(unit, unit)
