"""The scheduler fires jobs at their cron times, never twice at once, and catches up once.

The clock is injected. The runner is the real LocalRunner; its command is a
small shell script standing in for `healthsync job run`, which records each
start and stays "running" until the test releases it, so the test decides
when a run ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis import Redis

from healthsync.config import Settings
from healthsync.config_services import JobsSettings
from healthsync.jobs.runners import LocalRunner
from healthsync.jobs.scheduler import Scheduler
from healthsync.store.runs import RunStore
from tests.conftest import wait_for

HELD_JOB = r"""
echo "$*" >> "$CALLS"
while [ ! -e "$RELEASE" ]; do sleep 0.05; done
"""


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: str) -> None:
        self.now = at(start)

    def set(self, text: str) -> None:
        self.now = at(text)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runs(settings: Settings, redis: Redis) -> RunStore:
    return RunStore(redis, settings.redis.keys)


@pytest.fixture
def runner(
    runs: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalRunner]:
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("RELEASE", str(tmp_path / "release"))
    command = ("bash", "-c", HELD_JOB, "job-stand-in")
    local = LocalRunner(runs, tmp_path / "logs", timeout_s=60, command=command)
    yield local
    (tmp_path / "release").touch()
    local.join(timeout=30)


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def scheduler(
    schedule: dict[str, str], runner: LocalRunner, runs: RunStore, clock: Clock
) -> Scheduler:
    return Scheduler(schedule, runner, runs, lock_ttl_s=120, period_s=3600, clock=clock)


def test_a_job_fires_at_its_cron_time_and_not_before(
    runner: LocalRunner, runs: RunStore, tmp_path: Path
) -> None:
    clock = Clock("2026-11-30T16:59:30")
    sched = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    assert sched.tick() == []
    clock.set("2026-11-30T16:59:59")
    assert sched.tick() == []
    clock.set("2026-11-30T17:00:00")
    [launch] = sched.tick()
    assert launch.run_id == "alarm-report-20261130T170000Z"
    assert (launch.since, launch.until) == (at("2026-11-30T16:00:00"), at("2026-11-30T17:00:00"))
    wait_for(lambda: calls(tmp_path), what="the job to start")
    assert calls(tmp_path) == [
        f"job run alarm-report --run-id {launch.run_id} --since {launch.since!r} "
        f"--until {launch.until!r} --trigger schedule --runner local"
    ]
    (tmp_path / "release").touch()
    runner.join(timeout=30)
    record = runs.get(launch.run_id)
    assert record is not None
    # The stand-in exits 0 without writing an outcome: the runner records that as a failure.
    assert (record.status, record.exit_code, record.trigger) == ("failed", 0, "schedule")
    assert "before recording an outcome" in record.message
    assert (tmp_path / "logs" / f"{launch.run_id}.log").exists()


def test_a_job_never_runs_twice_at_once_and_a_busy_slot_runs_once_later(
    runner: LocalRunner, runs: RunStore, tmp_path: Path
) -> None:
    clock = Clock("2026-11-30T16:59:30")
    sched = scheduler({"alarm-report": "* * * * *"}, runner, runs, clock)
    sched.tick()
    clock.set("2026-11-30T17:00:00")
    assert len(sched.tick()) == 1
    wait_for(lambda: calls(tmp_path), what="the first run to start")
    # Minutes pass while the first run holds the job.
    for minute in ("17:01:00", "17:02:00", "17:03:00"):
        clock.set(f"2026-11-30T{minute}")
        assert sched.tick() == []
    assert len(calls(tmp_path)) == 1
    (tmp_path / "release").touch()
    wait_for(lambda: runs.holder("alarm-report") is None, what="the first run to end")
    (tmp_path / "release").unlink()
    clock.set("2026-11-30T17:03:20")
    [late] = sched.tick()
    assert late.run_id == "alarm-report-20261130T170300Z"
    assert sched.tick() == []
    wait_for(lambda: len(calls(tmp_path)) == 2, what="the pending run to start")


def test_two_schedulers_on_one_redis_start_a_slot_once(
    runner: LocalRunner, runs: RunStore, tmp_path: Path
) -> None:
    clock = Clock("2026-11-30T16:59:30")
    first = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    second = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    first.tick()
    second.tick()
    clock.set("2026-11-30T17:00:01")
    started = first.tick() + second.tick()
    assert len(started) == 1
    wait_for(lambda: calls(tmp_path), what="the run to start")
    assert len(calls(tmp_path)) == 1


def test_two_schedulers_reading_a_slot_at_once_start_it_once(
    runner: LocalRunner, runs: RunStore, tmp_path: Path
) -> None:
    """Both read the last slot before either recorded the new one: they named the same
    run, and the lock, which lets a run take itself over, let the second start it too."""
    clock = Clock("2026-11-30T16:59:30")
    first = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    second = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    first.tick()
    before = runs.last_slot("alarm-report")
    assert before is not None
    clock.set("2026-11-30T17:00:01")
    assert len(first.tick()) == 1
    runs.set_last_slot("alarm-report", before)  # what the second read, a moment earlier
    assert second.tick() == []
    wait_for(lambda: calls(tmp_path), what="the run to start")
    assert len(calls(tmp_path)) == 1


def test_slots_missed_while_down_are_caught_up_once(
    runner: LocalRunner, runs: RunStore, tmp_path: Path
) -> None:
    clock = Clock("2026-11-30T10:00:30")
    sched = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    sched.tick()
    # The scheduler was down from 10:00:30 to 15:30: five hourly slots passed.
    clock.set("2026-11-30T15:30:00")
    restarted = scheduler({"alarm-report": "0 * * * *"}, runner, runs, clock)
    [launch] = restarted.tick()
    assert launch.run_id == "alarm-report-20261130T150000Z"
    (tmp_path / "release").touch()
    runner.join(timeout=30)
    clock.set("2026-11-30T15:59:59")
    assert restarted.tick() == []
    assert len(calls(tmp_path)) == 1
    clock.set("2026-11-30T16:00:00")
    assert [x.run_id for x in restarted.tick()] == ["alarm-report-20261130T160000Z"]


def test_a_cron_expression_that_names_no_date_stops_no_other_job(
    runner: LocalRunner, runs: RunStore, tmp_path: Path
) -> None:
    """31 February is a valid cron expression that never comes: the settings accepted
    it, and then every tick raised before any other job or queued request started."""
    for never in ("0 0 31 2 *", "0 0 30 2 *"):
        with pytest.raises(ValidationError, match="never"):
            JobsSettings(schedule={"alarm-report": never})
    clock = Clock("2026-11-30T16:59:30")
    sched = scheduler({"alarm-report": "0 0 31 2 *", "trends": "0 * * * *"}, runner, runs, clock)
    sched.tick()
    clock.set("2026-11-30T17:00:00")
    assert [launch.run_id for launch in sched.tick()] == ["trends-20261130T170000Z"]
    wait_for(lambda: calls(tmp_path), what="the job to start")
