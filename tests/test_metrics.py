"""Pipeline counters: what a failed flush to Redis counted is not lost."""

from __future__ import annotations

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from healthsync.config import Settings
from healthsync.metrics import StatsRecorder
from healthsync.stack.ports import free_port


def test_counts_of_a_failed_flush_go_with_the_next(settings: Settings, redis: Redis) -> None:
    keys = settings.redis.keys
    stats = StatsRecorder(keys, "archiver")
    stats.inc("messages_archived_total", 5)
    stats.gauge("consumer_lag", 40, partition="0")
    stats.observe_latencies([0.02, 0.03])
    away = Redis(port=free_port("127.0.0.1"), socket_connect_timeout=1)
    with pytest.raises(RedisConnectionError):
        stats.flush(away)  # Redis is away
    stats.inc("messages_archived_total", 2)
    stats.gauge("consumer_lag", 3, partition="0")  # newer than the one that failed
    stats.flush(redis)
    assert redis.hgetall(keys.stats("archiver")) == {
        b"messages_archived_total": b"7",
        b"consumer_lag|partition=0": b"3",
    }
    assert redis.hget(keys.latency, "count") == b"2"
    stats.flush(redis)  # nothing new: nothing added twice
    assert redis.hget(keys.stats("archiver"), "messages_archived_total") == b"7"
