"""A patient's readings for any period, in pages: Redis for the recent day, the archive before.

The merge is :mod:`healthsync.store.vitals_history`. A page ends with
``next_cursor`` when the period holds more: an opaque token (the last
reading's time and id, sealed and bound to the patient and vital), so it
shows nothing of the patient and one altered or made for another query is
refused with 400.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.cursors import Cursors
from healthsync.api.models import History, PatientId
from healthsync.api.routes.history import TIME_HELP, parse_period
from healthsync.domain.readings import VITALS
from healthsync.security.tokens import MAX_TOKEN_CHARS
from healthsync.store.vitals_history import Position, Request, VitalsHistory

_HISTORY_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    cursor: str | None


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    patient_id: str
    vital: str | None
    since: str | None
    until: str | None
    page: PageRequest


async def _page_request(
    limit: Annotated[int, Query(ge=1, le=_HISTORY_LIMIT)] = 1000,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_TOKEN_CHARS, description="next_cursor of the previous page"),
    ] = None,
) -> PageRequest:
    return PageRequest(limit, cursor)


async def _history_query(
    patient_id: PatientId,
    page: Annotated[PageRequest, Depends(_page_request)],
    vital: Annotated[str | None, Query(description="one of " + ", ".join(VITALS))] = None,
    since: Annotated[
        str | None, Query(description=TIME_HELP + "; default 1 h before until")
    ] = None,
    until: Annotated[str | None, Query(description=TIME_HELP + "; default now")] = None,
) -> HistoryQuery:
    """The history request's parameters, checked by FastAPI in the order the route declared them."""
    return HistoryQuery(patient_id, vital, since, until, page)


def vitals_router(history: VitalsHistory, cursors: Cursors) -> APIRouter:
    router = APIRouter(tags=["patients"])

    @router.get("/v1/patients/{patient_id}/vitals", response_model=History)
    async def vitals(
        access: Annotated[Access, Depends(auth.reads("Observation"))],
        query: Annotated[HistoryQuery, Depends(_history_query)],
    ) -> dict[str, Any]:
        vital, patient_id = query.vital, query.patient_id
        if vital is not None and vital not in VITALS:
            raise HTTPException(
                400, f"unknown vital {vital!r}; expected one of {', '.join(VITALS)}"
            )
        start, end = parse_period(query.since, query.until, 3600, time.time())
        cursor = query.page.cursor
        after = None
        if cursor is not None:
            after = Position(*cursors.decode(cursor, "vitals", patient_id, vital))
        request = Request(patient_id, vital, start, end, query.page.limit, after)
        points, following = await history.page(request)
        if not points and after is None and await history.live.latest(patient_id) is None:
            raise HTTPException(404, f"no vitals for patient {patient_id}")
        await access.record("read", [patient_id])
        return {
            "patient_id": patient_id,
            "since": start,
            "until": end,
            "readings": points,
            "next_cursor": None
            if following is None
            else cursors.encode(
                (following.ts_ms, following.reading_id), "vitals", patient_id, vital
            ),
        }

    return router
