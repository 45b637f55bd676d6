"""The archiver against a real broker: every acknowledged reading archived exactly once.

Readings go on the vitals topic as ingest puts them there (sealed, keyed by the
patient's pseudonym, acknowledged by Kafka). A crash is a real `kill -9` of
the `healthsync archive` process, and, to hit the one window that matters
every time, an archiver that wrote a batch and died before committing it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition

from healthsync.config import Settings
from healthsync.domain.alerts import Alert
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.kafka import TopicIds, client_config, ensure_topics, make_producer, unread
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.stream.archiver import Archiver, Source, alert_event
from healthsync.stream.rolls import Roll
from healthsync.wiring import build_archiver
from tests.conftest import make_settings, wait_for

T0 = 1_795_860_000.0  # 2026-11-28 10:00 UTC
PATIENTS = [f"PX-{7000 + i}" for i in range(9)]
# The object name docs/DESIGN.md ("Archive layout") fixes.
CONTRACT_NAME = re.compile(r"p\d+-\d+-\d+\.parquet")


def readings(
    start: int, count: int, *, t0: float = T0, patients: list[str] = PATIENTS
) -> list[Reading]:
    """One reading a second from `t0 + start`, the patients in turn."""
    made = []
    for n in range(start, start + count):
        patient = patients[n % len(patients)]
        device = f"mon-{n % len(patients)}"
        ts = t0 + n
        made.append(
            Reading(
                reading_id=reading_id_for(device, n, round(ts * 1000)),
                device_id=device,
                patient_id=patient,
                ts=ts,
                received_at=ts + 0.1,
                vitals={"heart_rate": 60.0 + n % 40, "spo2": 97.0},
                seq=n,
            )
        )
    return made


def produce(settings: Settings, batch: list[Reading], partition: int = -1) -> None:
    """As ingest does: sealed, keyed by pseudonym, acknowledged with acks=all; all on
    `partition` if given, else (-1, librdkafka's "unassigned") where the key puts each."""
    codec = Codec.from_settings(settings)
    producer = make_producer(settings.kafka)
    failures: list[Any] = []
    for reading in batch:
        key = codec.message_key(reading.patient_id)
        value = codec.seal_message(roles.VITALS, key, reading.to_json())
        producer.produce(
            settings.kafka.vitals_topic,
            value,
            key,
            on_delivery=lambda err, _m: failures.append(err) if err else None,
            partition=partition,
        )
    assert producer.flush(30) == 0 and not failures


def produce_alert_events(
    settings: Settings, events: list[tuple[str, Alert]] | list[tuple[str, dict[str, Any]]]
) -> None:
    """As the processor does: each event sealed and keyed by its patient's pseudonym."""
    codec = Codec.from_settings(settings)
    producer = make_producer(settings.kafka)
    for event, alert in events:
        doc = alert if isinstance(alert, dict) else alert.to_dict()
        key = codec.message_key(doc["patient_id"])
        value = codec.seal_message(roles.ALERTS, key, orjson.dumps({"event": event, "alert": doc}))
        producer.produce(settings.kafka.alerts_topic, value, key)
    assert producer.flush(30) == 0


def archived_ids(settings: Settings) -> list[str]:
    # (archive.url may be file:// or s3://: the reader is the same)
    """Every reading id in the identified archive, as often as it is there."""
    reader = Archive.from_settings(settings).reader()
    ids = [
        point["reading_id"]
        for patient in PATIENTS
        for point in reader.readings(patient, T0 - 3600, T0 + 86_400)
    ]
    reader.close()
    return ids


def research_rows(settings: Settings) -> int:
    import pyarrow.parquet as pq

    root = Path(settings.archive.url.removeprefix("file://"))
    return sum(pq.ParquetFile(p).metadata.num_rows for p in root.glob("deidentified/**/*.parquet"))


def spans_overlap(root: Path) -> list[tuple[Span, Span]]:
    """Pairs of distinct batches of one partition that cover a common offset."""
    spans = {s for p in root.glob("identified/**/*.parquet") if (s := Span.parse(p.name))}
    return [
        (a, b)
        for a in spans
        for b in spans
        if a != b and a.partition == b.partition and a.first <= b.last and b.first <= a.last
    ]


@pytest.fixture
def archive_settings(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    settings = make_settings(
        broker,
        redis_server,
        archive={"url": f"file://{tmp_path}/archive", "roll_s": 0.5},
        processor={"session_timeout_ms": 6000},
    )
    ensure_topics(settings.kafka)
    return settings


@pytest.fixture
def running() -> Iterator[list[tuple[Archiver, threading.Thread]]]:
    started: list[tuple[Archiver, threading.Thread]] = []
    yield started
    for archiver, thread in started:
        archiver.stop()
        thread.join(30)


def start(archiver: Archiver, started: list[tuple[Archiver, threading.Thread]]) -> Archiver:
    thread = threading.Thread(target=archiver.run, daemon=True)
    thread.start()
    started.append((archiver, thread))
    return archiver


def run_kill_and_restart(settings: Settings, env: dict[str, str], log: Any) -> None:
    command = [sys.executable, "-m", "healthsync", "archive"]
    first = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        produce(settings, readings(0, 300))
        wait_for(lambda: len(archived_ids(settings)) >= 100, 60, "a first roll")
        produce(settings, readings(300, 300))
    finally:
        first.kill()  # SIGKILL: no drain, whatever was buffered or half-written stays so
        first.wait(10)
    second = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(lambda: len(archived_ids(settings)) >= 600, 90, "every reading")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)


def test_kill_9_mid_roll_then_restart_archives_every_reading_once(
    archive_settings: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, **archive_settings.to_env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    with (tmp_path / "archiver.log").open("wb") as log:
        run_kill_and_restart(archive_settings, env, log)
    assert sorted(archived_ids(archive_settings)) == sorted(r.reading_id for r in readings(0, 600))
    assert research_rows(archive_settings) == 600
    assert spans_overlap(tmp_path / "archive") == []


def test_a_topic_never_created_again_is_archived_under_the_contract_names(
    archive_settings: Settings, tmp_path: Path, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    produce(archive_settings, readings(0, 200))
    start(build_archiver(archive_settings), running)
    wait_for(lambda: research_rows(archive_settings) == 200, 60, "every reading archived")

    root = tmp_path / "archive"
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    layout = re.compile(
        r"identified/readings/date=2026-11-28/hour=10/(?P<a>.+)|"
        r"deidentified/readings/year=\d{4}/(?P<b>.+)"
    )
    names = [m["a"] or m["b"] for key in keys if (m := layout.fullmatch(key))]
    assert len(names) == len(keys) > 0
    assert [n for n in names if not CONTRACT_NAME.fullmatch(n)] == []
    # What the plain names belong to: the topic's id now, and nothing else (no PHI).
    topic = archive_settings.kafka.vitals_topic
    record = orjson.loads((root / "identified/_topics" / f"{topic}.json").read_bytes())
    topic_id = TopicIds(archive_settings.kafka)(topic)
    assert re.fullmatch(r"[0-9a-f]{32}", topic_id)
    assert record == {"topic": topic, "topic_id": topic_id}


class CrashBeforeCommit(Archiver):
    """An archiver that dies between writing a batch and committing it."""

    def _commit(self, roll: Roll) -> None:
        self.rolls = {place: r for place, r in self.rolls.items() if r is not roll}
        self.stop()


def crash_after_first_batch(
    settings: Settings, root: Path, running: list[tuple[Archiver, threading.Thread]]
) -> list[Path]:
    """Run an archiver until it wrote one batch and died before committing it; the
    objects it left, relative to the archive's `root`."""
    built = build_archiver(settings)
    source = Source(built.consumer, built.topic_id)
    crashed = CrashBeforeCommit(settings, source, built.writer, built.codec, built.reporting)
    start(crashed, running)
    wait_for(lambda: any(root.glob("identified/**/*.parquet")), 60, "the crashed run's batch")
    running[-1][1].join(30)
    return sorted(p.relative_to(root) for p in root.rglob("*.parquet"))


def replay_after_crash(
    settings: Settings,
    root: Path,
    running: list[tuple[Archiver, threading.Thread]],
    crashed_keys: list[Path],
    expected: list[Reading],
) -> None:
    """Run an archiver until it archived as many readings as `expected`; the crashed
    run's objects were rewritten in place: each reading once, no spans overlapping."""
    replay = start(build_archiver(settings), running)
    wait_for(lambda: len(archived_ids(settings)) >= len(expected), 60, "the replay")
    replay.stop()
    running[-1][1].join(30)

    assert set(crashed_keys) <= {p.relative_to(root) for p in root.rglob("*.parquet")}
    ids = archived_ids(settings)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(ids) == sorted(r.reading_id for r in expected)
    assert spans_overlap(root) == []


def test_a_batch_written_but_not_committed_is_rewritten_not_duplicated(
    archive_settings: Settings, tmp_path: Path, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    produce(archive_settings, readings(0, 200))
    root = tmp_path / "archive"
    crashed_keys = crash_after_first_batch(archive_settings, root, running)

    produce(archive_settings, readings(200, 100))
    # Longer rolls than the crashed run's: left to itself, the replay would cut its
    # batches elsewhere and overlap the crashed run's objects.
    archive_settings.archive.roll_s = 2
    replay_after_crash(archive_settings, root, running, crashed_keys, readings(0, 300))
    assert research_rows(archive_settings) == 300


def _offline_alert() -> Alert:
    return Alert(
        alert_id="a-1",
        patient_id=PATIENTS[0],
        kind="device_offline:mon-77",
        vital=None,
        severity="warning",
        status="open",
        opened_at=T0,
        updated_at=T0,
        value=0.0,
        band="offline",
        reading_id="r-1",
        category="technical",
        device_id="mon-77",
    )


def test_alert_events_are_archived_and_their_research_copy_names_no_device(
    archive_settings: Settings, tmp_path: Path, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    alert = _offline_alert()
    resolved = replace(alert, status="resolved", updated_at=T0 + 90, resolved_at=T0 + 90)
    produce_alert_events(archive_settings, [("opened", alert), ("resolved", resolved)])
    start(build_archiver(archive_settings), running)
    root = tmp_path / "archive"
    wait_for(lambda: list(root.glob("deidentified/alerts/**/*.parquet")), 60, "the alert history")

    [identified] = root.glob("identified/alerts/date=2026-11-28/hour=10/*.parquet")
    assert CONTRACT_NAME.fullmatch(identified.name)
    assert b"mon-77" not in identified.read_bytes()
    research = pq.read_table(next(root.glob("deidentified/alerts/year=*/*.parquet")))
    rows = research.to_pylist()
    assert [(r["event"], r["kind"], r["status"]) for r in rows] == [
        ("opened", "device_offline", "open"),
        ("resolved", "device_offline", "resolved"),
    ]
    assert not {"alert_id", "device_id", "reading_id", "evidence", "patient_id"} & set(
        research.column_names
    )
    assert b"mon-77" not in repr(rows).encode()


def _spo2_alert() -> Alert:
    alert = replace(_offline_alert(), kind="threshold:spo2", vital="spo2", value=88.0)
    return replace(alert, band="low", category="clinical", device_id=None)


@pytest.mark.parametrize(
    "hostile",
    [
        {"updated_at": 1e300},
        {"opened_at": "yesterday"},
        {"value": None},
        {"status": "maybe"},
        {"evidence": [[1e300, 88.0]]},
        {"drivers": "spo2"},
    ],
    ids=["time-past-any-date", "time-as-text", "value-null", "status", "evidence", "drivers"],
)
def test_an_alert_event_the_processor_could_not_have_written_is_not_archivable(
    hostile: dict[str, Any],
) -> None:
    # Each of these was archived as it came, or failed the archive writer later.
    value = orjson.dumps({"event": "opened", "alert": {**_spo2_alert().to_dict(), **hostile}})
    with pytest.raises(ValueError, match=next(iter(hostile))):
        alert_event(value)
    valid = orjson.dumps({"event": "opened", "alert": _spo2_alert().to_dict()})
    assert alert_event(valid) == (("opened", _spo2_alert()), T0)


def test_alert_events_that_would_fail_the_writer_are_skipped_and_the_partition_flows(
    archive_settings: Settings, tmp_path: Path, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    # Sealed and keyed as the processor writes them, on the same partition as the valid
    # event after them: only the alert's contents are wrong. A time past any date, or a
    # time in text, failed the archiver's write on every retry, which held the partition
    # (and the broker's recycle, which waits for the archiver) for ever.
    valid = _spo2_alert().to_dict()
    hostile: list[dict[str, Any]] = [{"updated_at": 1e300}, {"opened_at": "yesterday"}]
    snapshots = [*({**valid, **changes} for changes in hostile), valid]
    produce_alert_events(archive_settings, [("opened", s) for s in snapshots])
    start(build_archiver(archive_settings), running)
    root = tmp_path / "archive"
    wait_for(lambda: list(root.glob("deidentified/alerts/**/*.parquet")), 60, "the valid event")
    rows = pq.read_table(next(root.glob("deidentified/alerts/year=*/*.parquet"))).to_pylist()
    assert [(r["event"], r["kind"], r["status"]) for r in rows] == [
        ("opened", "threshold:spo2", "open")
    ]


def test_asked_to_write_now_the_archiver_commits_what_it_buffered_and_goes_on(
    archive_settings: Settings, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    # Rolls far longer than the test: only the request (SIGUSR1 in `healthsync archive`,
    # sent by the broker recycle) writes them.
    archive_settings.archive.roll_s = 3600
    kafka = archive_settings.kafka
    group = archive_settings.archive.group_id
    produce(archive_settings, readings(0, 50))
    archiver = start(build_archiver(archive_settings), running)

    def buffered() -> int:
        return sum(len(roll.rows) for roll in list(archiver.rolls.values()))

    wait_for(lambda: buffered() == 50, 60, "the readings to be read and buffered")
    assert archived_ids(archive_settings) == []
    # Counted to the end of every partition (a limit of 0 stops at the first fetch).
    assert unread(kafka, group, [kafka.vitals_topic], 100) == 50, "nothing committed yet"

    def asked() -> bool:
        archiver.write_now()
        return unread(kafka, group, [kafka.vitals_topic], 0) == 0

    wait_for(asked, 60, "everything read to be committed")
    assert sorted(archived_ids(archive_settings)) == sorted(r.reading_id for r in readings(0, 50))
    produce(archive_settings, readings(50, 10))  # still running: reads and buffers more
    wait_for(asked, 60, "the later readings to be committed")
    assert len(archived_ids(archive_settings)) == 60


def test_a_partition_of_nothing_archivable_is_committed_when_asked_all_the_same(
    archive_settings: Settings, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    # Values that are not readings (the processor dead-letters them) where the group
    # resumes: nothing to write, but unless they are committed the broker recycle waits
    # for this group in vain.
    archive_settings.archive.roll_s = 3600
    kafka = archive_settings.kafka
    group = archive_settings.archive.group_id
    producer = make_producer(kafka)
    for partition in range(kafka.partitions):
        for _ in range(10):
            producer.produce(kafka.vitals_topic, b"not a reading", b"k", partition=partition)
    assert producer.flush(30) == 0
    archiver = start(build_archiver(archive_settings), running)

    def read() -> int:
        return sum(roll.last - roll.first + 1 for roll in list(archiver.rolls.values()))

    wait_for(lambda: read() == 10 * kafka.partitions, 60, "the values to be read")
    assert unread(kafka, group, [kafka.vitals_topic], 100) == 10 * kafka.partitions

    def asked() -> bool:
        archiver.write_now()
        return unread(kafka, group, [kafka.vitals_topic], 0) == 0

    wait_for(asked, 30, "everything read to be committed")
    assert archived_ids(archive_settings) == []
    produce(archive_settings, readings(0, 20))  # readings after them are archived as ever
    wait_for(asked, 60, "the readings after them to be committed")
    assert sorted(archived_ids(archive_settings)) == sorted(r.reading_id for r in readings(0, 20))


def test_a_crashed_batch_is_rewritten_by_a_run_resuming_past_its_unarchivable_start(
    archive_settings: Settings, tmp_path: Path, running: list[tuple[Archiver, threading.Thread]]
) -> None:
    # The crashed run's batch starts with five values that are not readings. A later run
    # committed past them (nothing to write) and stopped before reading on: the replay
    # starts inside the crashed batch, and must rewrite it, not overlap it.
    kafka = archive_settings.kafka
    producer = make_producer(kafka)
    for _ in range(5):
        producer.produce(kafka.vitals_topic, b"not a reading", b"k", partition=0)
    assert producer.flush(30) == 0
    produce(archive_settings, readings(0, 100), partition=0)
    archive_settings.archive.roll_s = 2  # all of it read before the first roll is due
    root = tmp_path / "archive"
    crashed_keys = crash_after_first_batch(archive_settings, root, running)
    assert {Span.parse(key.name) for key in crashed_keys} == {Span(0, 0, 104)}
    committer = Consumer(client_config(kafka, {}, {"group.id": archive_settings.archive.group_id}))
    committer.commit(offsets=[TopicPartition(kafka.vitals_topic, 0, 5)], asynchronous=False)
    committer.close()

    produce(archive_settings, readings(100, 50))
    replay_after_crash(archive_settings, root, running, crashed_keys, readings(0, 150))
