"""Auditing a city of district chains across its homes: `verify --districts`, and anchored receipts.

`verify --districts` checks the city chain, then every district chain, then the anchors.

The auditor trusts one key, the city's first. The city chain, checked from it,
names each district's first ledger key (`district_added`) and every head it
anchored (`district_head`); each district chain is then checked from the key the
city chain names, never from the district's own files, and must still hold the
anchored hash at every anchored height. A district chain rewritten, truncated or
restored from an old copy passes its own audit only if its key was stolen; it
cannot also match what the city chain signed before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ledger.chain.anchored import build_anchored
from ledger.chain.anchors import Anchor, first_broken
from ledger.home import Home
from ledger.service.rpc import open_ledger

ChainProgress = Callable[[str, int, int], None]  # (chain, done, total)


def verify_city(
    home: Home, *, deep: bool = False, ledger_key: str | None = None, progress: ChainProgress | None = None
) -> dict[str, Any]:
    """Audit the city and all its district chains; `failure` names the first thing found wrong."""
    started = time.monotonic()
    city = open_ledger(home)
    report = city.verify(deep=deep, ledger_key=ledger_key, progress=_for("city", progress))
    out: dict[str, Any] = {
        "ok": report["ok"],
        "deep": deep,
        "city": report,
        "districts": {},
        "anchors": 0,
        "failure": None if report["ok"] else f"city chain: {report['failure']}",
        "anchor_failure": None,
    }
    if not report["ok"]:
        return _done(out, started)  # a broken city chain vouches for no district key and no anchor
    found = city.anchors()
    anchors = [Anchor(str(d), int(h), str(b), int(c)) for d, h, b, c in found["anchors"]]
    hashes: dict[str, dict[int, str]] = {}
    for district, key in sorted(found["districts"].items()):
        heights = [a.height for a in anchors if a.district == district]
        try:
            ledger = open_ledger(home.district_home(district))
            result: dict[str, Any] = dict(ledger.verify(deep=deep, ledger_key=key, progress=_for(district, progress)))
            hashes[district] = {int(h): str(x) for h, x in ledger.block_hashes(heights=heights)}
        except (OSError, ValueError) as exc:
            result = {"ok": False, "failure": f"cannot open its ledger: {exc}", "blocks": 0, "readings": 0}
        out["districts"][district] = {**result, "anchors": len(heights), "anchored_height": max(heights, default=None)}
        if not result["ok"] and out["failure"] is None:
            out["failure"] = f"district {district}: {result['failure']}"
    out["anchors"] = len(anchors)
    out["anchor_failure"] = first_broken(anchors, hashes)
    if out["failure"] is None:
        out["failure"] = out["anchor_failure"]
    out["ok"] = out["failure"] is None
    return _done(out, started)


def _for(chain: str, progress: ChainProgress | None) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(chain, done, total)


def _done(out: dict[str, Any], started: float) -> dict[str, Any]:
    chains = [out["city"], *out["districts"].values()]
    out["blocks"] = sum(c.get("blocks", 0) for c in chains)
    out["readings"] = sum(c.get("readings", 0) for c in chains)
    out["seconds"] = time.monotonic() - started
    return out


def anchored_receipt(home: Home, device: str, seq: int) -> dict[str, Any]:
    """A district reading's receipt with the city anchor that covers its block (ledger/chain/anchored.py)."""
    if home.district is None:
        raise ValueError("an anchored receipt is made from a district's home (--home HOME/districts/DISTRICT)")
    district = open_ledger(home)
    receipt = district.receipt(device=device, seq=seq)
    proof = open_ledger(Home(home.city)).anchor_proof(district=home.district, height=receipt["block"]["height"])
    headers = district.headers(first=receipt["block"]["height"] + 1, last=proof["entry"]["height"])
    return build_anchored(receipt, headers, proof)
