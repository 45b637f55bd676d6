"""Where scheduled runs execute: a local subprocess, or an EC2 worker through Lambda.

The local runner starts ``healthsync job run`` in its own process group with
its output in ``<log dir>/<run id>.log``, kills it after the timeout, and
records the exit status: a run that crashed or was killed before it could
write its own record is still marked failed, with the reason.

The aws runner invokes the launcher Lambda function
(``healthsync.aws.lambda_jobs.handler``) and records what it answered; the
worker records the run's outcome itself.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthsync.errors import ConfigError, HealthSyncError
from healthsync.jobs.scheduler import Launch
from healthsync.store.runs import RunStore

log = logging.getLogger(__name__)


@dataclass
class LocalRunner:
    runs: RunStore
    log_dir: Path
    timeout_s: float
    # None: the children inherit this process's environment, settings included.
    env: dict[str, str] | None = None
    command: tuple[str, ...] = (sys.executable, "-m", "healthsync")
    clock: Callable[[], float] = time.time
    name: str = "local"
    _running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, launch: Launch) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            *self.command,
            *("job", "run", launch.job, "--run-id", launch.run_id),
            *("--since", repr(launch.since), "--until", repr(launch.until)),
            *("--trigger", launch.trigger, "--runner", self.name),
            *(arg for key, value in launch.options for arg in ("--option", f"{key}={value}")),
        ]
        with (self.log_dir / f"{launch.run_id}.log").open("ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        with self._lock:
            self._running[launch.run_id] = process
        thread = threading.Thread(
            target=self._wait, args=(launch, process), name=f"job-{launch.run_id}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _wait(self, launch: Launch, process: subprocess.Popen[bytes]) -> None:
        reason = ""
        try:
            code = process.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            code = process.wait()
            reason = f"timed out after {self.timeout_s:g} s and was killed"
        with self._lock:
            self._running.pop(launch.run_id, None)
        self._record(launch, code, reason, process.pid)

    def _record(self, launch: Launch, code: int, reason: str, pid: int) -> None:
        try:
            record = self.runs.get(launch.run_id)
            if record is not None and (reason or record.status in ("queued", "running")):
                # The job did not write its own outcome (killed, crashed, refused to start).
                message = reason or f"exited with status {code} before recording an outcome"
                record = record.update(status="failed", finished_at=self.clock(), message=message)
            if record is not None:
                self.runs.save(record.update(exit_code=code, worker=record.worker or f"pid:{pid}"))
            self.runs.release(launch.job, launch.run_id)
        except Exception as exc:  # noqa: BLE001 - a Redis outage must not kill the scheduler
            error = {"run_id": launch.run_id, "error": str(exc)}
            log.error("run outcome not recorded", extra=error)
        log.info("job exited", extra={"run_id": launch.run_id, "exit_code": code})

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the runs started so far to end (tests, and a draining shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout)

    def stop(self) -> None:
        with self._lock:
            processes = list(self._running.values())
        for process in processes:
            _terminate_group(process)
        self.join(timeout=30)


def _terminate_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return


class LaunchError(HealthSyncError):
    """The launcher function refused or failed to start a run."""


class LambdaRunner:
    """Invokes the launcher function synchronously: it answers once the instance exists."""

    name = "aws"

    def __init__(self, function: str, region: str | None = None, client: Any = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ConfigError(
                    "HEALTHSYNC_JOBS_RUNNER=aws needs boto3: pip install 'healthsync[aws]'"
                ) from None
            client = boto3.client("lambda", region_name=region)
        self.client = client
        self.function = function

    def start(self, launch: Launch) -> None:
        payload = {
            "job": launch.job,
            "run_id": launch.run_id,
            "since": launch.since,
            "until": launch.until,
            "trigger": launch.trigger,
            "options": dict(launch.options),
        }
        answer = self.client.invoke(
            FunctionName=self.function,
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
        body = json.loads(answer["Payload"].read() or b"null")
        if answer.get("FunctionError") or not isinstance(body, dict) or not body.get("ok"):
            message = body.get("error") if isinstance(body, dict) else None
            raise LaunchError(f"{self.function} did not start {launch.run_id}: {message or body}")

    def stop(self) -> None:
        return None
