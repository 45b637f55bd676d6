"""Alerts from the live cache, and their acknowledgement by the caller."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.cursors import Cursors
from healthsync.api.models import ID_PATTERN, AlertList
from healthsync.api.routes.alert_history import AlertPage, alert_page
from healthsync.api.services import Reader

router = APIRouter(tags=["alerts"])


def alert_list_router(cursors: Cursors) -> APIRouter:
    """``GET /v1/alerts``: the live listing, newest first, in pages whose sealed
    ``next_cursor`` is the last alert's place in it, bound to the status and patient
    asked for (:mod:`healthsync.api.cursors`)."""
    listing = APIRouter(tags=["alerts"])

    @listing.get("/v1/alerts", response_model=AlertList, response_model_exclude_none=True)
    async def alerts(
        reader: Reader,
        access: Annotated[Access, Depends(auth.reads("Communication", "Flag"))],
        paging: Annotated[AlertPage, Depends(alert_page)],
        status: Annotated[str, Query(pattern="^(open|resolved|all)$")] = "open",
        patient_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    ) -> dict[str, Any]:
        after = None
        if paging.cursor is not None:
            after = cursors.decode_exact(paging.cursor, "alert-list", status, patient_id)
        rows, following = await reader.alerts(status, patient_id, paging.limit, after)
        await access.record("search", [row["patient_id"] for row in rows])
        page: dict[str, Any] = {"alerts": rows, "count": len(rows)}
        if following is not None:
            page["next_cursor"] = cursors.encode(following, "alert-list", status, patient_id)
        return page

    return listing


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
    grants = access.principal.grants
    if not all(grants.can_read(t) for t in ("Communication", "Flag")):
        # A write scope acknowledges; it reads nothing of the alert (docs/SECURITY.md).
        return {k: acknowledged[k] for k in ("alert_id", "acknowledged", "acknowledgement")}
    return acknowledged
