"""The steps are told every partition the processor owns, however the group hands them
out, and the clock ticks only once the processor has read what waited for it.

The consumer group rebalances cooperatively (`kafka.py`): when a second processor
joins, the first hears of the partition it gives up (on_revoke) and then of the
partitions added to it, which are none (on_assign with an empty list). The steps'
contract is the whole set they own: the engine ticks, and raises a device's offline
alert, only for the patients of the partitions it believes it owns.
"""

from __future__ import annotations

import time
from typing import cast

from confluent_kafka import TopicPartition
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.kafka import ensure_topics
from healthsync.security.codec import Codec
from healthsync.store.records import Records
from healthsync.stream.engine import AnomalyEngine
from healthsync.wiring import build_processor
from tests.conftest import wait_for
from tests.stream.test_archiver import produce
from tests.stream.test_offset_gaps import running


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


def _send(settings: Settings, seconds: float, sent: list[int]) -> None:
    """Three devices, a reading each every 0.5 s, for `seconds`."""
    end = time.time() + seconds
    while time.time() < end:
        now = time.time()
        sent[0] += 1
        produce(
            settings,
            [
                Reading(f"r-{i}-{sent[0]}", f"mon-r{i}", f"P-R{i}", now, now, {"heart_rate": 75.0})
                for i in range(3)
            ],
        )
        time.sleep(0.5)


def test_a_processor_restarted_behind_a_backlog_calls_no_device_offline(
    settings: Settings, redis: Redis
) -> None:
    """A short first batch after the start read as "caught up", and the tick then judged
    every device by the clock: each had been silent as long as the processor was down,
    its readings waiting in Kafka, and each got a device_offline alert at once."""
    settings.anomaly.offline_min_s = 3.0
    ensure_topics(settings.kafka)
    sent = [0]

    def all_stored() -> bool:
        return len(stored_ids_of(redis, settings)) == 3 * sent[0]

    with running(build_processor(settings)):
        _send(settings, 3.0, sent)
        wait_for(all_stored, what="the first processor to store the readings")
    _send(settings, 6.0, sent)  # the processor is down; the devices are not
    with running(build_processor(settings)):
        _send(settings, 3.0, sent)
        wait_for(all_stored, what="the second processor to catch up")
    records = Records(Codec.from_settings(settings))
    events = cast("list[tuple[bytes, dict[bytes, bytes]]]", redis.xrange(records.keys.events))
    opened = [
        data["kind"]
        for _id, fields in events
        for kind, _patient, data in [records.decode_event(fields)]
        if kind == "alert.opened"
    ]
    assert opened == []


def stored_ids_of(redis: Redis, settings: Settings) -> set[str]:
    keys = Codec.from_settings(settings).keys
    found = (cast("list[bytes]", redis.zrange(keys.seen(f"P-R{i}"), 0, -1)) for i in range(3))
    return {m.decode() for members in found for m in members}
