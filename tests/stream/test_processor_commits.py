"""The processor commits its offsets without waiting for them, and none is lost on a stop.

A commit under way when the processor stops would leave the group behind what
Redis holds: a restarted processor would read those batches again (the
seen-check makes that harmless, but it is work, and a long stop's worth of it).
Closing the consumer waits for the commits still under way.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from redis import Redis

from healthsync.config import Settings
from healthsync.kafka import client_config, ensure_topics, make_producer
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.wiring import build_processor
from tests.stream.test_offset_gaps import fresh_readings, stat, stored_ids


def committed(settings: Settings) -> dict[int, int]:
    """The processor group's committed offset per partition of the vitals topic."""
    topic, group = settings.kafka.vitals_topic, settings.processor.group_id
    wanted = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
    consumer = Consumer(client_config(settings.kafka, {}, {"group.id": group}))
    try:
        return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
    finally:
        consumer.close()


def test_a_stopped_processor_has_committed_every_batch_it_stored(
    settings: Settings, redis: Redis
) -> None:
    ensure_topics(settings.kafka)
    sent = fresh_readings(300)
    codec = Codec.from_settings(settings)
    producer = make_producer(settings.kafka)
    ends: dict[int, int] = {}
    made: dict[int, int] = {}

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        ends[message.partition()] = max(ends.get(message.partition(), 0), message.offset() + 1)

    processor = build_processor(settings)
    commit = processor._commit

    def commit_then_stop(offsets: dict[tuple[str, int], int]) -> None:
        # Stop the moment the last batch's commit is asked for: the consumer closes
        # with that commit under way.
        commit(offsets)
        made.update({partition: offset for (_topic, partition), offset in offsets.items()})
        if len(sent) == sum(made.values()) == sum(ends.values()):
            processor.stop()

    processor._commit = commit_then_stop  # type: ignore[method-assign]
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    try:
        # Sent while the processor runs, a few at a time, so it stores many small batches.
        for start in range(0, len(sent), 10):
            for reading in sent[start : start + 10]:
                key = codec.message_key(reading.patient_id)
                value = codec.seal_message(roles.VITALS, key, reading.to_json())
                producer.produce(settings.kafka.vitals_topic, value, key, on_delivery=delivered)
            producer.flush(30)
        thread.join(60)
        assert not thread.is_alive(), "the processor did not stop after its last commit"
    finally:
        processor.stop()
        thread.join(30)

    assert stored_ids(redis, settings) == {r.reading_id for r in sent}

    assert {p: o for p, o in committed(settings).items() if o >= 0} == ends
    assert stat(redis, settings, "processor", "readings_processed_total") == len(sent)
