"""The store lacks readings that Kafka no longer holds: the partition flows on.

Redis may come back empty, or from an old backup, on a Kafka whose retention
deleted a partition's first records meanwhile. The processor then sought back
to where the store's data ends; the broker answered from the partition's log
start, beyond it; the live store found the batch starting past its record again,
and the processor sought back again, for good: nothing more of the partition
was ever stored.

The embedded broker keeps every record (it has no retention, and a DeleteRecords
request makes it exit), so here the consumer is the real one with one change: it
reports a log start offset and never hands over a record before it, as a broker
whose retention deleted those records does. Everything else is real: the broker,
Redis, and the processor as `healthsync process` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from redis import Redis

from healthsync.config import Settings
from healthsync.kafka import ensure_topics
from healthsync.stream.processor import Processor
from tests.conftest import wait_for
from tests.stream.test_archiver import produce
from tests.stream.test_offset_gaps import fresh_readings, run_processor, stat, stored_ids

__all__ = ["run_processor"]  # a fixture, used by name

# Where retention left the partition's log to start.
LOG_START = 7


class RetainedConsumer(Consumer):
    """A real consumer on a partition whose records before LOG_START were deleted."""

    def consume(self, *args: Any, **kwargs: Any) -> list[Message]:
        return [
            m
            for m in super().consume(*args, **kwargs)
            if m.error() is not None or (m.offset() or 0) >= LOG_START
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, *args: Any, **kwargs: Any
    ) -> tuple[int, int]:
        low, high = super().get_watermark_offsets(partition, *args, **kwargs)
        return max(low, LOG_START), high


def test_readings_kafka_no_longer_holds_are_counted_and_the_rest_stored(
    settings: Settings, redis: Redis, run_processor: Callable[[type[Consumer]], Processor]
) -> None:
    sent = fresh_readings(30)
    ensure_topics(settings.kafka)
    produce(settings, sent, partition=0)  # offsets 0-29, in order
    run_processor(RetainedConsumer)

    kept = {r.reading_id for r in sent[LOG_START:]}
    wait_for(lambda: stored_ids(redis, settings) == kept, what="the readings Kafka still holds")
    wait_for(
        lambda: stat(redis, settings, "processor", "offsets_expired_total") == LOG_START,
        what="the readings lost to retention counted",
    )
    assert stat(redis, settings, "processor", "store_replays_total") == 1
