"""Running one job: take its lock, record the run, write its output, record the outcome.

Every path that runs a job's code comes through :meth:`Executor.run`: `healthsync
job run` on this machine, in a local runner's subprocess, or on an EC2 worker
the Lambda launcher started. The lock is held for the run id, so a launcher
that took it first hands it over; a run of the same job under another id is
refused with :class:`~healthsync.store.runs.JobBusyError`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from healthsync.jobs.base import Job, JobContext, JobError, JobParams
from healthsync.jobs.output import JobOutput, ObjectStore
from healthsync.security.codec import Codec
from healthsync.store.period import ArchiveReader
from healthsync.store.runs import RunRecord, RunStore

log = logging.getLogger(__name__)


class JobFailedError(JobError):
    """The job ran and failed; its run record holds the same message."""


@dataclass(frozen=True, slots=True)
class Executor:
    """What runs need besides the job: run records, the output store, the archive reader."""

    runs: RunStore
    store: ObjectStore
    reader: ArchiveReader
    lock_ttl_s: float
    # Seals job outputs that name patients; the default seals nothing (crypto off).
    codec: Codec = field(default_factory=lambda: Codec(None))
    clock: Callable[[], float] = time.time

    def run(
        self, job: Job, params: JobParams, runner: str = "cli", trigger: str = "cli"
    ) -> RunRecord:
        """Run `job` for `params`, returning its final run record, or raise JobFailedError."""
        runs, clock = self.runs, self.clock
        runs.acquire(job.name, params.run_id, self.lock_ttl_s)
        try:
            record = self._start(job, params, runner, trigger)
            output = JobOutput(self.store, job.name, params.run_id)
            try:
                summary = job.run(JobContext(params, output, self.reader, self.codec))
                output.commit()
            except Exception as exc:
                # Whatever went wrong, the record says so before the process exits non-zero.
                message = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
                failed = record.update(
                    status="failed", finished_at=clock(), exit_code=1, message=message
                )
                runs.save(failed)
                log.error("job failed", extra={"job": job.name, "run_id": params.run_id})
                raise JobFailedError(
                    f"job {job.name} run {params.run_id} failed: {message}"
                ) from exc
            done = record.update(
                status="succeeded", finished_at=clock(), exit_code=0, summary=summary, message="ok"
            )
            runs.save(done)
            log.info("job succeeded", extra={"job": job.name, "run_id": params.run_id})
            return done
        finally:
            runs.release(job.name, params.run_id)

    def _start(self, job: Job, params: JobParams, runner: str, trigger: str) -> RunRecord:
        previous = self.runs.get(params.run_id)
        if previous is not None and previous.job != job.name:
            raise JobError(f"run id {params.run_id} belongs to job {previous.job}")
        now = self.clock()
        record = previous or RunRecord(params.run_id, job.name, "running", runner, trigger, now)
        record = record.update(
            status="running",
            started_at=now,
            finished_at=None,
            exit_code=None,
            message="",
            summary={},
            params=params.describe(),
            output=JobOutput(self.store, job.name, params.run_id).location,
            worker=record.worker or f"{socket.gethostname()}:{os.getpid()}",
        )
        self.runs.save(record)
        log.info("job started", extra={"job": job.name, "run_id": params.run_id})
        return record
