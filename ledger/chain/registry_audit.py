"""The registry tables against the chain's own entries (`cityledger verify --deep`, issue 15).

Why: every registry change is sealed as a ledger entry in the same transaction as
the table row it stands for (ledger/service/writer.py), yet ingest, billing, the broker's
logins and the dashboard read the tables. Someone with write access to the DuckDB
file can swap a device's key, un-revoke a device or move a meter to another account
in the tables alone, and the chain audit still passes: it never reads them. Here
each table is rebuilt from the entries, in chain order, and every row that differs
is reported, naming the table, the row and what the chain says.

Pure: `chain_rows` and `compare` take entries and rows, no database. The query layer
(`check_store`, ledger/store/registry_check.py) reads entries and tables in one snapshot, one partition of rows
(by a hash of the row's first key) at a time, so memory is bounded by a partition,
not by a table of every bill ever issued.

Columns that no entry fixes are not compared: a device's broker password hash, an
account holder's name, the time a replacement or a tariff file was stored (taken
apart from the entry's `at`), a district head's header signature.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import TypedDict

from ledger.documents import document

Key = tuple[Any, ...]
Row = tuple[Any, ...]
Entry = tuple[int, dict[str, Any]]  # (height of its block, the entry), in chain order
Rows = dict[Key, list[Row]]

PAIR_ALIKE = 64
"""Changed rows of one key (parking check-ins of one space, say) paired by likeness up to this many."""


@document
class DisagreementDoc(TypedDict):
    """A `Disagreement` as the verify report lists it (`Disagreement.as_dict`)."""

    table: str
    row: dict[str, Any]  # the row's key columns and values
    column: str | None
    table_says: Any  # a column's value, or a whole row as a dict, or None (see `Disagreement`)
    chain_says: Any
    text: str  # str(disagreement)


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One place where a registry table and the chain differ."""

    table: str
    key: tuple[tuple[str, Any], ...]  # the row's key columns and values
    column: str | None  # None: the whole row is missing from the table, or the chain has no such row
    table_says: Any  # the table's value; the row as a dict when `column` is None; None when it lacks the row
    chain_says: Any  # the chain's value; the row as a dict when `column` is None; None when it has no such row

    @property
    def row(self) -> str:
        return f"{self.table}[{', '.join(f'{k}={v}' for k, v in self.key)}]"

    def __str__(self) -> str:
        if self.column is not None:
            return f"{self.row}: {self.column} is {self.table_says!r}, the chain says {self.chain_says!r}"
        if self.table_says is None:
            return f"{self.row}: no such row, the chain says {_show(self.chain_says)}"
        return f"{self.row}: a row the chain does not have ({_show(self.table_says)})"

    def as_dict(self) -> DisagreementDoc:
        return {
            "table": self.table,
            "row": dict(self.key),
            "column": self.column,
            "table_says": self.table_says,
            "chain_says": self.chain_says,
            "text": str(self),
        }


def _show(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in row.items())


# --------------------------------------------------------------------------- the chain's rows


def _plain(value: Any) -> Any:
    """An entry member as a table could hold it: a list or object (a malformed entry) as its JSON text,
    so that rows stay hashable and compare unequal to whatever the table holds."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _row(entry: Mapping[str, Any], members: Iterable[str]) -> Row:
    return tuple(_plain(entry.get(m)) for m in members)


def _one_per_entry(
    key: tuple[str, ...], members: tuple[str, ...], with_height: bool = False, latest: bool = False
) -> Callable[[Iterable[Entry]], Rows]:
    """Rows of a table that gets a row per entry: key and columns read off the entry's members
    (`with_height`: the entry's block height as the last column; `latest`: a later entry replaces
    the row of the same key, as INSERT OR REPLACE does)."""

    def rows(entries: Iterable[Entry]) -> Rows:
        out: Rows = {}
        for height, entry in entries:
            row = _row(entry, members) + ((height,) if with_height else ())
            same = out.setdefault(_row(entry, key), [])
            if latest:
                same.clear()
            same.append(row)
        return out

    return rows


DEVICE_COLUMNS = ("kind", "district", "account", "public_key", "status", "enrolled_at", "revoked_at")


def _devices(entries: Iterable[Entry]) -> Rows:
    """Each device's row as the chain's entries leave it: enrolled, re-keyed, suspended and
    reinstated, bound to an account, revoked. Entries about a device the chain never enrolled
    make no row (the table's row, if any, is then one the chain does not have)."""
    state: dict[Any, dict[str, Any]] = {}
    for _, e in entries:
        kind, device = e.get("entry"), _plain(e.get("device"))
        if kind == "device_enrolled":
            state[device] = {c: _plain(e.get(c)) for c in ("kind", "district", "account", "public_key")} | {
                "status": "active",
                "enrolled_at": _plain(e.get("at")),
                "revoked_at": None,
            }
        elif device in state:
            state[device].update(_DEVICE_CHANGES[str(kind)](e))
    return {(device,): [tuple(s[c] for c in DEVICE_COLUMNS)] for device, s in state.items()}


_DEVICE_CHANGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "device_key_rotated": lambda e: {"public_key": _plain(e.get("public_key"))},
    "device_revoked": lambda e: {"status": "revoked", "revoked_at": _plain(e.get("at"))},
    "device_suspended": lambda e: {"status": "suspended"},
    "device_reinstated": lambda e: {"status": "active"},
    "device_account": lambda e: {"account": _plain(e.get("account"))},
}


def _device_keys(entries: Iterable[Entry]) -> Rows:
    """Each key a device was given, at the height that gave it: an enrolment signs from seq 0,
    a rotation from its `from_seq` (0 when it names none: ledger/chain/keyspans.py)."""
    out: Rows = {}
    for height, e in entries:
        from_seq = _plain(e.get("from_seq", 0)) if e.get("entry") == "device_key_rotated" else 0
        out.setdefault((_plain(e.get("device")), height), []).append(
            (_plain(e.get("public_key")), _plain(e.get("at")), from_seq)
        )
    return out


REQUEST_COLUMNS = (
    "account",
    "amount",
    "reason",
    "operator",
    "requested_at",
    "height",
    "status",
    "decided_by",
    "decided_at",
)
_DECISIONS = {"adjustment_approved": "approved", "adjustment_rejected": "rejected"}


def _adjustment_requests(entries: Iterable[Entry]) -> Rows:
    """Adjustments above the approval limit (four eyes): requested, then approved or rejected
    by a second operator. A decision on a request the chain does not hold makes no row."""
    state: dict[Any, Row] = {}
    for height, e in entries:
        kind, adj_id = e.get("entry"), _plain(e.get("id"))
        if kind == "adjustment_requested":
            state[adj_id] = _row(e, ("account", "amount", "reason", "operator", "at")) + (height, "pending", None, None)
        elif adj_id in state:
            state[adj_id] = state[adj_id][:6] + (_DECISIONS[str(kind)], _plain(e.get("operator")), _plain(e.get("at")))
    return {(adj_id,): [row] for adj_id, row in state.items()}


TOKEN_COLUMNS = (
    "kind",
    "principal",
    "scopes",
    "secret_hash",
    "created_at",
    "expires_at",
    "revoked_at",
    "rate_per_minute",
    "height",
)


def _scopes(value: Any) -> Any:
    """A token's scopes as the table keeps them, one per line; anything but a list of texts as its JSON."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return _plain(value)


def _api_tokens(entries: Iterable[Entry]) -> Rows:
    """API tokens as issued (the SHA-256 of the secret, never the secret) and revoked. A token is
    revoked once: a later revocation entry leaves the first one's time, as the table does."""
    state: dict[Any, Row] = {}
    for height, e in entries:
        kind, token = e.get("entry"), _plain(e.get("token"))
        if kind == "api_token_issued":
            state[token] = (
                _plain(e.get("kind")),
                _plain(e.get("principal")),
                _scopes(e.get("scopes")),
                _plain(e.get("secret_sha256")),
                _plain(e.get("at")),
                _plain(e.get("expires_at")),
                None,
                _plain(e.get("rate_per_minute")),
                height,
            )
        elif token in state and state[token][6] is None:
            row = state[token]
            state[token] = row[:6] + (_plain(e.get("at")),) + row[7:]
    return {(token,): [row] for token, row in state.items()}


GRANT_COLUMNS = (
    "from_district",
    "to_agency",
    "dataset",
    "granted_at",
    "until",
    "operator",
    "height",
    "revoked_at",
    "revoked_by",
)


def _sharing_grants(entries: Iterable[Entry]) -> Rows:
    """Sharing grants as made and revoked (once: a later revocation changes nothing, as in the table)."""
    state: dict[Any, Row] = {}
    for height, e in entries:
        kind, grant = e.get("entry"), _plain(e.get("grant"))
        if kind == "sharing_granted":
            state[grant] = _row(e, ("from_district", "to_agency", "dataset", "at", "until", "operator")) + (
                height,
                None,
                None,
            )
        elif grant in state and state[grant][7] is None:
            state[grant] = state[grant][:7] + (_plain(e.get("at")), _plain(e.get("operator")))
    return {(grant,): [row] for grant, row in state.items()}


@dataclass(frozen=True, slots=True)
class Table:
    """A registry table, the entries that write it, and how to read both sides alike."""

    name: str
    entries: tuple[str, ...]  # entry types that make or change its rows
    key: tuple[str, ...]  # columns naming a row (not necessarily unique: parking rows by space)
    columns: tuple[str, ...]  # compared columns, in the order `rows` gives them
    rows: Callable[[Iterable[Entry]], Rows]  # the rows the chain's entries make
    member: str  # the entry member that holds key[0]: both sides are partitioned by it
    select: tuple[str, ...] = ()  # SQL per key column and column, where not the column itself
    absent: Mapping[str, str] = field(default_factory=dict)  # SQL for a column an older schema lacks

    def sql(self, present: set[str]) -> str:
        """The select list over key and columns, for a table that has the columns in `present`."""
        names = self.key + self.columns
        exprs = self.select or names
        return ", ".join(self.absent[n] if n in self.absent and n not in present else e for n, e in zip(names, exprs))


TABLES: tuple[Table, ...] = (
    Table("devices", ("device_enrolled", *_DEVICE_CHANGES), ("device",), DEVICE_COLUMNS, _devices, "device"),
    Table(
        "device_keys",
        ("device_enrolled", "device_key_rotated"),
        ("device", "from_height"),
        ("public_key", "since", "from_seq"),
        _device_keys,
        "device",
        select=("device", "from_height", "public_key", "since", "coalesce(from_seq, 0)"),
        absent={"from_seq": "0"},
    ),
    Table(
        "accounts",
        ("account_opened",),
        ("account",),
        ("customer_class", "created_at"),
        _one_per_entry(("account",), ("class", "at")),
        "account",
    ),
    Table(
        "parking_zones",
        ("parking_zone",),
        ("space",),
        ("zone_class", "from_ts"),
        _one_per_entry(("space",), ("class", "from")),
        "space",
    ),
    Table(
        "parking_leases",
        ("parking_lease",),
        ("space",),
        ("account", "from_ts"),
        _one_per_entry(("space",), ("account", "from")),
        "space",
    ),
    Table(
        "parking_checkins",
        ("parking_checkin",),
        ("space",),
        ("account", "checked_in_at"),
        _one_per_entry(("space",), ("account", "at")),
        "space",
    ),
    Table(
        "meter_replacements",
        ("meter_replaced",),
        ("device",),
        ("ts", "old_final", "new_initial", "operator"),
        _one_per_entry(("device",), ("ts", "old_final", "new_initial", "operator")),
        "device",
    ),
    Table(
        "adjustments",
        ("adjustment",),
        ("id",),
        ("account", "amount", "reason", "operator", "created_at", "height"),
        _one_per_entry(("id",), ("account", "amount", "reason", "operator", "at"), with_height=True),
        "id",
    ),
    # A bill's body is kept in the table only: its SHA-256 must still be the hash the chain sealed.
    Table(
        "bills",
        ("bill_issued",),
        ("account", "month"),
        ("issued_at", "total", "hash", "body_sha256", "height"),
        _one_per_entry(("account", "month"), ("at", "total", "bill_hash", "bill_hash"), with_height=True),
        "account",
        select=("account", "month", "issued_at", "total", "hash", "sha256(body)", "height"),
    ),
    Table(
        "districts",
        ("district_added",),
        ("district",),
        ("ledger_key", "added_at", "height"),
        _one_per_entry(("district",), ("ledger_key", "at"), with_height=True),
        "district",
    ),
    # Stored canonical, so the SHA-256 of a district head's header is its block hash.
    Table(
        "district_heads",
        ("district_head",),
        ("district", "height"),
        ("hash", "header_hash", "anchored_at", "city_height"),
        _one_per_entry(("district", "height"), ("block", "block", "at"), with_height=True, latest=True),
        "district",
        select=("district", "height", "hash", "sha256(header)", "anchored_at", "city_height"),
    ),
    Table(
        "tariff_versions",
        ("tariffs_loaded",),
        ("version",),
        ("sha256", "source_sha256"),
        _one_per_entry(("version",), ("sha256", "sha256")),
        "version",
        select=("version", "sha256", "sha256(source)"),
    ),
    Table(
        "adjustment_requests",
        ("adjustment_requested", *_DECISIONS),
        ("id",),
        REQUEST_COLUMNS,
        _adjustment_requests,
        "id",
    ),
    Table(
        "write_offs",
        ("seqs_written_off",),
        ("device", "from_seq"),
        ("to_seq", "reason", "operator", "written_at", "height"),
        _one_per_entry(("device", "from_seq"), ("to_seq", "reason", "operator", "at"), with_height=True),
        "device",
    ),
    # Money received against issued bills (issue 19): a row per entry, never changed.
    Table(
        "payments",
        ("payment_recorded",),
        ("id",),
        ("account", "month", "amount", "reference", "recorded_by", "paid_at", "recorded_at", "height"),
        _one_per_entry(
            ("id",), ("account", "month", "amount", "reference", "recorded_by", "paid_at", "at"), with_height=True
        ),
        "id",
    ),
    # Who may call the HTTP API, and what each district shares with which agency (issue 19).
    Table("api_tokens", ("api_token_issued", "api_token_revoked"), ("id",), TOKEN_COLUMNS, _api_tokens, "token"),
    Table(
        "sharing_grants",
        ("sharing_granted", "sharing_revoked"),
        ("id",),
        GRANT_COLUMNS,
        _sharing_grants,
        "grant",
    ),
)


# --------------------------------------------------------------------------- comparing


def chain_rows(table: Table, entries: Iterable[Entry]) -> Rows:
    """The rows `table` should hold, from the chain's entries in chain order (others ignored)."""
    return table.rows((h, e) for h, e in entries if e.get("entry") in table.entries)


def compare(table: Table, expected: Rows, rows: Iterable[Row]) -> Iterator[Disagreement]:
    """Every difference between the rows the chain makes and the table's rows (key columns first).

    Rows equal on both sides cancel out, as many times as they occur. A key left with as many
    rows on each side has changed rows, each differing column reported; otherwise each row
    left over is missing from the table or not in the chain.
    """
    n = len(table.key)
    actual: Rows = {}
    for row in rows:
        actual.setdefault(tuple(row[:n]), []).append(tuple(row[n:]))
    for key in sorted(expected.keys() | actual.keys(), key=lambda k: tuple(map(repr, k))):
        chain, stored = Counter(expected.get(key, ())), Counter(actual.get(key, ()))
        yield from _differences(table, key, list((chain - stored).elements()), list((stored - chain).elements()))


def _differences(table: Table, key: Key, chain: list[Row], stored: list[Row]) -> Iterator[Disagreement]:
    named = tuple(zip(table.key, key))
    for ours, theirs in _pairs(chain, stored):
        if ours is None:
            yield Disagreement(table.name, named, None, dict(zip(table.columns, theirs or ())), None)
        elif theirs is None:
            yield Disagreement(table.name, named, None, None, dict(zip(table.columns, ours)))
        else:
            for column, a, b in zip(table.columns, theirs, ours):
                if a != b:
                    yield Disagreement(table.name, named, column, a, b)


def _pairs(chain: list[Row], stored: list[Row]) -> Iterator[tuple[Row | None, Row | None]]:
    """Rows of one key left over on each side, paired as changed rows when both sides have as
    many (each with the one most alike; beyond PAIR_ALIKE rows, in sorted order), else each alone."""
    if len(chain) != len(stored):
        yield from ((row, None) for row in chain)
        yield from ((None, row) for row in stored)
        return
    if len(chain) > PAIR_ALIKE:  # a key rewritten wholesale: no quadratic search
        yield from zip(sorted(chain, key=repr), sorted(stored, key=repr))
        return
    left = list(stored)
    for row in chain:
        best = max(left, key=lambda other: sum(a == b for a, b in zip(row, other)))
        left.remove(best)
        yield row, best


def disagreements(entries: Iterable[Entry], tables: Mapping[str, Iterable[Row]]) -> list[Disagreement]:
    """Every disagreement between the chain's entries and the given tables' rows (a table not
    given is not compared). The whole comparison in one call, for callers without a database."""
    entries = list(entries)
    return [
        d
        for table in TABLES
        if table.name in tables
        for d in compare(table, chain_rows(table, entries), tables[table.name])
    ]
