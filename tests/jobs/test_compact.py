"""`healthsync job run compact` over an archive written through the real writer: the same
readings before and after, a run killed half way (kill -9) and rerun, a replay after it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.writer import find_span
from healthsync.store.runs import RunStore
from tests.jobs import dataset
from tests.jobs.test_job_run import child_env, run_cli
from tests.store.archive.conftest import reading

START = dataset.SINCE  # 2026-11-30 10:00 UTC
PATIENTS = ("PX-1", "PX-2", "PX-3")
PERIOD = ("--since", str(START), "--until", str(START + 2 * 3600))
# Per partition, batches of 30 readings (one a minute per patient): 12 rolls over two hours.
PER_BATCH = 30


def readings_of(partition: int) -> list[Reading]:
    """Partition 0 carries PX-1 and PX-2, partition 1 PX-3; one reading a minute each."""
    found: list[Reading] = []
    patients = PATIENTS[:2] if partition == 0 else PATIENTS[2:]
    for minute in range(120):
        for n, patient in enumerate(patients):
            device = f"mon-{patient}"
            found.append(
                reading(patient, device, minute, START + minute * 60 + n, heart_rate=60 + minute)
            )
    return found


def batches(partition: int) -> list[tuple[Span, list[Reading]]]:
    rows = readings_of(partition)
    out = []
    for start in range(0, len(rows), PER_BATCH):
        part = rows[start : start + PER_BATCH]
        out.append((Span(partition, start, start + len(part) - 1), part))
    return out


@pytest.fixture
def archived(settings: Settings, tmp_path: Path) -> Archive:
    settings.archive.url = (tmp_path / "archive").as_uri()
    settings.jobs.output_url = f"file://{tmp_path / 'archive'}"
    archive = Archive.from_settings(settings)
    writer = archive.writer()
    for partition in (0, 1):
        for span, rows in batches(partition):
            writer.write_readings(span, rows)
    alert = dataset.alert("a1", "PX-1", "threshold:heart_rate", "warning", ("10:05", "10:20"))
    writer.write_alerts(Span(0, 0, 0), [("opened", alert)])
    writer.write_alerts(Span(0, 1, 1), [("resolved", alert)])
    return archive


def history(archive: Archive) -> dict[str, list[tuple[str, float, float]]]:
    """What the history reader returns per patient: (reading id, time, heart rate)."""
    reader = archive.reader()
    try:
        return {
            patient: [
                (p["reading_id"], p["ts"], p["vitals"]["heart_rate"])
                for p in reader.readings(patient, START - 3600, START + 3 * 3600)
            ]
            for patient in PATIENTS
        }
    finally:
        reader.close()


def expected() -> dict[str, list[tuple[str, float, float]]]:
    every = sorted(readings_of(0) + readings_of(1), key=lambda r: r.ts)
    return {
        patient: [
            (r.reading_id, r.ts, r.vitals["heart_rate"]) for r in every if r.patient_id == patient
        ]
        for patient in PATIENTS
    }


def objects(root: Path, under: str) -> list[str]:
    return sorted(p.relative_to(root / under).as_posix() for p in (root / under).rglob("*.parquet"))


def root_of(settings: Settings) -> Path:
    return Path(settings.archive.url.removeprefix("file://"))


def research_rows(root: Path) -> int:
    return sum(
        pq.read_metadata(p).num_rows for p in (root / "deidentified/readings").rglob("*.parquet")
    )


def test_compaction_merges_each_hour_and_the_reader_sees_the_same_history(
    settings: Settings, archived: Archive, redis: Redis
) -> None:
    root = root_of(settings)
    assert history(archived) == expected()
    assert len(objects(root, "identified/readings/date=2026-11-30/hour=10")) == 6  # 4 + 2

    result = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "c-1")
    assert result.returncode == 0, result.stderr

    assert objects(root, "identified/readings") == [
        "date=2026-11-30/hour=10/p0-0-119.compacted.parquet",
        "date=2026-11-30/hour=10/p1-0-59.compacted.parquet",
        "date=2026-11-30/hour=11/p0-120-239.compacted.parquet",
        "date=2026-11-30/hour=11/p1-60-119.compacted.parquet",
    ]
    year = archived.writer().deidentifier.research_year(START)
    assert objects(root, "deidentified/readings") == [
        f"year={year}/p0-0-239.compacted.parquet",
        f"year={year}/p1-0-119.compacted.parquet",
    ]
    assert objects(root, "identified/alerts") == [
        "date=2026-11-30/hour=10/p0-0-1.compacted.parquet"
    ]
    assert research_rows(root) == 360
    assert history(archived) == expected()

    merged = root / "identified/readings/date=2026-11-30/hour=10/p0-0-119.compacted.parquet"
    # Still encrypted: without the keys not even the footer opens.
    with pytest.raises(OSError, match="encrypted"):
        pq.read_metadata(merged)
    report = json.loads((root / "jobs/compact/c-1/report.json").read_text())
    assert report["summary"] == {
        "hours": 2,
        "days": 0,  # the period ends the same day: not settled
        "objects_merged": 12 + 2 + 12 + 2,  # hours' readings, alerts, research readings, alerts
        "objects_written": 4 + 1 + 2 + 1,
        "objects_deleted": 12 + 2 + 12 + 2,
        "rows": 360 + 2 + 360 + 2,
        "refused": 0,
    }
    record = RunStore(redis, settings.redis.keys).get("c-1")
    assert record is not None and record.status == "succeeded"
    assert record.summary["objects_written"] == 8

    # Nothing left to do: a second run changes nothing.
    again = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "c-2")
    assert again.returncode == 0, again.stderr
    assert len(objects(root, "identified/readings")) == 4
    assert history(archived) == expected()


def kill_compaction_after(
    settings: Settings, run_id: str, step: str, period: Sequence[str] = PERIOD
) -> subprocess.Popen[str]:
    """Run `compact` until it reports `step`, then kill -9 it, as a crash there would."""
    command = [sys.executable, "-m", "healthsync", "job", "run", "compact", *period]
    command += ["--run-id", run_id, "--option", f"pause_after={step}"]
    with subprocess.Popen(
        command, env=child_env(settings), stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == f"compact: paused after {step}"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    return child


@pytest.mark.parametrize("step", ["written", "deleted"])
def test_a_compaction_killed_half_way_loses_and_doubles_nothing_and_a_rerun_finishes(
    settings: Settings, archived: Archive, step: str
) -> None:
    root = root_of(settings)
    before = objects(root, "identified/readings")
    child = kill_compaction_after(settings, "c-kill", step)
    assert child.returncode == -signal.SIGKILL

    # One merged object is in place; of its inputs none or one is gone.
    now = objects(root, "identified/readings")
    assert "date=2026-11-30/hour=10/p0-0-119.compacted.parquet" in now
    assert len(set(before) - set(now)) == (0 if step == "written" else 1)
    assert history(archived) == expected()

    # The same run id takes its lock over and finishes the work.
    result = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "c-kill")
    assert result.returncode == 0, result.stderr
    assert len(objects(root, "identified/readings")) == 4
    assert research_rows(root) == 360
    assert history(archived) == expected()


def test_an_archiver_replay_after_compaction_is_not_counted_twice(
    settings: Settings, archived: Archive
) -> None:
    root = root_of(settings)
    assert run_cli(settings, "job", "run", "compact", *PERIOD).returncode == 0
    # The archiver crashed before committing its last batch of partition 0 and, restarted
    # there, finds where the crashed run cut it although compaction merged the object.
    span, rows = batches(0)[-1]
    assert find_span(archived.store, span, rows[0].ts) == span
    archived.writer().write_readings(span, rows)
    replayed = f"date=2026-11-30/hour=11/{span.name}"
    assert replayed in objects(root, "identified/readings")
    assert history(archived) == expected()
    ids = Counter(r for points in history(archived).values() for r, _, _ in points)
    assert set(ids.values()) == {1}

    # The next compaction removes the rewritten input the merged object covers.
    assert run_cli(settings, "job", "run", "compact", *PERIOD).returncode == 0
    assert replayed not in objects(root, "identified/readings")
    assert research_rows(root) == 360
    assert history(archived) == expected()


def test_overlapping_objects_are_left_alone_and_the_run_fails_saying_why(
    settings: Settings, archived: Archive
) -> None:
    root = root_of(settings)
    span, rows = batches(1)[0]
    # A replay that cut its batch elsewhere: offsets overlap, rows cannot be told apart.
    archived.writer().write_readings(Span(1, span.first + 5, span.last + 5), rows[5:])
    hour_10 = "identified/readings/date=2026-11-30/hour=10"
    clashing = [name for name in objects(root, hour_10) if name.startswith("p1-")]
    result = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "c-bad")
    assert result.returncode == 1
    assert "p1-0-29.parquet and p1-5-34.parquet overlap in offsets; left as they are" in (
        result.stderr
    )
    # That partition's hour is as it was; the rest is compacted.
    assert objects(root, hour_10) == ["p0-0-119.compacted.parquet", *clashing]
    assert objects(root, "identified/readings/date=2026-11-30/hour=11") == [
        "p0-120-239.compacted.parquet",
        "p1-60-119.compacted.parquet",
    ]
