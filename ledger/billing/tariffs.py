"""Tariffs as data: versioned by effective date, loaded from a TOML file, exact decimals.

An operator edits a copy of `default_tariffs.toml` and loads it; every loaded
version is kept, so a bill can always say which prices it used. Money is never
a float: prices are strings in the file and Decimals here.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ledger.defaults import DEFAULT_TIMEZONE
from ledger.errors import NotFound, Refused

DEFAULT_FILE = Path(__file__).with_name("default_tariffs.toml")
CLASSES = ("residential", "non-residential")
UNITS = {"water": ("m3", 1000), "gas": ("m3", 1000), "electricity": ("kWh", 1000)}  # unit, base units per unit


def _decimal_from_string(value: object) -> Decimal:
    """Money and quantities must be written as strings: a TOML float is already inexact."""
    if not isinstance(value, str):
        raise ValueError(f'write {value!r} as a string, e.g. "{value}"')
    try:
        out = Decimal(value)
    except ArithmeticError as exc:
        raise ValueError(f"{value!r} is not a decimal number") from exc
    if not out.is_finite() or out < 0:
        raise ValueError(f"{value!r} must be a non-negative decimal")
    return out


Exact = Annotated[Decimal, BeforeValidator(_decimal_from_string)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(_Model):
    up_to: Exact | None = None  # cumulative quantity in the tariff's unit; None: no upper bound
    price: Exact


class UtilityTariff(_Model):
    kind: Literal["water", "gas", "electricity"]
    customer_class: Literal["residential", "non-residential"] = Field(alias="class")
    effective_from: dt.date
    basis: Literal["calendar_year", "flat"] = "flat"
    tiers: tuple[Tier, ...]

    @model_validator(mode="after")
    def _tiers_rise(self) -> UtilityTariff:
        bounds = [t.up_to for t in self.tiers]
        if not bounds or bounds[-1] is not None or any(b is None for b in bounds[:-1]):
            raise ValueError("every tier but the last needs up_to; the last has none")
        if any(a >= b for a, b in zip(bounds[:-2], bounds[1:-1])):  # type: ignore[operator]
            raise ValueError("tier bounds must rise")
        return self

    @property
    def unit(self) -> str:
        return UNITS[self.kind][0]

    @property
    def base_per_unit(self) -> int:
        return UNITS[self.kind][1]


class Zone(_Model):
    zone_class: int = Field(alias="class", ge=1, le=3)
    first_hour: Exact
    after: Exact


class ParkingTariff(_Model):
    effective_from: dt.date
    day_start: dt.time
    day_end: dt.time
    day_unit_minutes: int = Field(gt=0)
    first_period_minutes: int = Field(ge=0)
    night_unit_minutes: int = Field(gt=0)
    night_price: Exact
    zones: tuple[Zone, ...]
    default_zone_class: int = Field(ge=1, le=3)
    district_zone_class: dict[str, int] = {}

    def zone(self, zone_class: int) -> Zone:
        for z in self.zones:
            if z.zone_class == zone_class:
                return z
        raise NotFound(f"no parking zone class {zone_class} in the tariff")


class TariffBook(_Model):
    timezone: str = DEFAULT_TIMEZONE
    utility: tuple[UtilityTariff, ...]
    parking: tuple[ParkingTariff, ...] = ()

    def for_utility(self, kind: str, customer_class: str, on: dt.date) -> UtilityTariff:
        """The tariff in force on `on`: the latest version effective on or before it."""
        found = [
            t for t in self.utility if t.kind == kind and t.customer_class == customer_class and t.effective_from <= on
        ]
        if not found:
            raise NotFound(f"no {customer_class} {kind} tariff in force on {on}")
        return max(found, key=lambda t: t.effective_from)

    def for_parking(self, on: dt.date) -> ParkingTariff:
        found = [t for t in self.parking if t.effective_from <= on]
        if not found:
            raise NotFound(f"no parking tariff in force on {on}")
        return max(found, key=lambda t: t.effective_from)


class TariffError(Refused):
    """A tariff file that cannot be used; the message says where and why."""


def parse_tariffs(text: str) -> TariffBook:
    try:
        data = tomllib.loads(text)
        return TariffBook.model_validate(data)
    except tomllib.TOMLDecodeError as exc:
        raise TariffError(f"not valid TOML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TariffError(f"{where}: {first['msg']}") from exc


def default_tariffs() -> TariffBook:
    return parse_tariffs(DEFAULT_FILE.read_text())
