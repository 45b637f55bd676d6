"""Job runs over HTTP: listed and read by any role, started by admins only, audited, and
run for real by the scheduler that takes the request (the local runner, a subprocess)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.jobs.catalog import catalog
from healthsync.jobs.runners import LocalRunner
from healthsync.jobs.scheduler import Scheduler
from healthsync.names import JOBS
from healthsync.stack import Service
from healthsync.store.runs import RunRecord, RunStore
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, clear_prefix, make_settings
from tests.jobs.test_job_run import child_env


@dataclass
class JobsApi:
    settings: Settings
    http: httpx.Client
    runs: RunStore
    credentials: Credentials
    tmp: Path

    def as_role(self, role: str) -> dict[str, str]:
        return self.credentials.headers(role)

    def audit(self) -> list[dict[str, Any]]:
        path = self.settings.auth.audit_log_file
        assert path is not None
        return [json.loads(line) for line in path.read_text().splitlines()]

    def scheduler(self) -> tuple[Scheduler, LocalRunner]:
        env = child_env(self.settings)
        runner = LocalRunner(self.runs, self.tmp / "logs", 60, env=env)
        known = frozenset(JOBS)
        return Scheduler({}, runner, self.runs, 120, 3600, known=known), runner


@pytest.fixture(scope="module")
def served(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[JobsApi]:
    tmp = tmp_path_factory.mktemp("jobs-api")
    settings = make_settings(broker, redis_server, jobs={"output_url": f"file://{tmp}/archive"})
    client = Redis.from_url(str(settings.redis.url))
    pipeline = Pipeline(settings, tmp / "run")
    pipeline.start(stages=("api",))
    base = f"http://{settings.api.host}:{settings.api.port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            yield JobsApi(settings, http, RunStore(client, settings.redis.keys), credentials, tmp)
    finally:
        pipeline.stop()
        clear_prefix(client, settings.redis.prefix)
        client.close()


def test_the_api_knows_every_job_the_command_runs() -> None:
    assert set(JOBS) == set(catalog()) | {"reprocess", "verify", "compact"}


def test_an_admin_starts_a_run_the_scheduler_runs_it_and_anyone_can_follow_it(
    served: JobsApi,
) -> None:
    body = {"since": 1.7e9, "until": 1.7e9 + 3600, "run_id": "api-1"}
    answer = served.http.post(
        "/v1/jobs/alarm-report/run", json=body, headers=served.as_role("admin")
    )
    assert answer.status_code == 202, answer.text
    assert (answer.json()["status"], answer.json()["trigger"]) == ("queued", "api")
    [audit] = [r for r in served.audit() if r["action"] == "run-job"]
    assert (audit["actor"], audit["resource"], audit["patients"]) == (
        "apikey:test-admin",
        "job:alarm-report:api-1",
        [],
    )
    scheduler, runner = served.scheduler()
    [launch] = scheduler.tick()
    assert (launch.run_id, launch.trigger, launch.until) == ("api-1", "api", 1.7e9 + 3600)
    runner.join(timeout=60)
    viewer = served.as_role("viewer")
    run = served.http.get("/v1/jobs/api-1", headers=viewer).json()
    assert (run["status"], run["exit_code"], run["runner"]) == ("succeeded", 0, "local")
    assert run["summary"] == {"alerts": 0, "patient_hours": 0, "alerts_per_patient_hour": None}
    listed = served.http.get("/v1/jobs", params={"job": "alarm-report"}, headers=viewer).json()
    assert [r["run_id"] for r in listed["runs"]] == ["api-1"]
    assert (served.tmp / "archive/jobs/alarm-report/api-1/report.json").exists()


def test_only_admins_start_runs(served: JobsApi) -> None:
    for role in ("clinician", "viewer", "device-admin"):
        answer = served.http.post("/v1/jobs/trends/run", headers=served.as_role(role))
        assert answer.status_code == 403, role
        assert "the right to run jobs" in answer.json()["error"]["message"]
    assert served.http.post("/v1/jobs/trends/run").status_code == 401
    assert served.http.get("/v1/jobs").status_code == 401
    assert served.runs.recent(job="trends") == []


def test_bad_requests_are_refused_with_the_reason(served: JobsApi) -> None:
    admin = served.as_role("admin")
    answer = served.http.post("/v1/jobs/nope/run", headers=admin)
    assert (answer.status_code, answer.json()["error"]["message"]) == (
        404,
        "no job 'nope'; known: alarm-report, trends, reprocess, verify, compact",
    )
    answer = served.http.post("/v1/jobs/trends/run", json={"since": 10, "until": 5}, headers=admin)
    assert (answer.status_code, answer.json()["error"]["message"]) == (
        422,
        "since must be before until",
    )
    assert served.http.get("/v1/jobs/none-such", headers=admin).status_code == 404
    # compact's test hook stops a run for good at a step: never a thing to ask over HTTP.
    hook = {"options": {"pause_after": "written"}}
    answer = served.http.post("/v1/jobs/compact/run", json=hook, headers=admin)
    assert (answer.status_code, answer.json()["error"]["message"]) == (
        422,
        "pause_after is a test hook of `healthsync job run`, not available over HTTP",
    )
    # A time no run can cover: NaN passed the check above, and so did the year -10**300.
    for body in (
        b'{"since": NaN}',
        b'{"until": Infinity}',
        b'{"since": -1e308}',
        b'{"since": 1.7e9, "until": 1e300}',
    ):
        as_json = admin | {"content-type": "application/json"}
        answer = served.http.post("/v1/jobs/trends/run", content=body, headers=as_json)
        assert answer.status_code == 422, (body, answer.text)


def test_a_busy_job_is_409_and_a_request_that_finds_it_busy_fails_with_the_reason(
    served: JobsApi,
) -> None:
    admin = served.as_role("admin")
    queued = served.http.post("/v1/jobs/trends/run", json={"run_id": "tr-1"}, headers=admin)
    assert queued.status_code == 202
    served.runs.acquire("trends", "tr-other", 60)  # another run took the job meanwhile
    try:
        answer = served.http.post("/v1/jobs/trends/run", json={"run_id": "tr-2"}, headers=admin)
        assert (answer.status_code, answer.json()["error"]["message"]) == (
            409,
            "job trends is already running (run tr-other)",
        )
        scheduler, _runner = served.scheduler()
        assert scheduler.tick() == []
        record = served.runs.get("tr-1")
        assert record is not None
        assert (record.status, record.message) == (
            "failed",
            "job trends is already running (run tr-other)",
        )
    finally:
        served.runs.release("trends", "tr-other")


def test_a_run_id_in_use_is_409_and_its_run_starts_once(served: JobsApi) -> None:
    """A client that retried its request got 202 twice for one run id, and the scheduler
    started two processes of it at once; another job's run id replaced that run's record."""
    admin = served.as_role("admin")
    body = {"since": 1.7e9, "until": 1.7e9 + 3600, "run_id": "nightly-1"}
    first = served.http.post("/v1/jobs/alarm-report/run", json=body, headers=admin)
    assert first.status_code == 202, first.text
    for job in ("alarm-report", "trends"):
        again = served.http.post(f"/v1/jobs/{job}/run", json=body, headers=admin)
        assert (again.status_code, again.json()["error"]["message"]) == (
            409,
            "job run nightly-1 exists already; ask with another run_id",
        )
    scheduler, runner = served.scheduler()
    assert [launch.run_id for launch in scheduler.tick()] == ["nightly-1"]
    runner.join(timeout=60)
    run = served.runs.get("nightly-1")
    assert run is not None
    assert (run.job, run.status) == ("alarm-report", "succeeded")


def test_the_openapi_document_shows_the_run_shape(served: JobsApi) -> None:
    document = served.http.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    answer = document["paths"]["/v1/jobs/{run_id}"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/RunView")
    assert set(schemas["RunView"]["properties"]) == {
        *("run_id", "job", "status", "runner", "trigger", "created_at", "params"),
        *("started_at", "finished_at", "exit_code", "message", "summary", "output", "worker"),
    }
    # The same fields as the run records the scheduler and the workers write.
    assert set(schemas["RunView"]["properties"]) == {f.name for f in fields(RunRecord)}
    listed = document["paths"]["/v1/jobs"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"]["$ref"].endswith("/RunList")
    started = document["paths"]["/v1/jobs/{name}/run"]["post"]["responses"]["202"]
    assert started["content"]["application/json"]["schema"]["$ref"].endswith("/RunView")
