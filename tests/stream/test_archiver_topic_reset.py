"""The archiver when a topic starts over: its offsets begin again at 0 in the same hour.

The embedded broker keeps topics in memory, so its restart does this, as does
any Kafka whose topic is deleted and recreated. Here the vitals topic is
deleted and recreated with the admin client, and the archiver runs before and
after: the readings of both incarnations must all stay readable, once each,
also after compaction merged the hour of the first.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.kafka import TopicIds, client_config, ensure_topics, make_consumer
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.archive import coverage
from healthsync.store.archive.compact import Compactor
from healthsync.store.archive.layout import READINGS
from healthsync.store.archive.setup import Archive
from healthsync.stream.archiver import Archiver
from healthsync.wiring import build_archiver
from tests.conftest import make_settings, wait_for
from tests.stream.test_archiver import (
    CONTRACT_NAME,
    T0,
    archived_ids,
    produce,
    readings,
    research_rows,
)

HOUR = int(T0 // 3600)
# A multiple of the nine patients: each incarnation puts as many readings on each
# partition, so a batch of the second can get the very offsets of one of the first.
ROUND = 90


@pytest.fixture
def reset_settings(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    settings = make_settings(
        broker,
        redis_server,
        # Long rolls: what waits in a partition becomes one batch.
        archive={
            "url": f"file://{tmp_path}/archive",
            "roll_s": 2,
            "group_id": f"archiver-{uuid.uuid4().hex[:8]}",
        },
        processor={"session_timeout_ms": 6000},
    )
    ensure_topics(settings.kafka)
    return settings


class Run:
    """Archivers started one after another, each stopped once it committed everything."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: tuple[Archiver, threading.Thread] | None = None

    def archive(self, expected: int) -> None:
        """Start an archiver, wait until it committed every offset of the topic, stop it."""
        archiver = build_archiver(self.settings)
        thread = threading.Thread(target=archiver.run, daemon=True)
        thread.start()
        self.current = (archiver, thread)
        wait_for(lambda: self.committed() == expected, 60, f"{expected} offsets committed")
        self.stop()

    def committed(self) -> int:
        """How many offsets of the vitals topic the archiver's group committed."""
        kafka = self.settings.kafka
        consumer = make_consumer(kafka, self.settings.archive.group_id)
        try:
            wanted = [TopicPartition(kafka.vitals_topic, p) for p in range(kafka.partitions)]
            return sum(max(tp.offset, 0) for tp in consumer.committed(wanted, timeout=5))
        finally:
            consumer.close()

    def stop(self) -> None:
        if self.current is not None:
            archiver, thread = self.current
            archiver.stop()
            thread.join(30)
            self.current = None


@pytest.fixture
def run(reset_settings: Settings) -> Iterator[Run]:
    started = Run(reset_settings)
    yield started
    started.stop()


def recreate_vitals_topic(settings: Settings) -> None:
    """Delete the vitals topic and create it again: a new incarnation, offsets from 0."""
    admin = AdminClient(client_config(settings.kafka))
    topic = settings.kafka.vitals_topic
    for future in admin.delete_topics([topic], request_timeout=10).values():
        future.result(10)

    def created() -> bool:
        try:
            ensure_topics(settings.kafka)
        except KafkaException:
            return False
        return topic in admin.list_topics(timeout=5).topics

    wait_for(created, 30, "the vitals topic to be created again")


def expected_ids(count: int) -> list[str]:
    return sorted(r.reading_id for r in readings(0, count))


def vitals_topic_id(settings: Settings) -> str:
    return TopicIds(settings.kafka)(settings.kafka.vitals_topic)


def object_keys(settings: Settings) -> set[str]:
    """Every archived object of either set, relative to the archive's root."""
    root = Path(settings.archive.url.removeprefix("file://"))
    return {p.relative_to(root).as_posix() for p in root.rglob("*.parquet")}


def incarnations(keys: set[str]) -> set[str]:
    """The incarnations the objects' names carry ("" for the plain contract name)."""
    return {piece.span.incarnation for key in keys if (piece := coverage.parse(key)) is not None}


def test_readings_of_a_recreated_topic_do_not_overwrite_those_archived_before(
    reset_settings: Settings, run: Run
) -> None:
    produce(reset_settings, readings(0, 2 * ROUND))
    run.archive(2 * ROUND)
    assert sorted(archived_ids(reset_settings)) == expected_ids(2 * ROUND)
    first = object_keys(reset_settings)
    assert [k for k in first if not CONTRACT_NAME.fullmatch(k.rpartition("/")[2])] == []

    recreate_vitals_topic(reset_settings)
    assert run.committed() == 0  # the group's offsets went with the topic
    # The same hour, the same number of readings per partition: the same offsets again.
    produce(reset_settings, readings(2 * ROUND, 2 * ROUND))
    run.archive(2 * ROUND)

    ids = archived_ids(reset_settings)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(ids) == expected_ids(4 * ROUND)
    assert research_rows(reset_settings) == 4 * ROUND
    # The first incarnation's objects keep their contract names; the second's carry its id.
    keys = object_keys(reset_settings)
    assert first < keys
    assert incarnations(keys - first) == {vitals_topic_id(reset_settings)}


def test_a_compacted_hour_of_one_incarnation_hides_nothing_of_the_next(
    reset_settings: Settings, run: Run, tmp_path: Path
) -> None:
    # Two batches per partition, merged by compaction into one object covering both.
    produce(reset_settings, readings(0, ROUND))
    run.archive(ROUND)
    produce(reset_settings, readings(ROUND, ROUND))
    run.archive(2 * ROUND)
    archive = Archive.from_settings(reset_settings)
    compactor = Compactor(archive.store, archive.crypto, archive.writer())
    merged = compactor.hour(READINGS, HOUR).merges
    assert [m.written for m in merged if m.written] != []
    compacted = re.compile(r"p\d+-\d+-\d+\.compacted\.parquet")
    written = [m.written.rpartition("/")[2] for m in merged if m.written]
    assert [name for name in written if not compacted.fullmatch(name)] == []
    assert sorted(archived_ids(reset_settings)) == expected_ids(2 * ROUND)

    recreate_vitals_topic(reset_settings)
    assert run.committed() == 0
    # Two batches again, but fewer readings: their offsets lie inside the compacted ranges.
    half = ROUND // 2
    produce(reset_settings, readings(2 * ROUND, half))
    run.archive(half)
    produce(reset_settings, readings(2 * ROUND + half, half))
    run.archive(ROUND)

    ids = archived_ids(reset_settings)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(ids) == expected_ids(3 * ROUND)

    # Compacting the hour again merges each incarnation on its own; nothing lost or doubled.
    compactor.hour(READINGS, HOUR)
    hour_dir = tmp_path / "archive/identified/readings/date=2026-11-28/hour=10"
    names = [p.name for p in hour_dir.iterdir()]
    assert all(name.endswith(".compacted.parquet") for name in names)
    # Per partition, one merged object of each incarnation.
    assert set(Counter(name.partition("-")[0] for name in names).values()) == {2}
    plain = [name for name in names if compacted.fullmatch(name)]
    assert len(plain) == len(names) // 2
    assert incarnations(set(names) - set(plain)) == {vitals_topic_id(reset_settings)}
    ids = archived_ids(reset_settings)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(ids) == expected_ids(3 * ROUND)


def sealed(settings: Settings, offset: int, reading: Reading) -> Message:
    """A vitals message at `offset` of partition 0, as the consumer hands it over."""
    codec = Codec.from_settings(settings)
    key = codec.message_key(reading.patient_id)
    value = codec.seal_message(roles.VITALS, key, reading.to_json())
    return Message(
        topic=settings.kafka.vitals_topic, partition=0, offset=offset, key=key, value=value
    )


def test_offsets_going_back_under_a_running_archiver_begin_a_new_incarnation(
    reset_settings: Settings,
) -> None:
    # A consumer that lives through its topic being created again crashes in librdkafka
    # (its metadata cache holds the old topic id), so the messages are handed to the
    # archiver here as its consumer would hand them over; the topic ids are the broker's.
    archiver = build_archiver(reset_settings)
    half = ROUND // 2

    def hand_over(start: int, count: int) -> None:
        for offset, reading in enumerate(readings(start, count)):
            archiver._add(sealed(reset_settings, offset, reading))

    later: set[str] = set()
    try:
        hand_over(0, ROUND)
        archiver._drain()  # written and committed, as at the end of a roll
        recreate_vitals_topic(reset_settings)
        later.add(vitals_topic_id(reset_settings))
        hand_over(ROUND, half)  # a roll still open when the topic is created again
        recreate_vitals_topic(reset_settings)
        later.add(vitals_topic_id(reset_settings))
        hand_over(ROUND + half, ROUND)  # the first batch's offsets once more
        archiver._drain()
    finally:
        archiver.consumer.close()

    total = 2 * ROUND + half
    ids = archived_ids(reset_settings)
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert sorted(ids) == expected_ids(total)
    assert research_rows(reset_settings) == total
    # Plain names for the first incarnation, the topic id in those of each later one.
    assert len(later) == 2
    assert incarnations(object_keys(reset_settings)) == {""} | later
