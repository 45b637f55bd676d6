"""Offsets a fetch skipped are read again, by the processor and by the archiver.

The embedded broker now and then answers a fetch with a later record batch
before an earlier one became readable (two ingest replicas appending to one
partition at once), and a consumer then moves past the earlier readings:
acknowledged, never stored. That race cannot be set off on demand, so here the
consumer is the real one with one change: the first time its answer holds one
of the chosen offsets, it leaves that message out, as such a fetch does.
Everything else is real: the broker, Redis, and the processor and archiver as
`healthsync process` and `healthsync archive` build them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, cast

import orjson
import pytest
from confluent_kafka import Consumer, Message
from redis import Redis

import healthsync.kafka
from healthsync.config import Settings
from healthsync.domain.alerts import DEFAULT_THRESHOLDS
from healthsync.domain.readings import Reading
from healthsync.fhir.observations import ObservationBuilder, reading_bundle
from healthsync.kafka import ensure_topics, make_producer
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.stream.processor import Processor
from healthsync.wiring import build_archiver, build_processor, build_pusher
from tests.conftest import make_settings, wait_for
from tests.fhir.fake_ehr import FakeEhr
from tests.stream.test_archiver import archive_settings, archived_ids, produce
from tests.stream.test_archiver import readings as past_readings

__all__ = ["archive_settings"]  # a fixture, used by name

PATIENTS = [f"PG-{i}" for i in range(9)]
# Offsets left out of the consumer's answer, in every partition.
HOLE = {3, 4}


class SkippingConsumer(Consumer):
    """A real consumer whose answers leave out `offsets` (in every partition), as the
    broker's race does: only where the same answer holds a later message of that
    partition. The first time each arrives, or every time with `for_good` (records
    the broker no longer has)."""

    offsets: ClassVar[set[int]] = set()
    for_good: ClassVar[bool] = False
    left_out: ClassVar[list[tuple[int | None, int | None]]] = []

    def consume(self, *args: Any, **kwargs: Any) -> list[Message]:
        messages = super().consume(*args, **kwargs)
        last: dict[int | None, int] = {}
        for message in messages:
            last[message.partition()] = max(
                last.get(message.partition(), -1), message.offset() or 0
            )
        answer = []
        for message in messages:
            place = (message.partition(), message.offset())
            offset = message.offset()
            if (
                offset in self.offsets
                and last[message.partition()] > offset
                and (self.for_good or place not in self.left_out)
            ):
                self.left_out.append(place)
                continue
            answer.append(message)
        return answer


def skipping(offsets: set[int], *, for_good: bool = False) -> type[SkippingConsumer]:
    """A SkippingConsumer class of its own, so that tests share nothing."""

    class Skipping(SkippingConsumer):
        pass

    Skipping.offsets, Skipping.for_good, Skipping.left_out = set(offsets), for_good, []
    return Skipping


def fresh_readings(count: int) -> list[Reading]:
    """Readings of the last minutes (the live store trims what is older than a day)."""
    return past_readings(0, count, t0=time.time() - count, patients=PATIENTS)


def stored_ids(redis: Redis, settings: Settings) -> set[str]:
    keys = Codec.from_settings(settings).keys
    members = (cast("list[bytes]", redis.zrange(keys.seen(p), 0, -1)) for p in PATIENTS)
    return {m.decode() for found in members for m in found}


def stat(redis: Redis, settings: Settings, stage: str, name: str) -> int:
    keys = Codec.from_settings(settings).keys
    return int(cast("bytes | None", redis.hget(keys.stats(stage), name)) or 0)


class Stage(Protocol):
    def run(self) -> None: ...
    def stop(self) -> None: ...


@contextmanager
def running(stage: Stage) -> Iterator[None]:
    """`stage` consuming on a thread of its own until the block ends."""
    thread = threading.Thread(target=stage.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stage.stop()
        thread.join(30)


@pytest.fixture
def run_processor(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[type[Consumer]], Processor]]:
    started: list[tuple[Processor, threading.Thread]] = []

    def start(consumer_class: type[Consumer]) -> Processor:
        monkeypatch.setattr(healthsync.kafka, "Consumer", consumer_class)
        processor = build_processor(settings)
        thread = threading.Thread(target=processor.run, daemon=True)
        thread.start()
        started.append((processor, thread))
        return processor

    yield start
    for processor, thread in started:
        processor.stop()
        thread.join(30)


def test_the_processor_stores_the_readings_a_fetch_skipped(
    settings: Settings, redis: Redis, run_processor: Callable[[type[Consumer]], Processor]
) -> None:
    # Everything is in the topic first, so the first answers hold a partition's later
    # messages too (the race only ever hands over a later batch).
    sent = fresh_readings(60)
    ensure_topics(settings.kafka)
    produce(settings, sent)
    consumer = skipping(HOLE)
    run_processor(consumer)

    everything = {r.reading_id for r in sent}
    wait_for(lambda: stored_ids(redis, settings) == everything, what="every reading stored")
    assert len(consumer.left_out) >= 2, "the test must leave readings out to mean anything"
    wait_for(lambda: stat(redis, settings, "processor", "fetch_gaps_total") >= 1, what="counted")
    assert stat(redis, settings, "processor", "offsets_skipped_total") == 0


def test_a_hole_that_never_fills_is_skipped_without_stalling_the_partition(
    settings: Settings, redis: Redis, run_processor: Callable[[type[Consumer]], Processor]
) -> None:
    sent = fresh_readings(45)
    ensure_topics(settings.kafka)
    produce(settings, sent)
    consumer = skipping({2}, for_good=True)
    processor = run_processor(consumer)
    processor.gaps.patience_s = 0.5

    wait_for(lambda: consumer.left_out, what="a hole")

    def every_other_stored_and_each_hole_counted() -> bool:
        # Which partitions lose their offset 2 depends on how the fetches fall (a message
        # is left out only with a later one of its partition beside it), so the holes are
        # read as they are now: once everything else is stored, no further one can come.
        holes = {p for p, _offset in consumer.left_out}
        skipped = stat(redis, settings, "processor", "offsets_skipped_total")
        return len(stored_ids(redis, settings)) == len(sent) - len(holes) == len(sent) - skipped

    # Every reading but the ones the broker "lost" is stored, later ones of their partitions too.
    wait_for(every_other_stored_and_each_hole_counted, what="every other reading stored")


def test_the_archiver_archives_the_readings_a_fetch_skipped(
    archive_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = past_readings(0, 90)
    produce(archive_settings, sent)
    consumer = skipping(HOLE)
    monkeypatch.setattr(healthsync.kafka, "Consumer", consumer)
    with running(build_archiver(archive_settings)):
        wait_for(
            lambda: sorted(archived_ids(archive_settings)) == sorted(r.reading_id for r in sent),
            60,
            "every reading archived once",
        )
    assert len(consumer.left_out) >= 2


def test_the_ehr_push_pushes_the_resources_a_fetch_skipped(
    broker: Service, redis_server: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    ehr = FakeEhr().start()
    settings = make_settings(broker, redis_server, fhir={"ehr_base_url": ehr.base_url})
    ensure_topics(settings.kafka)
    # As the processor's topic sink publishes them: a sealed Bundle per reading.
    codec = Codec.from_settings(settings)
    builder = ObservationBuilder(DEFAULT_THRESHOLDS, codec.id_key)
    producer = make_producer(settings.kafka)
    sent = fresh_readings(45)
    for reading in sent:
        key = codec.message_key(reading.patient_id)
        bundle = reading_bundle(reading, builder.build(reading))
        value = codec.seal_message(roles.OBSERVATIONS, key, orjson.dumps(bundle))
        producer.produce(settings.kafka.observations_topic, value, key)
    assert producer.flush(30) == 0
    consumer = skipping(HOLE)
    monkeypatch.setattr(healthsync.kafka, "Consumer", consumer)

    def pushed() -> int:
        return sum(1 for name in list(ehr.resources) if name.startswith("Observation/"))

    try:
        with running(build_pusher(settings)):
            # Heart rate and SpO2 of every reading.
            wait_for(lambda: pushed() == 2 * len(sent), 60, "every Observation in the EHR")
    finally:
        ehr.stop()
    assert len(consumer.left_out) >= 2
