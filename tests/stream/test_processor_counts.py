"""The processor's counters survive the flushes that fail: what it counted reaches /metrics.

Each batch's transaction also carries the counts taken since the last one
(duplicates, dead letters, sink errors...). When that transaction failed,
those counts went with it, and a retry took only what was counted since. So
through a Redis outage the sink errors, counted on every failed attempt, were
taken and lost by every next attempt: /metrics showed none of the outage.
Redis here is the real one, refusing writes as it does when it is out of memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.kafka import ensure_topics
from healthsync.wiring import build_processor
from tests.conftest import wait_for
from tests.stream.test_archiver import produce
from tests.stream.test_offset_gaps import fresh_readings, running, stat, stored_ids


@pytest.fixture
def out_of_memory(redis: Redis) -> Iterator[Callable[[bool], None]]:
    """Switch Redis's refusal of writes on and off (maxmemory 1 byte, no eviction)."""
    before = {k: str(v) for k, v in redis.config_get("maxmemory*").items()}

    def refuse(on: bool) -> None:
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", "1" if on else before["maxmemory"])

    yield refuse
    redis.config_set("maxmemory", before["maxmemory"])
    redis.config_set("maxmemory-policy", before["maxmemory-policy"])


def test_counts_taken_by_a_failed_flush_reach_redis_with_a_later_one(
    settings: Settings, redis: Redis, out_of_memory: Callable[[bool], None]
) -> None:
    ensure_topics(settings.kafka)
    sent = fresh_readings(10)
    processor = build_processor(settings)
    with running(processor):
        out_of_memory(True)
        produce(settings, sent)
        wait_for(
            lambda: processor.stats.lifetime["sink_errors_total"] >= 3,
            what="the store to fail a few times",
        )
        out_of_memory(False)
        wait_for(lambda: stored_ids(redis, settings) == {r.reading_id for r in sent}, what="stored")

        def counted_in_redis() -> bool:
            return (
                stat(redis, settings, "processor", "sink_errors_total")
                == (processor.stats.lifetime["sink_errors_total"])
            )

        wait_for(counted_in_redis, what="every sink error counted in Redis")
    assert stat(redis, settings, "processor", "readings_processed_total") == len(sent)
