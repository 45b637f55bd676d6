"""The steps are told every partition the processor owns, however the group hands them out.

The consumer group rebalances cooperatively (`kafka.py`): when a second processor
joins, the first hears of the partition it gives up (on_revoke) and then of the
partitions added to it, which are none (on_assign with an empty list). The steps'
contract is the whole set they own: the engine ticks, and raises a device's offline
alert, only for the patients of the partitions it believes it owns.
"""

from __future__ import annotations

from confluent_kafka import TopicPartition
from redis import Redis

from healthsync.config import Settings
from healthsync.stream.engine import AnomalyEngine
from healthsync.wiring import build_processor


def test_a_rebalance_that_adds_nothing_leaves_the_steps_their_partitions(
    settings: Settings, redis: Redis
) -> None:
    processor = build_processor(settings)
    try:
        [engine] = [s for s in processor.steps if isinstance(s, AnomalyEngine)]
        topic = settings.kafka.vitals_topic
        parts = [TopicPartition(topic, p) for p in range(3)]
        processor._on_assign(processor.consumer, parts)
        assert engine.owned == {0, 1, 2}
        # A second processor joins: partition 0 goes to it, nothing is added here.
        processor._on_revoke(processor.consumer, parts[:1])
        processor._on_assign(processor.consumer, [])
        assert engine.owned == {1, 2}
        # It leaves again: partition 0 comes back.
        processor._on_assign(processor.consumer, parts[:1])
        assert engine.owned == {0, 1, 2}
    finally:
        processor.consumer.close()
