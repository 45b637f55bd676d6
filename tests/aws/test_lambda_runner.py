"""The scheduler's aws runner invokes the launcher function through the real Lambda API.

moto runs no function code here (there is no Docker): its stand-in answers each
invocation with the event itself. That shows what the runner sent, and, since it is not
the launcher's `{"ok": true}`, what the scheduler does when the launcher starts nothing:
the run is recorded as failed with the answer, the job's lock is freed, and the slot is
not retried in a loop.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime

import boto3
import httpx
from redis import Redis

from healthsync.config import Settings
from healthsync.jobs.runners import LambdaRunner
from healthsync.jobs.scheduler import Scheduler
from healthsync.store.runs import RunStore
from tests.aws.conftest import MotoServer


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def echo_function(name: str) -> None:
    role = boto3.client("iam").create_role(
        RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("launcher.py", "def handler(event, context):\n    return event\n")
    boto3.client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role,
        Handler="launcher.handler",
        Code={"ZipFile": code.getvalue()},
    )


def test_a_launch_the_function_does_not_confirm_is_a_recorded_failure(
    aws: MotoServer, settings: Settings, redis: Redis
) -> None:
    httpx.post(
        f"{aws.url}/moto-api/config", json={"lambda": {"use_docker": False}}
    ).raise_for_status()
    name = f"launcher-{settings.redis.prefix}"
    echo_function(name)
    runs = RunStore(redis, settings.redis.keys)
    clock = [at("2026-11-30T16:59:00")]
    scheduler = Scheduler(
        {"trends": "0 * * * *"},
        LambdaRunner(name),
        runs,
        lock_ttl_s=120,
        period_s=3600,
        clock=lambda: clock[0],
    )
    scheduler.tick()
    clock[0] = at("2026-11-30T17:00:00")
    assert scheduler.tick() == []
    record = runs.get("trends-20261130T170000Z")
    assert record is not None
    assert (record.status, record.runner, record.trigger) == ("failed", "aws", "schedule")
    assert record.message.startswith(f"{name} did not start trends-20261130T170000Z: ")
    # The event the runner sent, as the stand-in echoed it.
    assert "'job': 'trends'" in record.message and "'until': 1796058000.0" in record.message
    assert runs.holder("trends") is None
    clock[0] = at("2026-11-30T17:00:30")
    assert scheduler.tick() == []  # not retried until the next slot
    assert [r.run_id for r in runs.recent(job="trends")] == ["trends-20261130T170000Z"]
