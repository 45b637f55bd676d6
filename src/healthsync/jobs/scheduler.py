"""The scheduler: starts each job at the times its cron expression names.

Cron expressions are croniter's, read in UTC. The last time slot handled per
job is kept in Redis (``{p}:jobs:schedule``), so a restarted scheduler, or a
second one, knows what already ran. When the scheduler was down across several
slots it runs the job once, for the latest slot: a backlog of identical runs
helps nobody. When a job still holds its lock at its slot, the slot stays
pending and starts as soon as the lock is free, once.

The clock is injected, so tests move time instead of waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from croniter import CroniterError, croniter

from healthsync.store.runs import JobBusyError, RunRecord, RunStore, new_run_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Launch:
    """A run the scheduler asks a runner to start."""

    job: str
    run_id: str
    since: float
    until: float
    options: tuple[tuple[str, str], ...] = ()
    trigger: str = "schedule"


class Runner(Protocol):
    name: str

    def start(self, launch: Launch) -> None:
        """Start the run without waiting for it; record its outcome when it ends."""
        ...

    def stop(self) -> None:
        """Stop waiting for runs in progress (local runs are terminated)."""
        ...


def latest_slot(expression: str, now: float) -> float:
    """The latest time at or before `now` that `expression` names."""
    start = datetime.fromtimestamp(now, UTC)
    slot = float(croniter(expression, start).get_prev(float))
    following = float(croniter(expression, datetime.fromtimestamp(slot, UTC)).get_next(float))
    return following if following <= now else slot


def next_slot(expression: str, after: float) -> float:
    return float(croniter(expression, datetime.fromtimestamp(after, UTC)).get_next(float))


@dataclass
class Scheduler:
    schedule: Mapping[str, str]
    runner: Runner
    runs: RunStore
    lock_ttl_s: float
    # A scheduled run covers the `period_s` before its slot.
    period_s: float
    clock: Callable[[], float] = time.time
    # The jobs that exist, to refuse requests for others; None accepts any name.
    known: frozenset[str] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def tick(self) -> list[Launch]:
        """Start every job whose slot has come, and the runs asked for; return what started."""
        now = self.clock()
        started: list[Launch] = []
        for job, expression in self.schedule.items():
            try:
                launch = self._due(job, expression, now)
            except CroniterError as exc:  # one job's schedule stops no other job
                log.error("job's schedule names no time", extra={"job": job, "error": str(exc)})
                continue
            if launch is not None and self._start(launch):
                started.append(launch)
        while (record := self.runs.next_request()) is not None:
            launch = self._requested(record)
            if launch is not None and self._start(launch, record):
                started.append(launch)
        return started

    def _requested(self, record: RunRecord) -> Launch | None:
        if self.known is not None and record.job not in self.known:
            self._fail(record, f"no job {record.job!r}")
            return None
        params = record.params
        options = tuple(sorted(params.get("options", {}).items()))
        return Launch(
            record.job, record.run_id, params["since"], params["until"], options, record.trigger
        )

    def _fail(self, record: RunRecord, message: str) -> None:
        self.runs.save(record.update(status="failed", finished_at=self.clock(), message=message))

    def _due(self, job: str, expression: str, now: float) -> Launch | None:
        last = self.runs.last_slot(job)
        if last is None:
            # First start: the schedule begins now; nothing before it is "missed".
            self.runs.set_last_slot(job, now)
            return None
        if next_slot(expression, last) > now:
            return None
        slot = latest_slot(expression, now)
        return Launch(job, new_run_id(job, slot), slot - self.period_s, slot)

    def _start(self, launch: Launch, requested: RunRecord | None = None) -> bool:
        try:
            self.runs.claim(launch.job, launch.run_id, self.lock_ttl_s)
        except JobBusyError as exc:
            if requested is not None:
                self._fail(requested, str(exc))
            else:
                # Still running: the slot stays pending and starts once the lock is free.
                log.info("job busy; slot pending", extra={"job": launch.job, "holder": exc.holder})
            return False
        if requested is not None:
            record = requested.update(runner=self.runner.name)
        else:
            record = RunRecord(
                launch.run_id,
                launch.job,
                "queued",
                self.runner.name,
                "schedule",
                self.clock(),
                params={"since": launch.since, "until": launch.until},
            )
            self.runs.set_last_slot(launch.job, launch.until)
        self.runs.save(record)
        log.info("job scheduled", extra={"job": launch.job, "run_id": launch.run_id})
        try:
            self.runner.start(launch)
        except Exception as exc:  # noqa: BLE001 - any launch failure is recorded, not raised
            self.runs.release(launch.job, launch.run_id)
            self.runs.save(
                record.update(status="failed", finished_at=self.clock(), message=str(exc))
            )
            log.error("job could not start", extra={"job": launch.job, "error": str(exc)})
            return False
        return True

    def run(self, tick_s: float = 1.0) -> None:
        """Tick until stop(); a failing tick (Redis away) is logged and retried."""
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the scheduler outlives a bad tick
                log.error("scheduler tick failed", extra={"error": str(exc)})
            self._stop.wait(tick_s)
        self.runner.stop()

    def stop(self) -> None:
        self._stop.set()
