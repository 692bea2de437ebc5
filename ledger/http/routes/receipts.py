"""Receipts: proof that one reading is in the ledger, which anyone can check offline.

Version 1 (PROTOCOL.md section 5) is JSON: the reading, its block's header and signature, and the
Merkle path (check it with `cityledger verify-receipt`). Version 2 (section 7) is a C2SP
tlog-proof, text, under the transparency log's newest published checkpoint and its witnesses'
cosignatures. Both are passed on exactly as the ledger made them: a byte changed would void them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, PlainTextResponse

from ledger.chain.protocol import INT64_MAX
from ledger.chain.receipts import Receipt
from ledger.http.deps import CtxDep
from ledger.http.problems import PROBLEM_RESPONSE
from ledger.http.routes.shared import DeviceId, device_district, problems

router = APIRouter(tags=["receipts"])
DATASET = "receipts"
TLOG_PROOF_MEDIA_TYPE = "text/plain"

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Version 1: the receipt as JSON. Version 2: a C2SP tlog-proof (text).",
        "content": {TLOG_PROOF_MEDIA_TYPE: {"schema": {"type": "string"}}},
    },
    **problems(404, what="ledgered reading"),
    503: {
        **PROBLEM_RESPONSE,
        "description": "Version 2: the reading is sealed, but no published checkpoint covers it yet (retry)",
    },
}


@router.get("/receipts/{device}/{seq}", response_model=Receipt, responses=RESPONSES)
def receipt(
    c: CtxDep,
    device: DeviceId,
    seq: Annotated[int, Path(ge=0, le=INT64_MAX)],
    version: Annotated[int, Query(ge=1, le=2, description="1: JSON (PROTOCOL.md 5); 2: tlog-proof (7)")] = 1,
) -> Any:
    """The receipt of reading `seq` of `device`; the device's district decides who may have it."""
    district = device_district(c, device)
    grant = c.allow(DATASET, district)
    if version == 2:
        proof = c.ledger.tlog_receipt(device, seq)
        c.served(DATASET, district, grant, 1)
        return PlainTextResponse(
            proof,
            media_type=TLOG_PROOF_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{device}-{seq}.tlog-proof"'},
        )
    found = c.ledger.receipt(device, seq)
    c.served(DATASET, district, grant, 1)
    return JSONResponse(dict(found))
