"""The device registry: list, show, enrol and revoke devices. A device's district decides who may."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ledger.chain.protocol import DEVICE_PATTERN, DISTRICT_PATTERN, RESERVED_DISTRICTS
from ledger.errors import Conflict, NotFound, Refused
from ledger.http.deps import CtxDep, idempotent
from ledger.http.routes.shared import (
    Cursor,
    DeviceId,
    District,
    Limit,
    cursor_of,
    device_district,
    device_record,
    list_scope,
    log_list,
    next_cursor,
    problems,
)
from ledger.http.wire import stamped

router = APIRouter(tags=["devices"])
DATASET = "devices"

# ------------------------------------------------------------------ models


class DeviceOut(BaseModel):
    device: str
    kind: str = Field(description="water, gas, electricity or parking")
    district: str
    account: str | None
    public_key: str = Field(description="the Ed25519 key its readings are signed with now (hex)")
    status: str = Field(description="active, suspended or revoked")
    enrolled_at: str
    enrolled_at_ms: int
    revoked_at: str | None
    revoked_at_ms: int | None
    online: str = Field(description="what the device last said of itself: online, offline, or unknown")


class DevicePageOut(BaseModel):
    items: list[DeviceOut]
    next: str | None = Field(description="the cursor of the next page; null: this is the last")


class LastReadingOut(BaseModel):
    ts: str
    ts_ms: int
    value: int
    seq: int
    received_at: str
    received_at_ms: int
    height: int


class SuspensionOut(BaseModel):
    at: str
    at_ms: int
    until: str
    until_ms: int
    rule: dict[str, Any] = Field(description="the message budget it broke, as the chain recorded it")
    over_budget: int
    status: str
    reinstated_at: str | None
    reinstated_at_ms: int | None


class DeviceDetailOut(BaseModel):
    device: str
    kind: str
    district: str
    account: str | None
    public_key: str
    status: str = Field(description="active, suspended or revoked")
    enrolled_at: str
    enrolled_at_ms: int
    revoked_at: str | None
    revoked_at_ms: int | None
    online: str | None = Field(description="online or offline, as the device last said; null: never said")
    status_changed_at: str | None
    status_changed_at_ms: int | None
    last: LastReadingOut | None = Field(description="its newest ledgered reading")
    readings_last_day: int
    rejects_last_day: int
    suspension: SuspensionOut | None = Field(description="its latest budget suspension, if it ever had one")


Kind = Literal["water", "gas", "electricity", "parking"]


class EnrolIn(BaseModel):
    device: str = Field(pattern=DEVICE_PATTERN, examples=["wm-d02-000042"])
    kind: Kind
    district: str = Field(pattern=DISTRICT_PATTERN, examples=["d02"])
    public_key: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="the device's Ed25519 public key (hex)")
    account: str | None = Field(default=None, pattern=DEVICE_PATTERN, examples=["hh-0001"])


class EnrolledOut(BaseModel):
    device: str
    mqtt_username: str
    mqtt_password: str | None = Field(
        description="the device's broker password, shown this once; null on a replay (it is never stored)"
    )
    block: str = Field(description="the hash of the block that seals the enrolment")


class RevokedOut(BaseModel):
    device: str
    revoked_at: str
    revoked_at_ms: int
    operator: str
    block: str


# ------------------------------------------------------------------ routes


@router.get("/devices", response_model=DevicePageOut)
def devices(c: CtxDep, district: District = None, cursor: Cursor = None, limit: Limit = 100) -> Any:
    """Enrolled devices in id order, of one district or of every district the caller may read."""
    scope = list_scope(c, DATASET, district)
    after = cursor_of(cursor, str)
    rows = c.ledger.device_page(scope, after[0] if after else None, limit + 1)
    log_list(c, DATASET, scope, (r["district"] for r in rows[:limit]))
    return {"items": stamped(rows[:limit]), "next": next_cursor(rows, limit, lambda r: [r["device"]])}


@router.get("/devices/{device}", response_model=DeviceDetailOut, responses=problems(404, what="device"))
def device(c: CtxDep, device: DeviceId) -> Any:
    """One device: its record (never its broker password), connection status, newest reading and suspension."""
    grant = c.allow(DATASET, device_district(c, device))
    found = c.ledger.view("device_detail", {"device": device})
    if found is None:
        raise NotFound(f"no device {device}")
    c.served(DATASET, found["district"], grant, 1)
    return stamped(found)


@router.post(
    "/devices",
    response_model=EnrolledOut,
    status_code=201,
    responses=problems(409, 413),
)
def enrol(c: CtxDep, body: EnrolIn) -> Any:
    """Enrol a device whose key was made on it (a ledger entry); needs `devices` write scope in its
    district. The answer holds the device's broker password this once: a replay of the request (same
    Idempotency-Key) answers null for it, since the password is not kept anywhere to repeat."""
    if body.district in RESERVED_DISTRICTS:
        raise Refused(f"{body.district} is the ledger's own topic space, not a district")
    c.allow(DATASET, body.district, write=True)
    password: list[str] = []

    def run() -> dict[str, Any]:
        if c.ledger.view("device_district", {"device": body.device}) is not None:
            raise Conflict(f"device {body.device} is already enrolled")
        done = c.ledger.enroll_device(
            body.device, body.kind, body.district, body.public_key.lower(), body.account, c.actor()
        )
        password.append(done["mqtt_password"])
        return {**done, "mqtt_password": None}  # what is remembered for a replay

    answer = idempotent(c, body, run)
    headers = {"Cache-Control": "no-store"}
    if not password:  # a replay
        answer.headers.update(headers)
        return answer
    return JSONResponse(
        {**json.loads(bytes(answer.body)), "mqtt_password": password[0]}, status_code=201, headers=headers
    )


@router.post(
    "/devices/{device}/revoke",
    response_model=RevokedOut,
    responses=problems(404, 409, what="device"),
)
def revoke(c: CtxDep, device: DeviceId) -> Any:
    """Retire a device (a ledger entry): its broker login goes at once, its later readings are quarantined."""
    c.allow(DATASET, device_district(c, device), write=True)

    def run() -> Any:
        found = device_record(c, device)
        if found is not None and found["status"] == "revoked":
            raise Conflict(f"device {device} is already revoked")
        return stamped(c.ledger.revoke_device(device, c.actor()))

    return idempotent(c, None, run, status=200)
