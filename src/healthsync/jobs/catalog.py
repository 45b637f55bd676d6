"""The jobs HealthSync knows, by name."""

from __future__ import annotations

from collections.abc import Mapping

from healthsync.jobs.alarm_report import AlarmReport
from healthsync.jobs.base import Job
from healthsync.jobs.trends import Trends


def catalog(
    extra: Mapping[str, Job] | None = None, margins: dict[str, float] | None = None
) -> dict[str, Job]:
    """Every job; `extra` adds jobs whose parts live in other stages (the composition root's),
    and `margins` (the settings' `anomaly.margins`) are what trends call steady."""
    jobs: list[Job] = [AlarmReport(), Trends(margins)]
    found = {job.name: job for job in jobs}
    found.update(extra or {})
    return found
