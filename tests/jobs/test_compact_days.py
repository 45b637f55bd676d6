"""Day compaction by `healthsync job run compact`, over an archive written through the real
writer into a local directory: each settled day merged into one object per partition, the
same readings before and after, a run killed half way and rerun, a batch the archiver had
only half written when it crashed, and hour compaction of late readings after a day.

Partition 0 carries PX-1 and PX-2, partition 1 PX-3, one reading every 5 minutes each
from 2026-11-28 22:00 to 2026-11-30 02:00 UTC, in batches of 40 readings per partition
(100 minutes of partition 0, 200 of partition 1): batches span hours, one spans midnight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.store.archive.compact import Compactor
from healthsync.store.archive.days import DayCompactor, day_of
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.writer import find_span
from tests.jobs.test_compact import kill_compaction_after, objects, root_of
from tests.jobs.test_job_run import run_cli
from tests.store.archive.conftest import reading

START = datetime(2026, 11, 28, 22, tzinfo=UTC).timestamp()
END = datetime(2026, 11, 30, 2, tzinfo=UTC).timestamp()
# Both days settled by the period's end (11-29 ended an hour before); 11-30 is not.
PERIOD = ("--since", "2026-11-28T00:00:00Z", "--until", "2026-11-30T01:00:00Z")
PATIENTS = ("PX-1", "PX-2", "PX-3")
PER_BATCH = 40
STEP_S = 300.0


def readings_of(partition: int, until: float = END) -> list[Reading]:
    found: list[Reading] = []
    patients = PATIENTS[:2] if partition == 0 else PATIENTS[2:]
    for n in range(int((until - START) // STEP_S)):
        for k, patient in enumerate(patients):
            ts = START + n * STEP_S + k
            found.append(reading(patient, f"mon-{patient}", n, ts, heart_rate=60 + n % 50))
    return found


def batches(partition: int, until: float = END) -> list[tuple[Span, list[Reading]]]:
    rows = readings_of(partition, until)
    found = []
    for start in range(0, len(rows), PER_BATCH):
        part = rows[start : start + PER_BATCH]
        found.append((Span(partition, start, start + len(part) - 1), part))
    return found


def write(archive: Archive, until: float = END) -> None:
    writer = archive.writer()
    for partition in (0, 1):
        for span, rows in batches(partition, until):
            writer.write_readings(span, rows)


@pytest.fixture
def archive(settings: Settings, tmp_path: Path) -> Archive:
    settings.archive.url = (tmp_path / "archive").as_uri()
    settings.jobs.output_url = f"file://{tmp_path / 'archive'}"
    return Archive.from_settings(settings)


def history(archive: Archive) -> dict[str, list[tuple[str, float, float]]]:
    """What the history reader returns per patient: (reading id, time, heart rate)."""
    reader = archive.reader()
    try:
        return {
            patient: [
                (p["reading_id"], p["ts"], p["vitals"]["heart_rate"])
                for p in reader.readings(patient, START - 3600, END + 3600)
            ]
            for patient in PATIENTS
        }
    finally:
        reader.close()


def expected(extra: Sequence[Reading] = ()) -> dict[str, list[tuple[str, float, float]]]:
    every = sorted([*readings_of(0), *readings_of(1), *extra], key=lambda r: r.ts)
    return {
        patient: [
            (r.reading_id, r.ts, r.vitals["heart_rate"]) for r in every if r.patient_id == patient
        ]
        for patient in PATIENTS
    }


def day_span(partition: int, day: str, last: int | None = None) -> str:
    """The day object's key under identified/readings/: the offsets of the partition's
    batches with a reading that day (`last`: up to another offset)."""
    spans = [
        span
        for span, rows in batches(partition)
        if any(f"{datetime.fromtimestamp(r.ts, UTC):%Y-%m-%d}" == day for r in rows)
    ]
    first, top = min(s.first for s in spans), max(s.last for s in spans)
    return f"date={day}/p{partition}-{first}-{top if last is None else last}.compacted.parquet"


def hour_objects(root: Path, *days: str) -> list[str]:
    return [n for n in objects(root, "identified/readings") if "/hour=" in n and n[5:15] in days]


def test_settled_days_become_one_object_per_partition_with_the_same_history(
    settings: Settings, archive: Archive
) -> None:
    write(archive)
    root = root_of(settings)
    before = history(archive)
    assert before == expected()
    assert len(objects(root, "identified/readings/date=2026-11-29")) > 24

    result = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "d-1")
    assert result.returncode == 0, result.stderr

    days = [
        name
        for name in objects(root, "identified/readings")
        if not name.startswith("date=2026-11-30/")
    ]
    assert days == sorted(day_span(p, day) for p in (0, 1) for day in ("2026-11-28", "2026-11-29"))
    # 11-30 is not settled: its first hour is compacted by the hour, its second left alone.
    assert all(n.startswith("hour=") for n in objects(root, "identified/readings/date=2026-11-30"))
    assert history(archive) == before
    ids = Counter(r for points in history(archive).values() for r, _, _ in points)
    assert set(ids.values()) == {1}
    research = sum(
        pq.read_metadata(p).num_rows for p in (root / "deidentified/readings").rglob("*.parquet")
    )
    assert research == len(readings_of(0)) + len(readings_of(1))
    merged = root / "identified/readings" / day_span(0, "2026-11-29")
    with pytest.raises(OSError, match="encrypted"):
        pq.read_metadata(merged)

    # A second run has nothing left to merge.
    again = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "d-2")
    assert again.returncode == 0, again.stderr
    assert '"objects_written": 0' in (root / "jobs/compact/d-2/report.json").read_text()
    assert history(archive) == before


@pytest.mark.parametrize("step", ["written", "deleted"])
def test_a_day_compaction_killed_half_way_loses_and_doubles_nothing(
    settings: Settings, archive: Archive, step: str
) -> None:
    write(archive)
    root = root_of(settings)
    kill_compaction_after(settings, "d-kill", step, PERIOD)

    # The first day object is in place, its inputs all there (written) or one gone.
    assert day_span(0, "2026-11-28") in objects(root, "identified/readings")
    assert hour_objects(root, "2026-11-28") != []
    assert history(archive) == expected()

    result = run_cli(settings, "job", "run", "compact", *PERIOD, "--run-id", "d-kill")
    assert result.returncode == 0, result.stderr
    assert hour_objects(root, "2026-11-28", "2026-11-29") == []
    assert history(archive) == expected()


class Crash(Exception):
    """Stands for the process dying at a step."""


def crash_after(step: str) -> Callable[[str, str], None]:
    def checkpoint(done: str, _key: str) -> None:
        if done == step:
            raise Crash(done)

    return checkpoint


def test_a_batch_half_written_by_a_crashed_archiver_stays_out_of_the_day_object(
    archive: Archive, settings: Settings
) -> None:
    """The archive ends at 11-29 22:59 here; each partition's last batch spans 21:xx and
    22:xx, and the archiver crashed after writing its first hour's object only."""
    until = datetime(2026, 11, 29, 22, 59, tzinfo=UTC).timestamp()
    writer = archive.writer()
    for partition in (0, 1):
        *whole, (span, rows) = batches(partition, until)
        for done in whole:
            writer.write_readings(*done)
        first_hour = [r for r in rows if int(r.ts // 3600) == int(rows[0].ts // 3600)]
        assert len(first_hour) < len(rows)
        keys = writer.write_readings(span, first_hour)
        archive.store.delete(keys[-1])  # the research object is written last: not yet
    day = day_of(until)
    compactor = Compactor(archive.store, archive.crypto, writer)
    DayCompactor(compactor, today=day).day("readings", day)

    # The restarted archiver finds where the crashed run cut its batch and writes it whole.
    for partition in (0, 1):
        span, rows = batches(partition, until)[-1]
        assert find_span(archive.store, Span(partition, span.first, span.first), rows[0].ts) == span
        writer.write_readings(span, rows)
    reader = archive.reader()
    try:
        got = [p["reading_id"] for p in reader.readings("PX-3", START, until)]
    finally:
        reader.close()
    assert got == [r.reading_id for r in readings_of(1, until)]


def test_a_crash_between_the_day_object_and_the_deletes_then_hour_compaction_of_late_readings(
    archive: Archive, settings: Settings
) -> None:
    """Steps run partly: the day object written, no input deleted; then late readings land
    in that day and the hourly compaction merges them; then the day is compacted again."""
    write(archive)
    root = root_of(settings)
    day = day_of(datetime(2026, 11, 29, tzinfo=UTC).timestamp())
    stopping = Compactor(archive.store, archive.crypto, archive.writer(), crash_after("written"))
    with pytest.raises(Crash):
        DayCompactor(stopping, today=day + 1).day("readings", day)
    assert day_span(0, "2026-11-29") in objects(root, "identified/readings")
    assert history(archive) == expected()

    # Readings measured at 11-29 10:xx, sent late, in two later batches of partition 0.
    at = datetime(2026, 11, 29, 10, 0, 30, tzinfo=UTC).timestamp()
    late = [reading("PX-1", "mon-late", n, at + 60 * n, heart_rate=140) for n in range(4)]
    top = batches(0)[-1][0].last
    writer = archive.writer()
    writer.write_readings(Span(0, top + 1, top + 2), late[:2])
    writer.write_readings(Span(0, top + 3, top + 4), late[2:])
    assert history(archive) == expected(late)

    compactor = Compactor(archive.store, archive.crypto, archive.writer())
    done = compactor.hour("readings", int(late[0].ts // 3600))
    assert history(archive) == expected(late)
    merged = [(m.inputs, m.rows) for m in done.merges if m.written and m.partition == 0]
    assert merged == [(2, 4)]  # the late objects only: what the day object holds is not merged
    hour_10 = objects(root, "identified/readings/date=2026-11-29/hour=10")
    assert [n for n in hour_10 if n.startswith("p0-")] == [
        f"p0-{top + 1}-{top + 4}.compacted.parquet"
    ]
    assert history(archive) == expected(late)

    # Once a later batch shows the late ones whole, the next day compaction takes them in.
    after = reading("PX-1", "mon-late", 9, END - 60, heart_rate=141)
    writer.write_readings(Span(0, top + 5, top + 5), [after])
    DayCompactor(compactor, today=day + 1).day("readings", day)
    day_level = [n for n in objects(root, "identified/readings") if n.count("/") == 1]
    assert [n for n in day_level if n.startswith("date=2026-11-29/")] == [
        day_span(0, "2026-11-29", last=top + 4),
        day_span(1, "2026-11-29"),
    ]
    assert hour_objects(root, "2026-11-29") == []
    assert history(archive) == expected([*late, after])
