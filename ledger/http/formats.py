"""Readings as the API hands them out: one JSON shape, and the same rows as CSV or Parquet.

Pure functions over the ledger's rows, no I/O: a route streams what they encode. The unit
of each kind is billing's (ledger/billing/tariffs.py UNITS), the one place it is defined.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ledger.billing.tariffs import UNITS
from ledger.http.wire import stamped

COLUMNS = (
    "device",
    "seq",
    "kind",
    "ts",
    "ts_ms",
    "value",
    "quantity",
    "unit",
    "received_at",
    "received_at_ms",
    "height",
    "district",
)
CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


def quantity(kind: str, value: int) -> tuple[str | None, str | None]:
    """(the register in its kind's unit as an exact decimal, that unit); (None, None) for parking,
    whose value is a state (0 free, 1 taken), not a quantity."""
    found = UNITS.get(kind)
    if found is None:
        return None, None
    unit, per_unit = found
    places = len(str(per_unit)) - 1
    exact = Decimal(value).scaleb(-places) if per_unit == 10**places else Decimal(value) / per_unit
    return format(exact, "f"), unit


def reading_doc(row: Mapping[str, Any]) -> dict[str, Any]:
    """A reading on the wire: times as RFC 3339 with `*_ms` beside them, the value with its unit."""
    doc = stamped(dict(row))
    amount, unit = quantity(row["kind"], row["value"])
    return {k: (amount if k == "quantity" else unit if k == "unit" else doc[k]) for k in COLUMNS}


def csv_header() -> bytes:
    return _csv([COLUMNS])


def csv_rows(docs: Iterable[dict[str, Any]]) -> bytes:
    return _csv([["" if d[k] is None else d[k] for k in COLUMNS] for d in docs])


def _csv(rows: Iterable[Iterable[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


UTC_MS = pa.timestamp("ms", tz="UTC")
PARQUET_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("seq", pa.int64()),
        ("kind", pa.string()),
        ("ts", UTC_MS),
        ("ts_ms", pa.int64()),
        ("value", pa.int64()),
        ("quantity", pa.string()),
        ("unit", pa.string()),
        ("received_at", UTC_MS),
        ("received_at_ms", pa.int64()),
        ("height", pa.int64()),
        ("district", pa.string()),
    ]
)


class _Drain:
    """A write-only file whose bytes are taken out after each page, so a download holds one page in
    memory. `tell` counts every byte ever written: Parquet's footer records offsets from the start."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class ParquetPages:
    """A Parquet file written a page at a time: one row group per page, each page's bytes handed
    out as soon as it is written, the footer at `finish`."""

    def __init__(self) -> None:
        self._sink = _Drain()
        self._writer = pq.ParquetWriter(pa.PythonFile(self._sink, mode="w"), PARQUET_SCHEMA)

    def start(self) -> bytes:
        return self._sink.take()

    def page(self, docs: list[dict[str, Any]]) -> bytes:
        if docs:
            columns = {
                name: [d[f"{name}_ms"] if field.type == UTC_MS else d[name] for d in docs]
                for name, field in zip(PARQUET_SCHEMA.names, PARQUET_SCHEMA)
            }
            self._writer.write_table(pa.table(columns, schema=PARQUET_SCHEMA))
        return self._sink.take()

    def finish(self) -> bytes:
        self._writer.close()
        return self._sink.take()


class CsvPages:
    """CSV written a page at a time: the header first, then each page's rows."""

    def start(self) -> bytes:
        return csv_header()

    def page(self, docs: list[dict[str, Any]]) -> bytes:
        return csv_rows(docs)

    def finish(self) -> bytes:
        return b""
