"""Monitored patients and their latest vitals, from the live cache (history: routes/vitals.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.models import LatestVitals, PatientId, PatientList
from healthsync.api.services import Reader

router = APIRouter(tags=["patients"])


@router.get("/v1/patients", response_model=PatientList)
async def patients(
    reader: Reader,
    access: Annotated[Access, Depends(auth.reads("Patient", "Observation", "RiskAssessment"))],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    rows = await reader.patients(limit)
    await access.record("search", [row["patient_id"] for row in rows])
    return {"patients": rows, "count": len(rows)}


@router.get("/v1/patients/{patient_id}/vitals/latest", response_model=LatestVitals)
async def latest(
    reader: Reader,
    access: Annotated[Access, Depends(auth.reads("Observation", "RiskAssessment"))],
    patient_id: PatientId,
) -> dict[str, Any]:
    vitals = await reader.latest(patient_id)
    if vitals is None:
        raise HTTPException(404, f"no vitals for patient {patient_id}")
    news2 = await reader.news2(patient_id)
    await access.record("read", [patient_id])
    return {"patient_id": patient_id, "vitals": vitals, "news2": news2}
