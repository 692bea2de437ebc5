"""Which of a device's keys signs which of its readings.

A key rotation names the first seq the new key signs (`from_seq`): readings the
device signed before it rotated, and still holds unsent, verify under the key they
were signed with. Without that, a rotation while readings wait in the outbox
turns them into `bad_signature` quarantine entries that hold the device's ack
back for good (issue 15).

The rule, used alike by ingest, receipts and the audit: a reading of seq `s`
sealed at height `h` verifies under the key, among those enrolled or rotated in
at a height <= `h`, with the greatest `from_seq` <= `s` (the later one on a tie).
An enrolment has `from_seq` 0, and so has a rotation sealed before rotations
named one: such a key signs every reading sealed after it, as it always did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeySpan:
    """One key of a device and where it starts."""

    public_key: str  # hex
    from_seq: int  # the first seq it signs; 0 for every seq
    from_height: int  # the block that enrolled or rotated it in


def key_for(spans: Iterable[KeySpan], seq: int, height: int | None = None) -> str | None:
    """The key that must have signed reading `seq` sealed at `height` (None: the next block)."""
    best: KeySpan | None = None
    for span in spans:
        if (
            span.from_seq <= seq
            and (height is None or span.from_height <= height)
            and (best is None or (span.from_seq, span.from_height) >= (best.from_seq, best.from_height))
        ):
            best = span
    return best.public_key if best else None
