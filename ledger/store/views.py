"""Read-only queries the dashboard needs, by name: `LedgerAPI.view(name, **params)`.

Each view is a plain function over a Store returning JSON-able data. Only the
names in VIEWS can be called (over the socket too); the service's registry
(ledger/service/views.py) adds the few that need the tariff book or the billing
code, over the queries here. Access rules (which account, which districts) are
the caller's: the dashboard's data layer applies them before it asks.

Every view aggregates in SQL and reads narrow slices of `readings`. The table
has no index and is stored in arrival order, so DuckDB's per-row-group min/max
of `ts` and `received_at` is what keeps a query small: a filter on time skips
almost all of a year, a filter on `device` alone does not (it scans the column).
So usage is computed from register values at period boundaries (a few hours of
the table around each boundary), "now" from the table's tail, and a device's
history from a bounded time window, never from all of a device's readings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from typing_extensions import TypedDict

from ledger.clock import now_ms
from ledger.documents import document
from ledger.store.store import Store, Suspension

View = Callable[..., Any]  # each view's own return is typed below; by name (`LedgerAPI.view`) it is Any
VIEWS: dict[str, View] = {}
_View = TypeVar("_View", bound=View)

HOUR = 3_600_000
BOUNDARY_WINDOW = 2 * HOUR  # meters report every 15 minutes; a boundary with nothing this close is left out
MIN_TYPICAL_METERS = 5  # fewer households than this: no "typical household" (it would show a neighbour's use)


def view(fn: _View) -> _View:
    """Register a function as a view under its own name (the function keeps its type)."""
    VIEWS[fn.__name__] = fn
    return fn


# ---------------------------------------------------------------- what the views return
# Rows as JSON documents (ledger/service/results/__init__.py says why TypedDicts), unknown keys refused.


@document
class AccountDevice(TypedDict):
    device: str
    kind: str
    district: str
    status: str  # active | suspended | revoked
    enrolled_at: int


@document
class AccountProfile(TypedDict):
    account: str
    name: str
    customer_class: str
    created_at: int
    districts: list[str]  # where its devices are


@document
class RegisterBracket(TypedDict):
    """A device's readings either side of a boundary (within the window): None where there is none."""

    device: str
    at: int  # the boundary
    prev_ts: int | None
    prev_value: int | None
    next_ts: int | None
    next_value: int | None


@document
class TypicalUsage(TypedDict):
    start: int
    end: int
    meters: int
    median: float | None  # base units; None below the minimum number of meters


@document
class FirstReading(TypedDict):
    ts: int
    value: int
    seq: int


@document
class ReadingPoint(TypedDict):
    ts: int
    value: int
    seq: int
    received_at: int
    height: int


@document
class DeviceReadings(TypedDict):
    device: str
    count: int  # readings in the window (before thinning)
    thinned: bool
    points: list[ReadingPoint]


@document
class DistrictNow(TypedDict):
    district: str
    devices: int  # active
    online: int
    offline: int
    no_status: int
    revoked: int
    readings_last_minute: int
    readings_last_hour: int
    reporting_last_hour: int
    rejects_last_hour: int
    readings_per_second: float
    quarantine_rate: float | None  # None: nothing seen in the hour


@document
class Overview(TypedDict):
    now: int
    districts: list[DistrictNow]
    blocks: int
    height: int | None  # None: no block yet
    head_hash: str | None
    last_sealed_at: int | None
    blocks_last_hour: int
    readings: int


@document
class Arrival(TypedDict):
    district: str
    minute_ms: int
    readings: int


@document
class DeviceFound(TypedDict):
    device: str
    kind: str
    district: str
    account: str | None
    status: str  # active | suspended | revoked
    online: str | None  # online | offline; None: no status yet
    status_changed_at: int | None
    enrolled_at: int
    last_ts: int | None  # its last reading of the past hour, if any
    last_value: int | None


@document
class DeviceSearch(TypedDict):
    total: int
    devices: list[DeviceFound]


@document
class DeviceDetail(TypedDict):
    device: str
    kind: str
    district: str
    account: str | None
    public_key: str
    status: str
    enrolled_at: int
    revoked_at: int | None
    online: str | None
    status_changed_at: int | None
    last: ReadingPoint | None
    readings_last_day: int
    rejects_last_day: int
    suspension: Suspension | None  # its latest budget suspension, if it ever had one


@document
class QuarantineShown(TypedDict):
    received_at: int
    topic: str
    reason: str
    device: str | None
    district: str  # the sender's, or the topic's
    detail: str | None
    payload: str  # as text, undecodable bytes escaped
    payload_bytes: int


@document
class ReasonCount(TypedDict):
    reason: str
    count: int


@document
class QuarantineSummary(TypedDict):
    since: int
    by_reason: list[ReasonCount]
    stored: int
    reasons: list[str]


@document
class ZoneOccupancy(TypedDict):
    zone_class: int
    start: int  # the bucket's
    occupied: float | None  # share of the time taken
    reporting: int
    spaces: int


@document
class ParkingRevenue(TypedDict):
    month: str
    district: str
    amount: str  # a decimal
    stays: int


@document
class SpacesTaken(TypedDict):
    spaces: int
    taken: int
    reporting: int


@document
class BlockSummary(TypedDict):
    height: int
    hash: str
    prev: str
    size: int
    sealed_at: int
    entries: str | None  # its entries' types, comma-separated; None: readings only
    rotates_key: bool


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values)) or "NULL"


def _scope(column: str, districts: Iterable[str] | None) -> tuple[str, list[Any]]:
    """SQL restricting `column` to `districts` (None: the whole city; []: nothing)."""
    if districts is None:
        return "true", []
    allowed = sorted(set(districts))
    return f"{column} IN ({_marks(allowed)})", allowed


def _ints(values: Iterable[int]) -> list[int]:
    return [int(v) for v in values]


def _points(cursor: Any) -> list[ReadingPoint]:
    """(ts, value, seq, received_at, height) rows as points."""
    return [
        {"ts": ts, "value": value, "seq": seq, "received_at": received_at, "height": height}
        for ts, value, seq, received_at, height in cursor.fetchall()
    ]


# ---------------------------------------------------------------- accounts and tariffs


@view
def devices_of_account(store: Store, account: str) -> list[AccountDevice]:
    rows = store.con.execute(
        "SELECT device, kind, district, status, enrolled_at FROM devices WHERE account = ? ORDER BY device", [account]
    ).fetchall()
    return [
        {"device": device, "kind": kind, "district": district, "status": status, "enrolled_at": enrolled_at}
        for device, kind, district, status, enrolled_at in rows
    ]


@view
def account_profile(store: Store, account: str) -> AccountProfile | None:
    """An account's name, class and the districts its devices are in."""
    row = store.con.execute(
        "SELECT account, name, customer_class, created_at FROM accounts WHERE account = ?", [account]
    ).fetchone()
    if row is None:
        return None
    districts = [
        r[0]
        for r in store.con.execute(
            "SELECT DISTINCT district FROM devices WHERE account = ? ORDER BY 1", [account]
        ).fetchall()
    ]
    return {"account": row[0], "name": row[1], "customer_class": row[2], "created_at": row[3], "districts": districts}


@view
def account_in_districts(store: Store, account: str, districts: list[str] | None) -> bool:
    """Whether an operator of `districts` (None: all) looks after this account: one of its devices is there."""
    where, args = _scope("district", districts)
    return store.one(f"SELECT count(*) FROM devices WHERE account = ? AND {where}", [account, *args])[0] > 0


@view
def account_districts(store: Store, account: str) -> list[str]:
    """The districts an account's devices are in (one, as a rule): whose data the account's readings are."""
    rows = store.con.execute("SELECT DISTINCT district FROM devices WHERE account = ? ORDER BY 1", [account])
    return [r[0] for r in rows.fetchall()]


# ---------------------------------------------------------------- usage


def _boundary_sql(boundaries: Sequence[int], window: int) -> tuple[str, str]:
    """A VALUES list of (i, boundary) and a filter on ts keeping only rows near a boundary."""
    values = ", ".join(f"({i}, {b})" for i, b in enumerate(boundaries))
    near = " OR ".join(f"ts BETWEEN {b - window} AND {b + window}" for b in sorted(set(boundaries)))
    return values, near


@view
def registers_at(
    store: Store, devices: list[str], boundaries: list[int], window_ms: int = BOUNDARY_WINDOW
) -> list[RegisterBracket]:
    """For each device and boundary: the last reading at or before it and the first after it
    (within `window_ms`), from which the register at the boundary is interpolated."""
    bounds = _ints(boundaries)
    if not devices or not bounds:
        return []
    values, near = _boundary_sql(bounds, int(window_ms))
    rows = store.con.execute(
        f"""
        WITH b(i, bt) AS (VALUES {values}),
        r AS (SELECT device, ts, value FROM readings WHERE device IN ({_marks(devices)}) AND ({near}))
        SELECT r.device, b.bt,
               max(ts) FILTER (WHERE ts <= bt), arg_max(value, ts) FILTER (WHERE ts <= bt),
               min(ts) FILTER (WHERE ts > bt), arg_min(value, ts) FILTER (WHERE ts > bt)
        FROM r JOIN b ON r.ts BETWEEN b.bt - {int(window_ms)} AND b.bt + {int(window_ms)}
        GROUP BY ALL ORDER BY 1, 2
        """,
        list(devices),
    )
    return [
        {
            "device": device,
            "at": at,
            "prev_ts": prev_ts,
            "prev_value": prev_value,
            "next_ts": next_ts,
            "next_value": next_value,
        }
        for device, at, prev_ts, prev_value, next_ts, next_value in rows.fetchall()
    ]


@view
def typical_usage(
    store: Store,
    district: str,
    kind: str,
    boundaries: list[int],
    customer_class: str = "residential",
    window_ms: int = BOUNDARY_WINDOW,
    min_meters: int = MIN_TYPICAL_METERS,
) -> list[TypicalUsage]:
    """The median consumption (base units) of the district's meters of `kind` held by accounts of
    `customer_class`, for each interval between consecutive boundaries. An interval with fewer
    than `min_meters` meters gets no median, so one household's use is never shown as "typical"."""
    bounds = sorted(set(_ints(boundaries)))
    if len(bounds) < 2:
        return []
    values, near = _boundary_sql(bounds, int(window_ms))
    w = int(window_ms)
    rows = store.con.execute(
        f"""
        WITH b(i, bt) AS (VALUES {values}),
        m AS (SELECT d.device FROM devices d JOIN accounts a USING (account)
              WHERE d.district = ? AND d.kind = ? AND a.customer_class = ?),
        r AS (SELECT device, ts, value FROM readings
              WHERE kind = ? AND ({near}) AND device IN (SELECT device FROM m)),
        j AS (SELECT r.device, b.i, b.bt,
                     max(ts) FILTER (WHERE ts <= bt) AS pt, arg_max(value, ts) FILTER (WHERE ts <= bt) AS pv,
                     min(ts) FILTER (WHERE ts > bt) AS nt, arg_min(value, ts) FILTER (WHERE ts > bt) AS nv
              FROM r JOIN b ON r.ts BETWEEN b.bt - {w} AND b.bt + {w} GROUP BY ALL),
        -- The register at a boundary as the reading before it plus a part of the step to the next.
        -- Not one DOUBLE: near 2^63-1 (which the protocol allows) a DOUBLE register is only known
        -- to 1,024 units. The readings subtract exactly (two non-negative BIGINTs cannot overflow).
        reg AS (SELECT device, i, pv AS base, CASE WHEN nt IS NULL OR nv < pv THEN 0::DOUBLE
                                                   ELSE (nv - pv) * (bt - pt)::DOUBLE / (nt - pt) END AS part
                FROM j WHERE pt IS NOT NULL),
        u AS (SELECT * FROM (SELECT a.i, (z.base - a.base)::DOUBLE + (z.part - a.part) AS used
                             FROM reg a JOIN reg z ON a.device = z.device AND z.i = a.i + 1) WHERE used >= 0)
        SELECT i, median(used), count(*) FROM u GROUP BY i ORDER BY i
        """,
        [district, kind, customer_class, kind],
    ).fetchall()
    found = {i: (med, n) for i, med, n in rows}
    out: list[TypicalUsage] = []
    for i in range(len(bounds) - 1):
        med, n = found.get(i, (None, 0))
        out.append(
            {
                "start": bounds[i],
                "end": bounds[i + 1],
                "meters": n,
                "median": float(med) if med is not None and n >= min_meters else None,
            }
        )
    return out


@view
def first_reading(store: Store, device: str, start: int, end: int) -> FirstReading | None:
    """A device's first reading in [start, end] (keep the span short: it is scanned)."""
    row = store.con.execute(
        "SELECT ts, value, seq FROM readings WHERE ts BETWEEN ? AND ? AND device = ? ORDER BY ts, seq LIMIT 1",
        [int(start), int(end), device],
    ).fetchone()
    return {"ts": row[0], "value": row[1], "seq": row[2]} if row else None


@view
def device_readings(store: Store, device: str, start: int, end: int, max_points: int = 1500) -> DeviceReadings:
    """A device's readings in [start, end] for a chart; thinned to `max_points` buckets
    (the last reading of each) when there are more, so a long window stays small."""
    start, end = int(start), int(end)
    count = store.one("SELECT count(*) FROM readings WHERE ts BETWEEN ? AND ? AND device = ?", [start, end, device])[0]
    if count <= max_points:
        rows = store.con.execute(
            "SELECT ts, value, seq, received_at, height FROM readings WHERE ts BETWEEN ? AND ? AND device = ?"
            " ORDER BY ts, seq",
            [start, end, device],
        )
        return {"device": device, "count": count, "thinned": False, "points": _points(rows)}
    width = max(1, -(-(end - start) // int(max_points)))
    rows = store.con.execute(
        "SELECT max(ts), arg_max(value, ts), arg_max(seq, ts), arg_max(received_at, ts), arg_max(height, ts)"
        " FROM readings WHERE ts BETWEEN ? AND ? AND device = ? GROUP BY (ts - ?) // ? ORDER BY 1",
        [start, end, device, start, width],
    )
    return {"device": device, "count": count, "thinned": True, "points": _points(rows)}


# ---------------------------------------------------------------- the city now


@view
def overview(store: Store, districts: list[str] | None = None, now: int | None = None) -> Overview:
    """Per district: devices (online, offline, revoked), readings per second over the last
    minute, readings and rejected messages over the last hour; and the chain's totals."""
    now = int(now or now_ms())
    where, args = _scope("d.district", districts)
    devices = store.con.execute(
        f"""
        SELECT d.district, count(*) FILTER (WHERE d.status = 'active'),
               count(*) FILTER (WHERE d.status = 'active' AND s.status = 'online'),
               count(*) FILTER (WHERE d.status = 'active' AND s.status = 'offline'),
               count(*) FILTER (WHERE d.status = 'active' AND s.status IS NULL),
               count(*) FILTER (WHERE d.status = 'revoked')
        FROM devices d LEFT JOIN device_status s USING (device) WHERE {where} GROUP BY 1""",
        args,
    ).fetchall()
    recent = store.con.execute(
        f"""
        SELECT d.district, count(*) FILTER (WHERE r.received_at > ?), count(*), count(DISTINCT r.device)
        FROM readings r JOIN devices d USING (device)
        WHERE r.received_at > ? AND {where} GROUP BY 1""",
        [now - 60_000, now - HOUR, *args],
    ).fetchall()
    rejects = store.con.execute(
        f"""
        SELECT coalesce(d.district, '?'), sum(c.count) FROM reject_counts c LEFT JOIN devices d USING (device)
        WHERE c.minute >= ? AND {where} GROUP BY 1""",
        [(now - HOUR) // 60_000, *args],
    ).fetchall()
    table: dict[str, DistrictNow] = {}

    def row(district: str) -> DistrictNow:
        # the last two are set below, once every count is in
        return table.setdefault(
            district,
            {
                "district": district,
                "devices": 0,
                "online": 0,
                "offline": 0,
                "no_status": 0,
                "revoked": 0,
                "readings_last_minute": 0,
                "readings_last_hour": 0,
                "reporting_last_hour": 0,
                "rejects_last_hour": 0,
                "readings_per_second": 0.0,
                "quarantine_rate": None,
            },
        )

    for district, active, online, offline, unknown, revoked in devices:
        row(district).update(
            {"devices": active, "online": online, "offline": offline, "no_status": unknown, "revoked": revoked}
        )
    for district, minute, hour, reporting in recent:
        row(district).update(
            {"readings_last_minute": minute, "readings_last_hour": hour, "reporting_last_hour": reporting}
        )
    for district, n in rejects:
        if district != "?" or districts is None:
            row(district)["rejects_last_hour"] = int(n)
    for r in table.values():
        r["readings_per_second"] = round(r["readings_last_minute"] / 60, 2)
        seen = r["readings_last_hour"] + r["rejects_last_hour"]
        r["quarantine_rate"] = (r["rejects_last_hour"] / seen) if seen else None
    chain = store.one(
        "SELECT count(*), max(height), arg_max(hash, height), max(sealed_at), count(*) FILTER (WHERE sealed_at > ?)"
        " FROM blocks",
        [now - HOUR],
    )
    return {
        "now": now,
        "districts": sorted(table.values(), key=lambda r: r["district"]),
        "blocks": chain[0],
        "height": chain[1],
        "head_hash": chain[2],
        "last_sealed_at": chain[3],
        "blocks_last_hour": chain[4],
        "readings": store.one("SELECT count(*) FROM readings")[0],
    }


@view
def arrivals(
    store: Store, districts: list[str] | None = None, minutes: int = 60, now: int | None = None
) -> list[Arrival]:
    """Readings ledgered per minute and district over the last `minutes` (by arrival time, from the tail)."""
    now = int(now or now_ms())
    where, args = _scope("d.district", districts)
    rows = store.con.execute(
        f"""
        SELECT d.district, r.received_at // 60000 * 60000 AS m, count(*) FROM readings r JOIN devices d USING (device)
        WHERE r.received_at > ? AND {where} GROUP BY ALL ORDER BY 2, 1""",
        [now - int(minutes) * 60_000, *args],
    ).fetchall()
    return [{"district": d, "minute_ms": m, "readings": n} for d, m, n in rows]


# ---------------------------------------------------------------- devices


@view
def device_search(
    store: Store,
    districts: list[str] | None = None,
    text: str = "",
    kind: str | None = None,
    status: str | None = None,
    limit: int = 200,
    now: int | None = None,
) -> DeviceSearch:
    """Devices matching a search, with their connection status and their last reading of the past hour."""
    now = int(now or now_ms())
    where, args = _scope("d.district", districts)
    sql = f"""FROM devices d LEFT JOIN device_status s USING (device)
              WHERE {where} AND (d.device ILIKE ? OR coalesce(d.account, '') ILIKE ?)"""
    pattern = f"%{text.strip()}%"
    args += [pattern, pattern]
    if kind:
        sql += " AND d.kind = ?"
        args.append(kind)
    if status in ("active", "revoked", "suspended"):
        sql += " AND d.status = ?"
        args.append(status)
    elif status in ("online", "offline"):
        sql += " AND d.status = 'active' AND s.status = ?"
        args.append(status)
    total = store.one(f"SELECT count(*) {sql}", args)[0]
    rows = store.con.execute(
        f"""
        WITH found AS (SELECT d.device, d.kind, d.district, d.account, d.status, s.status AS online, s.changed_at,
                              d.enrolled_at {sql} ORDER BY d.device LIMIT ?),
        tail AS (SELECT device, max(ts) AS last_ts, arg_max(value, ts) AS last_value FROM readings
                 WHERE received_at > ? AND device IN (SELECT device FROM found) GROUP BY 1)
        SELECT found.*, tail.last_ts, tail.last_value FROM found LEFT JOIN tail USING (device) ORDER BY device
        """,
        [*args, int(limit), now - HOUR],
    )
    return {
        "total": total,
        "devices": [
            {
                "device": device,
                "kind": kind,
                "district": district,
                "account": account,
                "status": status,
                "online": online,
                "status_changed_at": changed_at,
                "enrolled_at": enrolled_at,
                "last_ts": last_ts,
                "last_value": last_value,
            }
            for device, kind, district, account, status, online, changed_at, enrolled_at, last_ts, last_value in rows.fetchall()
        ],
    }


@view
def device_detail(store: Store, device: str, now: int | None = None) -> DeviceDetail | None:
    """One device: its record (never its broker password hash), status, and its last reading,
    looked for in ever wider stretches of the table's tail."""
    now = int(now or now_ms())
    row = store.con.execute(
        "SELECT d.device, d.kind, d.district, d.account, d.public_key, d.status, d.enrolled_at, d.revoked_at,"
        " s.status, s.changed_at FROM devices d LEFT JOIN device_status s USING (device) WHERE d.device = ?",
        [device],
    ).fetchone()
    if row is None:
        return None
    found: ReadingPoint | None = None
    for span in (HOUR, 24 * HOUR, 31 * 24 * HOUR, None):
        since = now - span if span else -(1 << 62)
        last = store.con.execute(
            "SELECT ts, value, seq, received_at, height FROM readings WHERE received_at > ? AND device = ?"
            " ORDER BY received_at DESC, seq DESC LIMIT 1",
            [since, device],
        ).fetchone()
        if last:
            found = {"ts": last[0], "value": last[1], "seq": last[2], "received_at": last[3], "height": last[4]}
            break
    day = store.one("SELECT count(*) FROM readings WHERE received_at > ? AND device = ?", [now - 24 * HOUR, device])[0]
    rejects = store.one(
        "SELECT coalesce(sum(count), 0) FROM reject_counts WHERE minute >= ? AND device = ?",
        [(now - 24 * HOUR) // 60_000, device],
    )[0]
    return {
        "device": row[0],
        "kind": row[1],
        "district": row[2],
        "account": row[3],
        "public_key": row[4],
        "status": row[5],
        "enrolled_at": row[6],
        "revoked_at": row[7],
        "online": row[8],
        "status_changed_at": row[9],
        "last": found,
        "readings_last_day": day,
        "rejects_last_day": int(rejects),
        # its latest budget suspension (ledger/service/budget.py)
        "suspension": store.suspensions().get(device),
    }


@view
def device_district(store: Store, device: str) -> str | None:
    row = store.con.execute("SELECT district FROM devices WHERE device = ?", [device]).fetchone()
    return row[0] if row else None


# ---------------------------------------------------------------- quarantine


_Q_DISTRICT = "coalesce(d.district, split_part(q.topic, '/', 2))"


@view
def quarantine_rows(
    store: Store,
    districts: list[str] | None = None,
    reason: str | None = None,
    device: str | None = None,
    since: int | None = None,
    limit: int = 200,
) -> list[QuarantineShown]:
    """Stored rejected messages, newest first, with their district (the sender's, or the topic's)
    and the raw payload as text (undecodable bytes escaped): for showing as text, never as markup."""
    where, args = _scope(_Q_DISTRICT, districts)
    sql = f"""SELECT q.received_at, q.topic, q.reason, q.device, {_Q_DISTRICT}, q.detail, q.payload
              FROM quarantine q LEFT JOIN devices d USING (device) WHERE {where}"""
    if reason:
        sql += " AND q.reason = ?"
        args.append(reason)
    if device:
        sql += " AND q.device = ?"
        args.append(device)
    if since is not None:
        sql += " AND q.received_at >= ?"
        args.append(int(since))
    out: list[QuarantineShown] = []
    for r in store.con.execute(sql + " ORDER BY q.received_at DESC LIMIT ?", [*args, int(limit)]).fetchall():
        raw = bytes(r[6])
        out.append(
            {
                "received_at": r[0],
                "topic": r[1],
                "reason": r[2],
                "device": r[3],
                "district": r[4],
                "detail": r[5],
                "payload": raw.decode("utf-8", errors="backslashreplace"),
                "payload_bytes": len(raw),
            }
        )
    return out


@view
def quarantine_summary(store: Store, districts: list[str] | None = None, since: int | None = None) -> QuarantineSummary:
    """Rejected messages by reason (everything counted, stored or not) and the rows kept."""
    since = int(since if since is not None else now_ms() - 24 * HOUR)
    where, args = _scope("d.district", districts)
    counted = store.con.execute(
        f"""
        SELECT c.reason, sum(c.count) FROM reject_counts c LEFT JOIN devices d USING (device)
        WHERE c.minute >= ? AND {where} GROUP BY 1 ORDER BY 2 DESC""",
        [since // 60_000, *args],
    ).fetchall()
    qwhere, qargs = _scope(_Q_DISTRICT, districts)
    stored = store.one(
        f"""SELECT count(*) FROM quarantine q LEFT JOIN devices d USING (device)
                                   WHERE q.received_at >= ? AND {qwhere}""",
        [since, *qargs],
    )[0]
    reasons = [r[0] for r in store.con.execute("SELECT DISTINCT reason FROM quarantine ORDER BY 1").fetchall()]
    return {
        "since": since,
        "by_reason": [{"reason": r, "count": int(n)} for r, n in counted],
        "stored": stored,
        "reasons": reasons,
    }


# ---------------------------------------------------------------- parking


def space_zones(store: Store, districts: list[str] | None) -> list[tuple[str, str, int | None]]:
    """(space, district, zone class set for it now, None if none was) of the parking spaces in scope."""
    where, args = _scope("district", districts)
    return store.con.execute(
        f"""
        SELECT device, district, (SELECT zone_class FROM parking_zones z WHERE z.space = d.device
                                  ORDER BY from_ts DESC LIMIT 1)
        FROM devices d WHERE kind = 'parking' AND {where} ORDER BY 1""",
        args,
    ).fetchall()


def spaces_occupancy(
    store: Store,
    spaces: list[tuple[str, str, int]],
    start: int,
    end: int,
    bucket_ms: int = HOUR,
    hold_ms: int = 6 * HOUR,
) -> list[ZoneOccupancy]:
    """Share of the time `spaces` (space, district, zone class) were reported taken, per zone class and
    time bucket in [start, end). A report holds until the next one (at most `hold_ms`), split across
    the buckets it spans. The `parking_occupancy` view (ledger/service/views.py) gives the zone classes."""
    if not spaces:
        return []
    start, end, bucket, hold = int(start), int(end), int(bucket_ms), int(hold_ms)
    until = min(end, now_ms())
    zones = ", ".join(f"(?, ?, {int(z)})" for _, _, z in spaces)
    rows = store.con.execute(
        f"""
        WITH s(device, district, zone) AS (VALUES {zones}),
        r AS (SELECT device, ts, value, lead(ts) OVER (PARTITION BY device ORDER BY ts) AS nts
              FROM readings WHERE kind = 'parking' AND ts >= {start - hold} AND ts < {end}
                AND device IN (SELECT device FROM s)),
        held AS (SELECT device, value, greatest(ts, {start}) AS a, least(coalesce(nts, {until}), ts + {hold}, {end}) AS z
                 FROM r),
        spans AS (SELECT device, value, a, z,
                         unnest(generate_series((a - {start}) // {bucket}, (z - 1 - {start}) // {bucket})) AS b
                  FROM held WHERE z > a),
        part AS (SELECT device, value, b, least(z, {start} + (b + 1) * {bucket}) - greatest(a, {start} + b * {bucket}) AS ms
                 FROM spans)
        SELECT s.zone, part.b, sum(part.ms * part.value)::DOUBLE / nullif(sum(part.ms), 0), count(DISTINCT part.device)
        FROM part JOIN s USING (device) GROUP BY ALL ORDER BY 1, 2
        """,
        [x for s, d, _ in spaces for x in (s, d)],
    ).fetchall()
    counts: dict[int, int] = {}
    for _, _, z in spaces:
        counts[z] = counts.get(z, 0) + 1
    return [
        {"zone_class": z, "start": start + b * bucket, "occupied": share, "reporting": n, "spaces": counts[z]}
        for z, b, share, n in rows
    ]


@view
def parking_revenue(store: Store, districts: list[str] | None = None, months: int = 12) -> list[ParkingRevenue]:
    """Parking fees on issued bills, per month and district of the space (newest months first)."""
    wanted = [
        r[0]
        for r in store.con.execute(
            "SELECT DISTINCT month FROM bills ORDER BY month DESC LIMIT ?", [int(months)]
        ).fetchall()
    ]
    if not wanted:
        return []
    where, args = _scope("d.district", districts)
    rows = store.con.execute(
        f"""
        WITH lines AS (
            SELECT b.month, unnest(CAST(json_extract(b.body, '$.lines') AS JSON[])) AS line
            FROM bills b WHERE b.month IN ({_marks(wanted)}) AND b.body LIKE '%"type":"parking"%'),
        park AS (SELECT month, json_extract_string(line, '$.device') AS space,
                        CAST(json_extract_string(line, '$.amount') AS DECIMAL(18, 2)) AS amount,
                        json_array_length(json_extract(line, '$.sessions')) AS stays
                 FROM lines WHERE json_extract_string(line, '$.type') = 'parking')
        SELECT p.month, d.district, sum(p.amount)::VARCHAR, sum(p.stays) FROM park p JOIN devices d ON d.device = p.space
        WHERE {where} GROUP BY ALL ORDER BY 1 DESC, 2""",
        [*wanted, *args],
    ).fetchall()
    return [{"month": m, "district": d, "amount": a, "stays": int(n)} for m, d, a, n in rows]


def spaces_taken(store: Store, spaces: list[tuple[str, str, int]], now: int) -> SpacesTaken:
    """How many of `spaces` (space, district, zone class) were last reported taken (from the past hour).
    The `parking_today` view (ledger/service/views.py) gives the spaces in scope."""
    if not spaces:
        return {"spaces": 0, "taken": 0, "reporting": 0}
    row = store.one(
        f"""
        SELECT count(*), count(*) FILTER (WHERE v = 1) FROM (
            SELECT device, arg_max(value, ts) AS v FROM readings
            WHERE received_at > ? AND kind = 'parking' AND device IN ({_marks(spaces)}) GROUP BY 1)""",
        [now - HOUR, *[s for s, _, _ in spaces]],
    )
    return {"spaces": len(spaces), "reporting": row[0], "taken": row[1]}


# ---------------------------------------------------------------- the chain


@view
def blocks_page(store: Store, before: int | None = None, limit: int = 50) -> list[BlockSummary]:
    """Blocks below height `before` (the newest when None), newest first, with what they hold."""
    sql = "SELECT height, hash, prev, size, sealed_at, header FROM blocks"
    args: list[Any] = []
    if before is not None:
        sql += " WHERE height < ?"
        args.append(int(before))
    rows = store.con.execute(sql + " ORDER BY height DESC LIMIT ?", [*args, int(limit)]).fetchall()
    if not rows:
        return []
    heights = [r[0] for r in rows]
    entries = dict(
        store.con.execute(
            f"SELECT height, string_agg(DISTINCT type, ', ') FROM entries WHERE height IN ({_marks(heights)})"
            " GROUP BY 1",
            heights,
        ).fetchall()
    )
    import json

    return [
        {
            "height": h,
            "hash": x,
            "prev": p,
            "size": s,
            "sealed_at": t,
            "entries": entries.get(h),
            "rotates_key": "next_key" in json.loads(header),
        }
        for h, x, p, s, t, header in rows
    ]


@view
def districts(store: Store) -> list[str]:
    """Every district with an enrolled device."""
    return [r[0] for r in store.con.execute("SELECT DISTINCT district FROM devices ORDER BY 1").fetchall()]


@view
def held_since(store: Store, device: str, account: str) -> int | None:
    """Since when `account` may see `device`'s readings (epoch ms; 0: all of them), or None if it
    does not hold the device now. A meter can change hands (`device_account` entries): readings
    from while another account held it are that account's. Readings from while nobody held
    it belong to no one, so the holder sees them."""
    rows = store.con.execute(
        "SELECT json_extract_string(body, '$.account'), json_extract(body, '$.at')::BIGINT FROM entries"
        " WHERE type IN ('device_enrolled', 'device_account') AND json_extract_string(body, '$.device') = ?"
        " ORDER BY height, idx",
        [device],
    ).fetchall()
    if not rows:
        current = store.con.execute("SELECT account FROM devices WHERE device = ?", [device]).fetchone()
        return 0 if current is not None and current[0] == account else None
    since: int | None = 0
    for holder, at in rows:
        if holder is not None and holder != account:
            since = None  # someone else's from here on
        elif since is None:
            since = int(at or 0)  # the other holder's time ended here
    return since if rows[-1][0] == account else None
