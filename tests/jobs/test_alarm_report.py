"""`alarm-report` over the small dataset (tests/jobs/dataset.py), checked against values
computed by hand, and the run's idempotence: a rerun with the same id replaces its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.jobs.alarm_report import AlarmReport
from healthsync.jobs.base import JobParams
from healthsync.jobs.execute import Executor, JobFailedError
from healthsync.jobs.output import LocalStore
from healthsync.store.runs import RunStore
from tests.jobs import dataset


@pytest.fixture
def executor(settings: Settings, redis: Redis, tmp_path: Path) -> Executor:
    runs = RunStore(redis, settings.redis.keys)
    return Executor(runs, LocalStore(tmp_path / "archive"), dataset.archive(), lock_ttl_s=60)


def report(tmp_path: Path, run_id: str) -> dict[str, object]:
    path = tmp_path / "archive" / "jobs" / "alarm-report" / run_id / "report.json"
    doc: dict[str, object] = json.loads(path.read_text())
    return doc


def test_the_alarm_burden_matches_the_hand_count(executor: Executor, tmp_path: Path) -> None:
    params = JobParams("r1", dataset.SINCE, dataset.UNTIL)
    record = executor.run(AlarmReport(), params)
    third = round(1 / 3, 4)
    assert report(tmp_path, "r1") == {
        "since": dataset.SINCE,
        "until": dataset.UNTIL,
        "patient_hours": 3,
        "alerts": 4,
        "alerts_per_patient_hour": round(4 / 3, 4),
        "by_kind": {
            "device_offline": {"alerts": 1, "per_patient_hour": third},
            "news2": {"alerts": 1, "per_patient_hour": third},
            "threshold:heart_rate": {"alerts": 1, "per_patient_hour": third},
            "threshold:spo2": {"alerts": 1, "per_patient_hour": third},
        },
        "by_severity": {
            "critical": {"alerts": 1, "per_patient_hour": third},
            "warning": {"alerts": 3, "per_patient_hour": 1.0},
        },
        "acknowledged": 2,
        "time_to_acknowledge_s": {"median": 180.0, "p90": 240.0, "max": 240.0},
        "resolved_unacknowledged_quickly": {"within_s": 300.0, "alerts": 1, "share": 0.25},
    }
    assert record.status == "succeeded"
    assert record.summary == {"alerts": 4, "patient_hours": 3, "alerts_per_patient_hour": 1.3333}
    page = (tmp_path / "archive/jobs/alarm-report/r1/report.html").read_text()
    assert "4 alerts over 3 monitored patient-hours" in page
    assert page.count('src="data:image/png;base64,') == 2
    # About the burden, not about patients or devices.
    for identifier in ("P-1", "P-2", "mon-9", "mon-1"):
        assert identifier not in page
        assert identifier not in json.dumps(report(tmp_path, "r1"))


def test_a_run_for_some_patients_counts_only_theirs(executor: Executor, tmp_path: Path) -> None:
    executor.run(AlarmReport(), JobParams("r2", dataset.SINCE, dataset.UNTIL, frozenset({"P-2"})))
    doc = report(tmp_path, "r2")
    assert (doc["patient_hours"], doc["alerts"], doc["acknowledged"]) == (1, 2, 0)
    assert executor.runs.get("r2").params == {  # type: ignore[union-attr]
        "since": dataset.SINCE,
        "until": dataset.UNTIL,
        "patients": 1,
    }


def test_a_rerun_with_the_same_id_replaces_the_output(executor: Executor, tmp_path: Path) -> None:
    params = JobParams("r3", dataset.SINCE, dataset.UNTIL)
    executor.run(AlarmReport(), params)
    stale = tmp_path / "archive/jobs/alarm-report/r3/old-plot.png"
    stale.write_bytes(b"from an earlier version")
    executor.run(AlarmReport(), JobParams("r3", dataset.SINCE, dataset.UNTIL, frozenset({"P-1"})))
    files = sorted(p.name for p in (tmp_path / "archive/jobs/alarm-report/r3").iterdir())
    assert files == ["report.html", "report.json"]
    assert report(tmp_path, "r3")["alerts"] == 2


def test_a_bad_option_fails_the_run_with_a_clear_message(executor: Executor) -> None:
    params = JobParams("r4", dataset.SINCE, dataset.UNTIL, options={"quick_s": "soon"})
    with pytest.raises(JobFailedError, match="option quick_s must be a number of seconds"):
        executor.run(AlarmReport(), params)
    record = executor.runs.get("r4")
    assert record is not None
    assert (record.status, record.exit_code) == ("failed", 1)
    assert record.message == "option quick_s must be a number of seconds"
    assert executor.runs.holder("alarm-report") is None
