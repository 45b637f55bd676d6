"""Job runs over HTTP: list them, read one, ask for one.

- ``GET /v1/jobs?job=&limit=``: recent runs, newest first (any role that may
  read the aggregates: run records hold no patient data);
- ``GET /v1/jobs/{run_id}``: one run record;
- ``POST /v1/jobs/{name}/run``: admin only, audited before anything happens;
  answers 202 with the queued run record. The scheduler (``healthsync
  scheduler``, which ``up`` starts) takes the request and starts it on its
  runner, local or AWS, so the API never runs jobs itself. 409 when the job
  is running already.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from healthsync.api import auth
from healthsync.api.auth import Access, Credentials, Guard
from healthsync.api.routes.history import FUTURE_SLACK_S
from healthsync.config import Settings
from healthsync.names import JOBS
from healthsync.redis_client import connect
from healthsync.store.runs import (
    RUN_ID_PATTERN,
    RunExistsError,
    RunRecord,
    RunStore,
    new_run_id,
)

_OPTION_KEY = r"^[a-z][a-z0-9_]{0,39}$"


class RunRequest(BaseModel):
    """What to run; by default the last `jobs.default_period_s` up to now."""

    model_config = {"extra": "forbid"}

    since: float | None = Field(None, description="epoch seconds", allow_inf_nan=False)
    until: float | None = Field(None, description="epoch seconds; default now", allow_inf_nan=False)
    run_id: str | None = Field(None, pattern=RUN_ID_PATTERN)
    options: dict[str, str] = Field(default_factory=dict, description="job options, KEY: VALUE")


class RunView(BaseModel):
    """A job run, as `healthsync job list` and the dashboard see it (no patient data)."""

    run_id: str
    job: str
    status: str = Field(description="queued, running, succeeded or failed")
    runner: str = Field(description="local, aws, cli, or scheduler while queued")
    trigger: str = Field(description="schedule, api, cli or lambda")
    created_at: float
    params: dict[str, Any] = Field(description="since, until, patient count, options")
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    message: str = ""
    summary: dict[str, Any] = Field(default_factory=dict, description="the job's counts")
    output: str | None = Field(None, description="where the run's files are")
    worker: str | None = Field(None, description="the EC2 instance id, or host:pid")


class RunList(BaseModel):
    runs: list[RunView]
    count: int


async def runs_jobs(request: Request, credentials: Credentials) -> Access:
    guard: Guard = request.app.state.guard
    need = "the right to run jobs (the admin role)"
    return await guard.access(request, credentials, lambda grants: grants.run_jobs, need)


def _view(record: RunRecord) -> dict[str, Any]:
    return asdict(record)


def jobs_router(settings: Settings) -> APIRouter:
    if not settings.redis.url:
        raise ValueError("the jobs routes need Redis")
    client = connect(settings.redis)
    runs = RunStore(client, settings.redis.keys)
    period_s = settings.jobs.default_period_s
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.get("", response_model=RunList)
    async def list_runs(
        _access: Annotated[Access, Depends(auth.summary)],
        job: Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9-]{0,39}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        records = await asyncio.to_thread(runs.recent, limit, job)
        return {"runs": [_view(r) for r in records], "count": len(records)}

    @router.get("/{run_id}", response_model=RunView)
    async def get_run(
        _access: Annotated[Access, Depends(auth.summary)],
        run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN)],
    ) -> dict[str, Any]:
        record = await asyncio.to_thread(runs.get, run_id)
        if record is None:
            raise HTTPException(404, f"no job run {run_id}")
        return _view(record)

    @router.post("/{name}/run", status_code=202, response_model=RunView)
    async def start_run(
        access: Annotated[Access, Depends(runs_jobs)],
        name: Annotated[str, Path(pattern=r"^[a-z][a-z0-9-]{0,39}$")],
        body: RunRequest | None = None,
    ) -> dict[str, Any]:
        """Queue a run of job `name` for the scheduler; 202 with its run record."""
        now = time.time()
        run_id, params = _plan(name, body or RunRequest(), period_s, now)
        holder = await asyncio.to_thread(runs.holder, name)
        if holder is not None:
            raise HTTPException(409, f"job {name} is already running (run {holder})")
        # Audited before it is queued: a run nobody can trace is not started.
        await access.record("run-job", [], resource=f"job:{name}:{run_id}")
        record = RunRecord(run_id, name, "queued", "scheduler", "api", now, params=params)
        record = record.update(message=f"requested by {access.principal.subject}")
        try:
            await asyncio.to_thread(runs.request, record)
        except RunExistsError as exc:
            raise HTTPException(409, str(exc)) from None
        return _view(record)

    return router


def _plan(name: str, wanted: RunRequest, period_s: float, now: float) -> tuple[str, dict[str, Any]]:
    """The run id and the run record's params of a request, or the HTTP error it deserves."""
    if name not in JOBS:
        raise HTTPException(404, f"no job {name!r}; known: {', '.join(JOBS)}")
    bad = [k for k in wanted.options if not _valid_key(k)]
    if bad:
        raise HTTPException(422, f"invalid option name(s): {', '.join(sorted(bad))}")
    hooks = ", ".join(sorted(_TEST_HOOKS & wanted.options.keys()))
    if hooks:
        raise HTTPException(
            422, f"{hooks} is a test hook of `healthsync job run`, not available over HTTP"
        )
    until = wanted.until if wanted.until is not None else now
    since = wanted.since if wanted.since is not None else until - period_s
    if since >= until:
        raise HTTPException(422, "since must be before until")
    if since < 0 or until > now + FUTURE_SLACK_S:
        raise HTTPException(422, "a run's period must lie between 1970-01-01 and a day from now")
    params: dict[str, Any] = {"since": since, "until": until}
    if wanted.options:
        params["options"] = dict(wanted.options)
    return wanted.run_id or new_run_id(name, now), params


# Options that stop a run for good at a step, so a test can kill it there (compact's).
_TEST_HOOKS = frozenset({"pause_after"})


def _valid_key(key: str) -> bool:
    return re.fullmatch(_OPTION_KEY, key) is not None
