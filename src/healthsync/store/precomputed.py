"""The latest `trends` run's hourly and daily buckets of one patient, for the trends route.

The `trends` job writes, per patient with readings in its period, a sealed
document with each vital's hourly and daily buckets (``jobs/trends/<run
id>/patients/<pseudonym>.json``). The latest succeeded run over every
patient stands for its period: a patient without a document had no readings
then. Buckets reflect what had arrived when the run ran; readings that
arrive later for that period show once the next run covers it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from healthsync.security.codec import Codec
from healthsync.store.job_files import ObjectStore, missing, read_sealed, run_prefix
from healthsync.store.runs import RunStore

log = logging.getLogger(__name__)

JOB = "trends"
SERIES = {3600: "hourly", 86_400: "daily"}
# Runs looked at for the latest one over every patient.
_RUNS_LOOKED_AT = 20


@dataclass(frozen=True, slots=True)
class Precomputed:
    """One vital's buckets of one size from a run, and the period the run covered."""

    run_id: str
    since: float
    until: float
    buckets: list[dict[str, float]]


class TrendRuns:
    def __init__(self, runs: RunStore, files: ObjectStore, codec: Codec) -> None:
        self.runs = runs
        self.files = files
        self.codec = codec

    def latest(self, patient_id: str, vital: str, bucket_s: int) -> Precomputed | None:
        """The latest run's buckets, or None (no such run, a size it does not keep, or its
        file unreadable: the caller then computes them)."""
        series = SERIES.get(bucket_s)
        if series is None:
            return None
        record = next(
            (
                r
                for r in self.runs.recent(_RUNS_LOOKED_AT, job=JOB)
                if r.status == "succeeded" and "patients" not in r.params
            ),
            None,
        )
        if record is None:
            return None
        since, until = float(record.params["since"]), float(record.params["until"])
        key = f"{run_prefix(JOB, record.run_id)}patients/{self.codec.pseudonym(patient_id)}.json"
        try:
            doc: dict[str, Any] = read_sealed(self.files, key, self.codec)
        except Exception as exc:  # noqa: BLE001 - any failure: compute instead
            if not missing(exc):
                log.warning("precomputed trends unreadable", extra={"run_id": record.run_id})
                return None
            doc = {}  # no readings in the run's period
        figures = doc.get("vitals", {}).get(vital, {})
        return Precomputed(record.run_id, since, until, list(figures.get(series, [])))
