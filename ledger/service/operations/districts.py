"""A city of district chains: opening a district's chain, and anchoring district heads
into the city chain (ledger/chain/anchors.py says what an anchor proves).
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.chain import anchors
from ledger.chain.protocol import RESERVED_DISTRICTS, canonical_json, strict_json, valid_district
from ledger.chain.records import Batch
from ledger.chain.witness import SignedHeader
from ledger.clock import now_ms
from ledger.home import DISTRICT_FILE
from ledger.service.homes import initialize
from ledger.service.results.districts import DistrictAdded
from ledger.service.writer import AlreadyEnrolled, EnrolmentError, LedgerWriter, Sealed, named
from ledger.store import districts as store_districts


def add_district(writer: LedgerWriter, district: str, operator: str | None = None) -> DistrictAdded:
    """Open a district's chain: a home of its own under districts/, its first key sealed in the city chain.

    Only a city home without devices takes districts: a home that ledgers readings
    itself would otherwise ledger a district's readings in two chains.
    """
    by = named(operator)
    if writer.home.district is not None:
        raise EnrolmentError("a district's ledger has no districts of its own")
    if not valid_district(district) or district in RESERVED_DISTRICTS:
        raise EnrolmentError(f"invalid district {district!r}")
    with writer.lock:
        if district in writer.districts():
            raise AlreadyEnrolled(f"district {district} exists")
        if writer.registry or writer.ledgers_readings:
            raise EnrolmentError(
                "this home ledgers readings itself (it has devices, or `cityledger ingest` "
                "runs on it); district chains need a city home with no devices, running "
                "`cityledger anchor` instead"
            )
        sub = writer.home.district_home(district)
        sub.root.mkdir(parents=True, exist_ok=True)
        (sub.root / DISTRICT_FILE).write_text(district + "\n")
        # The district's log is named as the city's is, with its own last element (PROTOCOL.md section 7).
        initialize(sub, log_origin=writer.log_origin.rpartition("/")[0])
        first_key = sub.trusted_key.read_text().strip()
        at, height = now_ms(), writer.height + 1
        sealed = writer.seal(
            {"entry": "district_added", "district": district, "ledger_key": first_key, **by, "at": at},
            lambda s: store_districts.add_district(s, district, first_key, at, height),
        )
    return {"district": district, "home": str(sub.root), "ledger_key": first_key, "block": sealed.hash}


def anchor(
    writer: LedgerWriter, heads: Sequence[anchors.Head], alarms: Sequence[tuple[str, str, str, int]] = ()
) -> Sealed | None:
    """Seal district heads into the city chain (and record alarms about district chains)."""
    with writer.lock:
        at, height = now_ms(), writer.height + 1
        rows = [
            (h.district, h.height, h.hash, canonical_json(h.signed.header).decode(), h.signed.sig, at, height)
            for h in heads
        ]
        return writer.commit(
            Batch(witness_reports=list(alarms)),
            [dict(h.entry(at)) for h in heads],
            also=lambda s: store_districts.put_district_heads(s, rows),
        )


def anchored_heads(writer: LedgerWriter) -> list[anchors.Head]:
    """The latest head of each district the city chain has anchored."""
    with writer.lock:
        rows = store_districts.district_heads(writer.store)
    return [anchors.Head(d, SignedHeader(h, strict_json(header), sig)) for d, h, header, sig in rows]
