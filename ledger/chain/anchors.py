"""A city of district chains: what the city chain anchors, and how an auditor checks it. Pure.

Each district seals its own chain in its own database, so sealing grows with the
number of districts. The city chain ties them together: every few seconds it
seals one `district_head` entry per district whose head moved (district, height,
block hash), so every district block is covered by a later anchor, and a
district chain that is rewritten, truncated or restored from an old copy no
longer holds the hashes the city chain signed. The anchor follows each
district's headers with the witness's own judgement (ledger/chain/witness.py): a
signature that does not verify, a fork or a rollback halts that district's
anchoring and raises an alarm instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from typing_extensions import TypedDict

from ledger.chain.protocol import strict_json
from ledger.chain.witness import Accepted, Alarm, SignedHeader, Source, WitnessState, check
from ledger.documents import document

HEAD_ENTRY = "district_head"
ADDED_ENTRY = "district_added"


@document
class HeadEntry(TypedDict):
    """The city chain's leaf anchoring a district head (`Head.entry`): `block` is the hash of
    the district's block at `height`, `at` when the city sealed it (epoch ms)."""

    entry: str  # HEAD_ENTRY
    district: str
    height: int
    block: str
    at: int


@dataclass(frozen=True, slots=True)
class Head:
    """A district's signed header, as the anchor accepted it."""

    district: str
    signed: SignedHeader

    @property
    def height(self) -> int:
        return self.signed.height

    @property
    def hash(self) -> str:
        return self.signed.hash

    def entry(self, at: int) -> HeadEntry:
        """The city chain's leaf for this head."""
        return {"entry": HEAD_ENTRY, "district": self.district, "height": self.height, "block": self.hash, "at": at}


@dataclass
class Follower:
    """Each district's header stream, judged as a witness judges it, and the heads still to anchor.

    Every header that hands the key on (`next_key`) is anchored, not only the newest:
    a restarted anchor rebuilds which key signs which height from what it anchored.
    """

    states: dict[str, WitnessState]
    pending: dict[str, list[Head]] = field(default_factory=dict)
    halted: dict[str, Alarm] = field(default_factory=dict)

    @classmethod
    def resume(cls, first_keys: Mapping[str, str], anchored: Iterable[Head]) -> Follower:
        """Start from each district's first key and what the city chain anchored, in height order."""
        states = {d: WitnessState.new(key) for d, key in first_keys.items()}
        for head in sorted(anchored, key=lambda h: (h.district, h.height)):
            if head.district in states:
                states[head.district].apply(Accepted(head.signed))
        return cls(states)

    def add_district(self, district: str, first_key: str) -> None:
        self.states.setdefault(district, WitnessState.new(first_key))

    def offer(self, district: str, payload: bytes, source: Source, redelivered: bool = False) -> Alarm | None:
        """Judge one header of `district`; an alarm (the first only) when it shows a broken chain."""
        state = self.states.get(district)
        if state is None:
            return Alarm("malformed", None, f"a header for {district!r}, which is not a district of this city")
        if district in self.halted:
            return None
        outcome = check(state, payload, source=source, redelivered=redelivered)
        if isinstance(outcome, Alarm):
            self.halted[district] = outcome
            return outcome
        if isinstance(outcome, Accepted):
            state.apply(outcome)
            heads = self.pending.setdefault(district, [])
            if heads and heads[-1].signed.next_key is None:
                heads.pop()  # superseded: only the newest head, and every key hand-over, are anchored
            heads.append(Head(district, outcome.signed))
        return None

    def take(self) -> list[Head]:
        """The heads to anchor now, and nothing pending afterwards."""
        out = [h for heads in self.pending.values() for h in heads]
        self.pending.clear()
        return out


# ---------------------------------------------------------------- the auditor's side


@dataclass(frozen=True, slots=True)
class Anchor:
    """A `district_head` entry of the city chain, at the city height that sealed it."""

    district: str
    height: int
    block: str
    city_height: int


def anchors_in(entries: Iterable[tuple[int, str, str]]) -> tuple[dict[str, str], list[Anchor]]:
    """(first key per district, anchors) from the city chain's entries (height, type, body JSON)."""
    keys: dict[str, str] = {}
    anchors: list[Anchor] = []
    for city_height, kind, body in entries:
        obj = strict_json(body)
        if kind == ADDED_ENTRY:
            keys[str(obj["district"])] = str(obj["ledger_key"])
        elif kind == HEAD_ENTRY:
            anchors.append(Anchor(str(obj["district"]), int(obj["height"]), str(obj["block"]), city_height))
    return keys, anchors


def first_broken(anchors: Iterable[Anchor], hashes: Mapping[str, Mapping[int, str]]) -> str | None:
    """The first anchor (in city order) a district chain no longer agrees with, described; None if all hold.

    `hashes` maps each district to the block hashes its chain holds at the anchored heights.
    """
    for a in sorted(anchors, key=lambda a: (a.city_height, a.district, a.height)):
        held = hashes.get(a.district, {}).get(a.height)
        if held is None:
            return (
                f"district {a.district} has no block {a.height}, which city block {a.city_height} anchored "
                f"as {a.block} (truncated or restored from an older copy)"
            )
        if held != a.block:
            return (
                f"district {a.district} block {a.height} is {held}, but city block {a.city_height} anchored "
                f"{a.block} (the district chain was rewritten)"
            )
    return None
