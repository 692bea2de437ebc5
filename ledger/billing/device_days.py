"""A device's history rebuilt from its daily summaries, as the billing checks see it.

A bill does not need most of a year's readings: on a day with no drop, no lost
report and no long silence, the register rose steadily from the day's first
reading to its last, and only those two (plus the checks already done) matter.
The store keeps, per device and UTC day, the first and last reading and what the
billing checks would look for in between (`device_days`, rolled up by
ledger/store/device_days.py); a history is then the summaries of quiet days plus
every reading of the days that need a closer look.

The summaries are derived data, never trusted for integrity: any day touched by a
block sealed after the last roll-up is read in full, so a stale summary can make a
query slower, never wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ledger.billing.rules import GAP_MS, Point
from ledger.store import device_days as stored
from ledger.store.device_days import DAY_MS
from ledger.store.store import Store


@dataclass(frozen=True, slots=True)
class Day:
    """One device's readings on one UTC day, as the billing checks see them."""

    day: int  # ts // DAY_MS
    n: int
    first: Point
    last: Point
    drops: int  # consecutive readings where the register fell
    breaks: int  # consecutive readings whose seqs are not consecutive
    changes: int  # consecutive readings with different values
    max_gap: int  # longest time between consecutive readings, ms


# ---------------------------------------------------------------- pure


def condense(
    days: Sequence[Day], raw: Iterable[Point], start: int, end: int, quiet: Callable[[Day], bool], expanded: set[int]
) -> tuple[list[Point], frozenset[int]]:
    """The points a history needs over [start, end], and the seqs whose step to the next point is checked.

    `days` are summaries around the range, `raw` every reading of the days in
    `expanded`. A quiet day not expanded contributes its first and last reading,
    and the step between them is marked checked (its seqs are not consecutive,
    but the summary vouches for what lies between). As with a full read, the
    result is the readings in [start, end] plus the nearest one either side.
    """
    points: dict[int, Point] = {p.seq: p for p in raw}
    checked: set[int] = set()
    for d in days:
        if d.day in expanded:
            continue
        points.setdefault(d.first.seq, d.first)
        points.setdefault(d.last.seq, d.last)
        if d.first.seq != d.last.seq and quiet(d):
            checked.add(d.first.seq)
        elif d.first.seq != d.last.seq:
            raise ValueError(f"day {d.day} needs its readings but was not expanded")
    ordered = sorted(points.values(), key=lambda p: (p.ts, p.seq))
    inside = [i for i, p in enumerate(ordered) if start <= p.ts <= end]
    before = [i for i, p in enumerate(ordered) if p.ts < start]
    after = [i for i, p in enumerate(ordered) if p.ts > end]
    keep = ([before[-1]] if before else []) + inside + ([after[0]] if after else [])
    out = [ordered[i] for i in keep]
    # A checked step means "from this day's first reading to its last": only while both are kept.
    last_of = {d.first.seq: d.last.seq for d in days}
    valid = {a.seq for a, b in zip(out, out[1:]) if a.seq in checked and last_of[a.seq] == b.seq}
    return out, frozenset(valid)


# ---------------------------------------------------------------- reading


def history(
    store: Store, device: str, start: int, end: int, quiet: Callable[[Day], bool]
) -> tuple[list[Point], frozenset[int]]:
    """A device's readings over [start, end] plus the nearest either side, condensed where quiet.

    Three narrow reads: the device's readings sealed since the last roll-up
    (skipped by `height`), its summaries, and every reading of the days that
    must be read in full (skipped by `ts`): the days holding `start` and `end`,
    days that are not quiet, and days the recent readings touch.
    """
    recent = [Point(*r) for r in stored.unsummarised_readings(store, device)]
    d0, d1 = start // DAY_MS, end // DAY_MS
    days = [Day(r[0], r[1], Point(*r[2:5]), Point(*r[5:8]), *r[8:]) for r in stored.summaries(store, device, d0, d1)]
    expanded = {d0, d1} | {p.ts // DAY_MS for p in recent} | {d.day for d in days if not quiet(d)}
    raw = [Point(*r) for r in stored.readings_on_days(store, device, expanded)]
    return condense(days, raw + recent, start, end, quiet, expanded)


# ---------------------------------------------------------------- what "quiet" means to billing


def meter_quiet(d: Day) -> bool:
    """A meter day the consumption checks would pass: no drop, no lost reading, no long silence."""
    return d.drops == 0 and d.breaks == 0 and d.max_gap <= GAP_MS


def space_quiet(d: Day) -> bool:
    """A parking day with nothing for the session rules: no report lost, the state never changed, and
    no silence a stay would be flagged for (`billing.sessions`)."""
    return d.breaks == 0 and d.changes == 0 and d.max_gap <= GAP_MS
