"""The Lambda function that starts a job on its own EC2 instance.

Invoked by the scheduler (``HEALTHSYNC_JOBS_RUNNER=aws``) or an EventBridge
rule with an event like ``{"job": "trends"}`` (optionally ``run_id``,
``since``, ``until``), it

1. takes the job's lock in the run-state Redis for the run id, so a second
   concurrent run of the job is refused (the worker takes the same lock with
   the same id, and releases it when the job ends);
2. launches one instance from the launch template, with user-data that runs
   ``healthsync job run <job> --run-id <id>`` and then powers off, and
   ``InstanceInitiatedShutdownBehavior=terminate``, so the instance goes away
   when the job is done; tagged ``healthsync:job`` and ``healthsync:run-id``;
3. records the run as queued, with the instance id, where the API reads runs.

Configuration, as Lambda functions have it, from the environment:
``HEALTHSYNC_JOBS_LAUNCH_TEMPLATE`` (the launch template's name),
``HEALTHSYNC_JOBS_STATE_URL`` (the Redis URL of the run records),
``HEALTHSYNC_REDIS_PREFIX`` (their key prefix, default ``hs``) and
``HEALTHSYNC_JOBS_TIMEOUT_S`` (how long a run may hold its lock, default 3600 s,
plus ``HEALTHSYNC_JOBS_LOCK_MARGIN_S``, default 60).

Failures that another attempt cannot fix (no such template, a bad event, the
job busy) are answered ``{"ok": false, "error": ...}`` rather than raised,
because a raised error makes Lambda retry an asynchronous invocation.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from redis import Redis

from healthsync.names import RedisKeys
from healthsync.store.runs import JobBusyError, RunRecord, RunStore, new_run_id, valid_run_id

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)

JOB_TAG = "healthsync:job"
RUN_ID_TAG = "healthsync:run-id"
_JOB_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
WORKER_SCRIPT = """#!/bin/bash
# HealthSync job worker: run one job, then power off; the instance terminates on shutdown.
# The image provides healthsync and its settings (/etc/healthsync/healthsync.toml, or
# variables in /etc/healthsync/jobs.env). HEALTHSYNC_BIN and HEALTHSYNC_POWEROFF exist so
# the same script can be exercised off EC2.
set -u
if [ -f /etc/healthsync/jobs.env ]; then set -a; . /etc/healthsync/jobs.env; set +a; fi
if [ -z "${{HEALTHSYNC_CONFIG:-}}" ] && [ -f /etc/healthsync/healthsync.toml ]; then
  export HEALTHSYNC_CONFIG=/etc/healthsync/healthsync.toml
fi
# Past jobs.timeout_s the job is stopped (status 124), as a local runner stops it: a hung
# job must not keep its instance, nor outlive its lock and overlap the next run.
timeout --kill-after=30 {timeout_s} ${{HEALTHSYNC_BIN:-/opt/healthsync/.venv/bin/healthsync}} \
  job run {args}
status=$?
echo "healthsync job {job} run {run_id} exited with status $status"
${{HEALTHSYNC_POWEROFF:-/sbin/shutdown -h now}}
exit $status
"""


class LaunchRefusedError(Exception):
    """A run that cannot start; retrying the same request will not help."""


def worker_script(
    job: str,
    run_id: str,
    period: tuple[float | None, float | None],
    options: Mapping[str, str] | None = None,
    timeout_s: float = 3600.0,
) -> str:
    """The user-data that runs the job for `period` (since, until) on the instance, for at
    most `timeout_s`, and then powers it off."""
    since, until = period
    args = [job, "--run-id", run_id, "--runner", "aws", "--trigger", "lambda"]
    if since is not None:
        args += ["--since", repr(float(since))]
    if until is not None:
        args += ["--until", repr(float(until))]
    for key, value in sorted((options or {}).items()):
        args += ["--option", f"{key}={value}"]
    return WORKER_SCRIPT.format(
        args=shlex.join(args), job=job, run_id=run_id, timeout_s=max(1, math.ceil(timeout_s))
    )


def _options(event: Mapping[str, Any]) -> dict[str, str]:
    options = event.get("options") or {}
    if not isinstance(options, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in options.items()
    ):
        raise LaunchRefusedError("options must map names to strings")
    return options


def _request(event: Mapping[str, Any]) -> tuple[str, str, float | None, float | None]:
    job = event.get("job")
    if not isinstance(job, str) or not _JOB_NAME.fullmatch(job):
        raise LaunchRefusedError(f"the event names no valid job: {job!r}")
    run_id = event.get("run_id") or new_run_id(job)
    if not isinstance(run_id, str) or not valid_run_id(run_id):
        raise LaunchRefusedError(f"invalid run id {run_id!r}")
    times: list[float | None] = []
    for name in ("since", "until"):
        value = event.get(name)
        if value is not None and not isinstance(value, int | float):
            raise LaunchRefusedError(f"{name} must be epoch seconds, not {value!r}")
        times.append(None if value is None else float(value))
    return job, run_id, times[0], times[1]


class _Launcher(NamedTuple):
    """What the launcher's environment says."""

    template: str
    state_url: str
    prefix: str
    timeout_s: float  # jobs.timeout_s: how long a worker may run
    lock_ttl_s: float  # and its lock's margin on top


def _settings(env: Mapping[str, str]) -> _Launcher:
    template = env.get("HEALTHSYNC_JOBS_LAUNCH_TEMPLATE")
    if not template:
        raise LaunchRefusedError("HEALTHSYNC_JOBS_LAUNCH_TEMPLATE is not set")
    state_url = env.get("HEALTHSYNC_JOBS_STATE_URL")
    if not state_url:
        raise LaunchRefusedError("HEALTHSYNC_JOBS_STATE_URL is not set (the run records' Redis)")
    try:
        timeout_s = float(env.get("HEALTHSYNC_JOBS_TIMEOUT_S", "3600"))
        margin_s = float(env.get("HEALTHSYNC_JOBS_LOCK_MARGIN_S", "60"))
    except ValueError:
        raise LaunchRefusedError("HEALTHSYNC_JOBS_TIMEOUT_S must be a number") from None
    if not (math.isfinite(timeout_s) and timeout_s > 0 and math.isfinite(margin_s)):
        raise LaunchRefusedError("HEALTHSYNC_JOBS_TIMEOUT_S must be a positive number")
    prefix = env.get("HEALTHSYNC_REDIS_PREFIX", "hs")
    return _Launcher(template, state_url, prefix, timeout_s, timeout_s + margin_s)


def launch(
    event: Mapping[str, Any], env: Mapping[str, str], ec2: Any, runs: RunStore | None = None
) -> dict[str, Any]:
    """What the handler does, with its clients given (tests, and other entry points)."""
    template, state_url, prefix, timeout_s, ttl = _settings(env)
    job, run_id, since, until = _request(event)
    if runs is None:
        runs = RunStore(Redis.from_url(state_url, socket_timeout=10), RedisKeys(prefix))
    runs.claim(job, run_id, ttl)  # JobBusyError: refused, nothing launched
    record = RunRecord(
        run_id, job, "queued", "aws", str(event.get("trigger", "lambda")), time.time()
    )
    times = {"since": since, "until": until}
    record = record.update(params={k: v for k, v in times.items() if v is not None})
    try:
        found = ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [template]}]
        )["LaunchTemplates"]
        if not found:
            raise LaunchRefusedError(f"launch template {template!r} does not exist")
        answer = ec2.run_instances(
            LaunchTemplate={"LaunchTemplateName": template, "Version": "$Latest"},
            MinCount=1,
            MaxCount=1,
            UserData=worker_script(job, run_id, (since, until), _options(event), timeout_s),
            InstanceInitiatedShutdownBehavior="terminate",
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": JOB_TAG, "Value": job}, {"Key": RUN_ID_TAG, "Value": run_id}],
                }
            ],
        )
    except Exception as exc:
        # No instance will take the lock over: free it, and say why in the run record.
        runs.release(job, run_id)
        runs.save(record.update(status="failed", finished_at=time.time(), message=str(exc)))
        raise
    instance = answer["Instances"][0]["InstanceId"]
    runs.save(record.update(worker=instance))
    log.info("job launched", extra={"job": job, "run_id": run_id, "instance": instance})
    return {"ok": True, "job": job, "run_id": run_id, "instance_id": instance}


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point: ``healthsync.aws.lambda_jobs.handler``."""
    import boto3

    try:
        return launch(event, os.environ, boto3.client("ec2"))
    except JobBusyError as exc:
        log.warning("job busy; launch refused", extra={"job": exc.job, "holder": exc.holder})
        return {"ok": False, "busy": True, "error": str(exc)}
    except LaunchRefusedError as exc:
        log.error("launch refused: %s", exc)
        return {"ok": False, "error": str(exc)}
