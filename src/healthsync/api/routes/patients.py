"""Monitored patients, their latest vitals and their recent history, from the live cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.models import History, LatestVitals, PatientId, PatientList
from healthsync.api.services import Reader
from healthsync.domain.readings import VITALS

router = APIRouter(tags=["patients"])
_HISTORY_LIMIT = 10_000


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


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    patient_id: str
    vital: str | None
    since: float | None
    until: float | None
    limit: int


async def _history_query(
    patient_id: PatientId,
    vital: Annotated[str | None, Query(description="one of " + ", ".join(VITALS))] = None,
    since: Annotated[
        float | None, Query(description="epoch seconds; default 1 h ago", allow_inf_nan=False)
    ] = None,
    until: Annotated[
        float | None, Query(description="epoch seconds; default now", allow_inf_nan=False)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=_HISTORY_LIMIT)] = 1000,
) -> HistoryQuery:
    """The history request's parameters, checked by FastAPI in the order the route declared them."""
    return HistoryQuery(patient_id, vital, since, until, limit)


@router.get("/v1/patients/{patient_id}/vitals", response_model=History)
async def history(
    reader: Reader,
    access: Annotated[Access, Depends(auth.reads("Observation"))],
    query: Annotated[HistoryQuery, Depends(_history_query)],
) -> dict[str, Any]:
    vital, patient_id = query.vital, query.patient_id
    if vital is not None and vital not in VITALS:
        raise HTTPException(400, f"unknown vital {vital!r}; expected one of {', '.join(VITALS)}")
    now = time.time()
    start = query.since if query.since is not None else now - 3600
    end = query.until if query.until is not None else now
    if start > end:
        raise HTTPException(400, "since must not be after until")
    if await reader.latest(patient_id) is None:
        raise HTTPException(404, f"no vitals for patient {patient_id}")
    points = await reader.history(patient_id, vital, start, end, query.limit)
    await access.record("read", [patient_id])
    return {"patient_id": patient_id, "since": start, "until": end, "readings": points}
