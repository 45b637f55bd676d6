"""De-identified aggregates, open to every role."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.models import Summary
from healthsync.api.services import Reader

router = APIRouter(tags=["aggregates"])


@router.get("/v1/summary", response_model=Summary)
async def summary(
    reader: Reader, _access: Annotated[Access, Depends(auth.summary)]
) -> dict[str, Any]:
    """De-identified aggregates: counts of patients, open alerts and NEWS2 bands."""
    return await reader.summary()
