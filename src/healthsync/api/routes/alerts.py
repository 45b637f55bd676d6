"""Alerts from the live cache, and their acknowledgement by the caller."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.models import ID_PATTERN, AlertList
from healthsync.api.services import Reader

router = APIRouter(tags=["alerts"])
# A cursor counts alerts before the page: far past any listing (Redis refuses offsets
# past 2**63, a 500), and far below it.
_MAX_CURSOR = 1_000_000_000


@dataclass(frozen=True)
class PageRequest:
    """Which page of a listing the caller asked for."""

    limit: int
    cursor: int


def _page_request(
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    cursor: Annotated[
        int, Query(ge=0, le=_MAX_CURSOR, description="next_cursor of the previous page")
    ] = 0,
) -> PageRequest:
    return PageRequest(limit, cursor)


Paging = Annotated[PageRequest, Depends(_page_request)]


@router.get("/v1/alerts", response_model=AlertList, response_model_exclude_none=True)
async def alerts(
    reader: Reader,
    access: Annotated[Access, Depends(auth.reads("Communication", "Flag"))],
    paging: Paging,
    status: Annotated[str, Query(pattern="^(open|resolved|all)$")] = "open",
    patient_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> dict[str, Any]:
    rows, following = await reader.alerts(status, patient_id, paging.limit, paging.cursor)
    await access.record("search", [row["patient_id"] for row in rows])
    page: dict[str, Any] = {"alerts": rows, "count": len(rows)}
    if following is not None:
        page["next_cursor"] = str(following)
    return page


@router.post("/v1/alerts/{alert_id}/ack")
async def acknowledge(
    reader: Reader,
    access: Annotated[Access, Depends(auth.acknowledges)],
    alert_id: Annotated[str, Path(pattern="^[0-9a-f]{1,64}$")],
) -> dict[str, Any]:
    """Record who saw the alert: the caller's identity, never a name sent in the body."""
    alert = await reader.alert(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    # Audited before it is written: an acknowledgement nobody can trace is not made.
    await access.record("acknowledge", [alert["patient_id"]], resource=alert_id)
    acknowledged = await reader.acknowledge(alert_id, by=access.principal.subject, at=time.time())
    if acknowledged is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return acknowledged
