"""`reprocess` shows what a stricter (and a looser) band would have changed.

Ten minutes of readings every 5 s: P-1's heart rate at 110 (inside the default band,
high 120), P-2's SpO2 at 88 (below the default low of 90). What was raised is what
the engine raises with the default rules: one SpO2 alert for P-2. The candidate
rules lower P-1's high heart-rate limit to 100 and P-2's low SpO2 limit to 85: P-1
gains a heart-rate alert; P-2 loses its SpO2 alert, but an SpO2 of 88 still scores a
NEWS2 red 3 on its own, which raises the urgent NEWS2 alert instead.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from redis import Redis

from healthsync.commands.jobs import jobs_for
from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.jobs.base import JobParams
from healthsync.jobs.execute import Executor, JobFailedError
from healthsync.jobs.output import JobOutput, LocalStore
from healthsync.jobs.reprocess import Reprocess
from healthsync.security.codec import Codec
from healthsync.store.period import ArchivedAlert, MemoryArchive
from healthsync.store.runs import RunStore
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.replay import replay
from healthsync.stream.rulebook import RuleBook
from tests.jobs.dataset import t
from tests.jobs.test_job_run import child_env

START = t("10:00")

READINGS = [
    Reading(f"r-{patient}-{i}", device, patient, START + 5 * i, START + 5 * i, vitals)
    for i in range(120)
    for patient, device, vitals in (
        ("P-1", "mon-1", {"heart_rate": 110.0}),
        ("P-2", "mon-2", {"spo2": 88.0}),
    )
]

CANDIDATE = """
[anomaly.patients."P-1".bands.heart_rate]
high = 100

[anomaly.patients."P-2".bands.spo2]
low = 85
"""


@pytest.fixture
def executor(settings: Settings, redis: Redis, codec: Codec, tmp_path: Path) -> Executor:
    raised = [
        ArchivedAlert(e.alert) for e in replay(READINGS, AnomalySettings()) if e.type == "opened"
    ]
    assert [a.alert.kind for a in raised] == ["threshold:spo2"]
    archive = MemoryArchive(READINGS, raised)
    runs = RunStore(redis, settings.redis.keys)
    return Executor(runs, LocalStore(tmp_path / "archive"), archive, lock_ttl_s=60, codec=codec)


def test_a_stricter_band_adds_and_a_looser_one_removes(
    executor: Executor, codec: Codec, tmp_path: Path
) -> None:
    rules = tmp_path / "candidate.toml"
    rules.write_text(CANDIDATE)
    out = io.StringIO()
    params = JobParams("rp-1", START, START + 3600, options={"rules": str(rules)})
    record = executor.run(Reprocess(replay, out), params)
    assert record.summary == {
        "readings": 240,
        "raised": 1,
        "would_raise": 2,
        "added": 2,
        "removed": 1,
    }
    lines = out.getvalue().splitlines()
    assert [(p[0], p[2], p[3]) for p in map(str.split, lines)] == [
        ("+", "threshold:heart_rate", "warning"),
        ("+", "news2", "warning"),
        ("-", "threshold:spo2", "warning"),
    ]
    assert "P-1" not in out.getvalue() and "P-2" not in out.getvalue()
    diff = json.loads((tmp_path / "archive/jobs/reprocess/rp-1/diff.json").read_text())
    assert diff["by_kind"] == {
        "news2": {"added": 1, "would_raise": 1},
        "threshold:heart_rate": {"added": 1, "would_raise": 1},
        "threshold:spo2": {"raised": 1, "removed": 1},
    }
    detail = JobOutput(executor.store, "reprocess", "rp-1").read_sealed("alerts.json", codec)
    assert [a["patient_id"] for a in detail["added"]] == ["P-1", "P-2"]
    assert [a["patient_id"] for a in detail["removed"]] == ["P-2"]


def test_the_same_rules_change_nothing(executor: Executor, tmp_path: Path) -> None:
    rules = tmp_path / "same.toml"
    # The defaults written out: a rule set that changes nothing.
    rules.write_text(f"[anomaly]\npersist_s = {AnomalySettings().persist_s}\n")
    out = io.StringIO()
    params = JobParams("rp-2", START, START + 3600, options={"rules": str(rules)})
    record = executor.run(Reprocess(replay, out), params)
    assert (record.summary["added"], record.summary["removed"]) == (0, 0)
    assert out.getvalue() == ""


def test_bad_rules_fail_with_the_reason(executor: Executor, tmp_path: Path) -> None:
    rules = tmp_path / "bad.toml"
    rules.write_text('[anomaly.patients."P-1".bands.heart_rate]\nhigh = 100\nlow = 120\n')
    params = JobParams("rp-3", START, START + 3600, options={"rules": str(rules)})
    with pytest.raises(JobFailedError, match=r"bad\.toml is not valid: patients\.P-1\.bands"):
        executor.run(Reprocess(replay), params)
    with pytest.raises(JobFailedError, match="reprocess needs --option rules=PATH"):
        executor.run(Reprocess(replay), JobParams("rp-4", START, START + 3600))


def test_the_command_knows_reprocess(settings: Settings, tmp_path: Path) -> None:
    import subprocess
    import sys

    settings.jobs.output_url = f"file://{tmp_path / 'archive'}"
    missing = tmp_path / "missing.toml"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "healthsync", "job", "run", "reprocess"),
            *("--run-id", "rp-5", "--option", f"rules={missing}"),
        ],
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"cannot read the rules file {missing}: No such file or directory" in result.stderr


def test_alerts_the_processor_raised_are_found_again_with_the_same_rules(
    settings: Settings, redis: Redis, codec: Codec, tmp_path: Path
) -> None:
    """With encryption at rest on (the default), the processor's alert ids are keyed
    HMACs; the job's replay made unkeyed ones, so the same rules "added" every alert
    and "removed" every one raised."""
    engine = AnomalyEngine(AnomalySettings(), RuleBook({}), id_key=codec.id_key)
    raised = []
    for reading in READINGS:
        batch = Batch([reading])
        engine.process(batch)
        raised += [ArchivedAlert(e.alert) for e in batch.alert_events if e.type == "opened"]
    assert [a.alert.kind for a in raised] == ["threshold:spo2"]
    runs = RunStore(redis, settings.redis.keys)
    executor = Executor(
        runs, LocalStore(tmp_path / "archive"), MemoryArchive(READINGS, raised), 60, codec
    )
    rules = tmp_path / "same.toml"
    rules.write_text("[anomaly]\n")
    job = jobs_for(settings)["reprocess"]
    params = JobParams("rp-same", START, START + 3600, options={"rules": str(rules)})
    record = executor.run(job, params)
    assert (record.summary["added"], record.summary["removed"]) == (0, 0)
