"""`healthsync job run` as a process: over the live window of a real Redis, with its exit
statuses; and the local runner running it for real, with its timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.alerts import AlertEvent
from healthsync.domain.batch import Batch
from healthsync.jobs.runners import LocalRunner
from healthsync.jobs.scheduler import Launch
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from healthsync.store.runs import RunRecord, RunStore
from tests.jobs import dataset


@pytest.fixture
def job_settings(settings: Settings, tmp_path: Path) -> Settings:
    settings.jobs.output_url = f"file://{tmp_path / 'archive'}"
    return settings


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "healthsync", *args],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    return env | settings.to_env()


def store_dataset(settings: Settings, redis: Redis, codec: Codec) -> tuple[str, ...]:
    """Write the dataset, moved to the last hours (the live window keeps 24 h), as the
    processor does (the live sink): alerts open, then resolve. Returns the period's
    arguments."""
    hours = dataset.hours_until_now()
    readings, alerts = dataset.shifted(hours)
    stats = StatsRecorder(settings.redis.keys, "processor")
    records = Records(codec)
    sink = RedisLiveSink(redis, settings.redis, stats, records)
    opened = [
        AlertEvent("opened", replace(row.alert, status="open", resolved_at=None)) for row in alerts
    ]
    sink.write(Batch(readings, alert_events=opened))
    sink.flush()
    resolved = [AlertEvent("resolved", row.alert) for row in alerts if row.alert.resolved_at]
    sink.write(Batch([], alert_events=resolved))
    sink.flush()
    for row in alerts:
        if row.acknowledged_at is not None:
            ack = records.encode_ack(row.alert.alert_id, {"by": "nurse", "at": row.acknowledged_at})
            redis.hset(records.keys.acknowledged, row.alert.alert_id, ack)
    return (
        "--since",
        str(dataset.SINCE + hours * 3600),
        "--until",
        str(dataset.UNTIL + hours * 3600),
    )


def test_a_job_run_reads_the_live_window_and_records_its_outcome(
    job_settings: Settings, redis: Redis, codec: Codec, tmp_path: Path
) -> None:
    period = store_dataset(job_settings, redis, codec)
    result = run_cli(job_settings, "job", "run", "alarm-report", *period, "--run-id", "live-1")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "archive/jobs/alarm-report/live-1"
    assert (
        result.stdout.strip()
        == f"live-1 succeeded -> file://{tmp_path / 'archive'}/jobs/alarm-report/live-1/"
    )
    doc = json.loads((out / "report.json").read_text())
    assert (doc["patient_hours"], doc["alerts"], doc["acknowledged"]) == (3, 4, 2)
    record = RunStore(redis, job_settings.redis.keys).get("live-1")
    assert record is not None
    assert (record.status, record.exit_code, record.runner) == ("succeeded", 0, "cli")
    listing = run_cli(job_settings, "job", "list")
    assert listing.stdout.startswith("live-1\talarm-report\tsucceeded\t")


def test_a_second_run_of_a_busy_job_is_refused(job_settings: Settings, redis: Redis) -> None:
    RunStore(redis, job_settings.redis.keys).acquire("alarm-report", "other-run", 60)
    result = run_cli(job_settings, "job", "run", "alarm-report", "--run-id", "second")
    assert result.returncode == 75
    assert "job alarm-report is already running (run other-run)" in result.stderr
    assert RunStore(redis, job_settings.redis.keys).get("second") is None


def test_a_failing_job_exits_1_and_says_why(job_settings: Settings, redis: Redis) -> None:
    result = run_cli(
        job_settings, "job", "run", "alarm-report", "--run-id", "bad", "--option", "quick_s=soon"
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "job alarm-report run bad failed: option quick_s must be a number of seconds"
    )
    record = RunStore(redis, job_settings.redis.keys).get("bad")
    assert record is not None and record.status == "failed"


def test_unknown_jobs_and_bad_arguments_exit_2(job_settings: Settings) -> None:
    result = run_cli(job_settings, "job", "run", "nope")
    assert result.returncode == 2
    assert "no job 'nope'; known: alarm-report" in result.stderr
    result = run_cli(job_settings, "job", "run", "alarm-report", "--run-id", "../etc")
    assert result.returncode == 2
    assert "run id '../etc'" in result.stderr


def test_without_redis_nothing_runs_and_the_message_says_so(job_settings: Settings) -> None:
    from healthsync.stack import free_port

    job_settings.redis.url = f"redis://127.0.0.1:{free_port()}/0"
    result = run_cli(job_settings, "job", "run", "alarm-report", "--run-id", "no-redis")
    assert result.returncode == 1
    assert "Redis unavailable, alarm-report not run" in result.stderr
    assert "Traceback" not in result.stderr


def launch(run_id: str) -> Launch:
    return Launch("alarm-report", run_id, dataset.SINCE, dataset.UNTIL)


def queue(runs: RunStore, run_id: str) -> None:
    runs.acquire("alarm-report", run_id, 60)
    runs.save(RunRecord(run_id, "alarm-report", "queued", "local", "schedule", 0.0))


def test_the_local_runner_runs_the_job_and_keeps_its_output(
    job_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    runs = RunStore(redis, job_settings.redis.keys)
    runner = LocalRunner(runs, tmp_path / "logs", 60, env=child_env(job_settings))
    queue(runs, "sched-1")
    runner.start(launch("sched-1"))
    runner.join(timeout=60)
    record = runs.get("sched-1")
    assert record is not None
    assert (record.status, record.exit_code, record.trigger) == ("succeeded", 0, "schedule")
    assert (tmp_path / "archive/jobs/alarm-report/sched-1/report.json").exists()
    assert "sched-1 succeeded" in (tmp_path / "logs/sched-1.log").read_text()
    assert runs.holder("alarm-report") is None


def test_the_local_runner_kills_a_run_past_its_timeout_and_records_it(
    job_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    runs = RunStore(redis, job_settings.redis.keys)
    # Starting Python alone takes longer than this.
    runner = LocalRunner(runs, tmp_path / "logs", 0.05, env=child_env(job_settings))
    queue(runs, "slow-1")
    runner.start(launch("slow-1"))
    runner.join(timeout=60)
    record = runs.get("slow-1")
    assert record is not None
    assert record.status == "failed"
    assert record.message == "timed out after 0.05 s and was killed"
    assert record.exit_code == -9
    assert runs.holder("alarm-report") is None
