"""`/v1/devices/{device_id}/patients`: which patients a device may send readings for.

Device admins (and admins) set it; each change and each read names patients,
so each is audited. Ingest picks a change up within a few seconds.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.store.assignments import Assignments

_ID = r"^[A-Za-z0-9._:-]{1,64}$"
DeviceId = Annotated[str, Path(pattern=_ID)]


class Assignment(BaseModel):
    patients: list[Annotated[str, Field(pattern=_ID)]] = Field(min_length=1, max_length=64)


def assignments_router(store: Assignments) -> APIRouter:
    router = APIRouter(prefix="/v1/devices", tags=["devices"])

    @router.get("/{device_id}/patients")
    async def get_assignment(
        access: Annotated[Access, Depends(auth.assigns)], device_id: DeviceId
    ) -> dict[str, Any]:
        patients = await store.get(device_id)
        if patients is None:
            raise HTTPException(404, f"device {device_id} is not assigned through the API")
        await access.record("read", patients, resource=device_id)
        return {"device_id": device_id, "patients": patients}

    @router.put("/{device_id}/patients")
    async def put_assignment(
        access: Annotated[Access, Depends(auth.assigns)], device_id: DeviceId, body: Assignment
    ) -> dict[str, Any]:
        """Bind the device to these patients: it may send readings only for them."""
        before = await store.get(device_id) or []
        patients = sorted(set(body.patients))
        # Audited before it is written: who bound which device to whom.
        await access.record("assign", [*before, *patients], resource=device_id)
        await store.set(device_id, patients)
        return {"device_id": device_id, "patients": patients}

    @router.delete("/{device_id}/patients")
    async def delete_assignment(
        access: Annotated[Access, Depends(auth.assigns)], device_id: DeviceId
    ) -> dict[str, Any]:
        """Lift the API's assignment (the settings' one, if any, applies again)."""
        before = await store.get(device_id) or []
        await access.record("unassign", before, resource=device_id)
        await store.set(device_id, None)
        return {"device_id": device_id, "patients": []}

    return router
