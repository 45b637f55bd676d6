"""History beyond Redis: per-bucket trends of one vital over any period.

Recent readings come from Redis, older ones from the archive, and whole hours
or days the latest `trends` job run covered from its output
(:mod:`healthsync.store.history`); the same authentication, roles and audit as
every patient read.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.models import PatientId
from healthsync.config import Settings
from healthsync.domain.readings import VITALS
from healthsync.redis_client import connect
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.trends import BUCKETS_S
from healthsync.store.history import History
from healthsync.store.job_files import jobs_store
from healthsync.store.precomputed import TrendRuns
from healthsync.store.queries import LiveReader
from healthsync.store.runs import RunStore
from healthsync.store.vitals_history import MAX_SPAN_DAYS

TIME_HELP = "ISO 8601 (2026-11-28T10:00:00Z) or epoch seconds"
# How far past now a period may end (a clock a little ahead); it must start after 1970,
# and span at most store.vitals_history.MAX_SPAN_DAYS.
FUTURE_SLACK_S = 86_400.0


def parse_time(text: str | None, default: float) -> float:
    """Epoch seconds from ISO 8601 or a number; 422 for NaN or infinity, 400 for anything else."""
    if text is None:
        return default
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise HTTPException(422, f"{text!r} is not a finite number of epoch seconds")
        return number
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(400, f"{text!r} is neither ISO 8601 nor epoch seconds") from None
    if stamp.tzinfo is None:
        raise HTTPException(400, f"{text!r} has no time zone; add Z or an offset")
    return stamp.timestamp()


def parse_period(
    since: str | None, until: str | None, default_span_s: float, now: float
) -> tuple[float, float]:
    """The period a history request asks for (by default the `default_span_s` up to
    `until`, itself by default `now`); 400 for one out of reach (see MAX_SPAN_DAYS), or
    ending before it starts."""
    end = parse_time(until, now)
    start = parse_time(since, end - default_span_s)
    for name, value, text in (("since", start, since), ("until", end, until)):
        if not 0.0 <= value <= now + FUTURE_SLACK_S:
            raise HTTPException(400, f"{name} {text!r} is outside 1970-01-01 to a day from now")
    if start > end:
        raise HTTPException(400, "since must not be after until")
    if end - start > MAX_SPAN_DAYS * 86_400:
        raise HTTPException(
            400, f"a period may span at most {MAX_SPAN_DAYS} days; ask for a longer one in parts"
        )
    return start, end


class TrendQuery(BaseModel):
    """The query of a trends request."""

    vital: str = Field(description="one of " + ", ".join(VITALS))
    since: str | None = Field(None, description=TIME_HELP + "; default 24 h before until")
    until: str | None = Field(None, description=TIME_HELP + "; default now")
    bucket: Literal["5m", "1h", "1d"] = "1h"


def router(settings: Settings, live: LiveReader) -> APIRouter:
    """The history routes over the live store, the archive the settings name, and the
    `trends` job's output."""
    # The run records are read from a worker thread: a blocking client of their own.
    client = connect(settings.redis)
    precomputed = TrendRuns(
        RunStore(client, settings.redis.keys),
        jobs_store(settings),
        live.records.codec,
    )
    return history_router(History(live, Archive.from_settings(settings).reader(), precomputed))


def history_router(history: History) -> APIRouter:
    router = APIRouter(tags=["patients"])

    @router.get("/v1/patients/{patient_id}/trends")
    async def trends(
        access: Annotated[Access, Depends(auth.reads("Observation"))],
        patient_id: PatientId,
        query: Annotated[TrendQuery, Query()],
    ) -> dict[str, Any]:
        vital = query.vital
        if vital not in VITALS:
            raise HTTPException(
                400, f"unknown vital {vital!r}; expected one of {', '.join(VITALS)}"
            )
        start, end = parse_period(query.since, query.until, 86_400, time.time())
        buckets, precomputed = await history.trends_from(
            patient_id, vital, (start, end), BUCKETS_S[query.bucket]
        )
        await access.record("read", [patient_id])
        return {
            "patient_id": patient_id,
            "vital": vital,
            "bucket": query.bucket,
            "since": start,
            "until": end,
            "buckets": buckets,
            # The `trends` run whose output gave the whole buckets in this period, if any.
            "precomputed": precomputed,
        }

    return router
