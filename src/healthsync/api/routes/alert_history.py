"""A patient's alert history for any period, from Redis and the archive, in pages.

``GET /v1/patients/{id}/alerts?since=&until=&limit=&cursor=``: the alerts
opened in the period, newest first (:mod:`healthsync.store.alert_history`).
``/v1/alerts`` stays the live listing (open alerts, and the recent resolved
ones); this is where older ones come back. Pages end with a sealed
``next_cursor`` (:mod:`healthsync.api.cursors`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.cursors import Cursors
from healthsync.api.models import AlertList, PatientId
from healthsync.api.routes.history import TIME_HELP, parse_period
from healthsync.security.tokens import MAX_TOKEN_CHARS
from healthsync.store.alert_history import AlertHistory, position

_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class AlertPage:
    """Which page of an alert listing the caller asked for."""

    limit: int
    cursor: str | None


async def alert_page(
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    cursor: Annotated[
        str | None,
        Query(max_length=MAX_TOKEN_CHARS, description="next_cursor of the previous page"),
    ] = None,
) -> AlertPage:
    return AlertPage(limit, cursor)


def alert_history_router(history: AlertHistory, cursors: Cursors) -> APIRouter:
    router = APIRouter(tags=["alerts"])

    @router.get(
        "/v1/patients/{patient_id}/alerts",
        response_model=AlertList,
        response_model_exclude_none=True,
    )
    async def patient_alerts(
        access: Annotated[Access, Depends(auth.reads("Communication", "Flag"))],
        patient_id: PatientId,
        paging: Annotated[AlertPage, Depends(alert_page)],
        since: Annotated[
            str | None, Query(description=TIME_HELP + "; default 24 h before until")
        ] = None,
        until: Annotated[str | None, Query(description=TIME_HELP + "; default now")] = None,
    ) -> dict[str, Any]:
        start, end = parse_period(since, until, _DAY_S, time.time())
        rows = await history.alerts(patient_id, start, end)
        limit = paging.limit
        if paging.cursor is not None:
            after = cursors.decode(paging.cursor, "alerts", patient_id)
            rows = [row for row in rows if position(row) < after]
        page = rows[:limit]
        await access.record("search", [patient_id])
        answer: dict[str, Any] = {"alerts": page, "count": len(page)}
        if len(rows) > limit:
            answer["next_cursor"] = cursors.encode(position(page[-1]), "alerts", patient_id)
        return answer

    return router
