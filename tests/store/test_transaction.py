"""A batch's MULTI/EXEC (store.transaction) against a real redis-server: the outcomes
redis-py's Pipeline.execute() gives, with the connection back in the pool, in step."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError

from healthsync.config import Settings
from healthsync.store.transaction import execute_transaction


@pytest.fixture
def key(settings: Settings) -> str:
    return f"{settings.redis.prefix}:tx"


def _in_use(client: Redis) -> int:
    return len(client.connection_pool._in_use_connections)


def _assert_pool_in_step(client: Redis, key: str) -> None:
    """No connection was kept, and the next transaction on the pool works."""
    assert _in_use(client) == 0
    after: Any = client.pipeline(transaction=True)
    after.set(f"{key}:next", "2")
    execute_transaction(after)
    assert client.get(f"{key}:next") == b"2"


def test_every_write_of_the_transaction_lands_and_the_connection_goes_back(
    redis: Redis, key: str
) -> None:
    pipe: Any = redis.pipeline(transaction=True)
    pipe.zadd(f"{key}:history", {b"sealed-1": b"1764888000.5", b"sealed-2": 1764888001.25})
    pipe.hset(f"{key}:latest", mapping={"heart_rate": b"\x00sealed"})
    pipe.xadd(f"{key}:events", {"type": "vitals", "event": b"x"}, maxlen=100, approximate=True)
    pipe.hincrby(f"{key}:processed", "readings_processed_total", 2)
    pipe.execute_command("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", 1, f"{key}:s", "v")

    execute_transaction(pipe)

    assert redis.zrange(f"{key}:history", 0, -1, withscores=True) == [
        (b"sealed-1", 1764888000.5),
        (b"sealed-2", 1764888001.25),
    ]
    assert redis.hgetall(f"{key}:latest") == {b"heart_rate": b"\x00sealed"}
    assert redis.xlen(f"{key}:events") == 1
    assert redis.hget(f"{key}:processed", "readings_processed_total") == b"2"
    assert redis.get(f"{key}:s") == b"v"
    assert pipe.command_stack == []
    assert _in_use(redis) == 0


def test_a_watched_key_that_changed_fails_it_and_nothing_is_written(redis: Redis, key: str) -> None:
    pipe: Any = redis.pipeline(transaction=True)
    pipe.watch(f"{key}:offsets")
    redis.set(f"{key}:offsets", "moved")  # another processor, between WATCH and EXEC
    pipe.multi()
    pipe.set(f"{key}:a", "1")
    pipe.zadd(f"{key}:z", {"m": 1})

    with pytest.raises(WatchError):
        execute_transaction(pipe)

    assert redis.exists(f"{key}:a", f"{key}:z") == 0
    _assert_pool_in_step(redis, key)


def test_a_watch_that_held_lets_the_transaction_through(redis: Redis, key: str) -> None:
    redis.set(f"{key}:offsets", "7")
    pipe: Any = redis.pipeline(transaction=True)
    pipe.watch(f"{key}:offsets")
    assert pipe.get(f"{key}:offsets") == b"7"  # read under the WATCH, as the live sink does
    pipe.multi()
    pipe.set(f"{key}:offsets", "8")

    execute_transaction(pipe)

    assert redis.get(f"{key}:offsets") == b"8"
    assert not pipe.watching
    assert _in_use(redis) == 0


def test_a_command_redis_refuses_when_run_raises_its_error(redis: Redis, key: str) -> None:
    redis.set(f"{key}:string", "not a hash")
    pipe: Any = redis.pipeline(transaction=True)
    pipe.set(f"{key}:before", "1")
    pipe.hset(f"{key}:string", "field", "value")  # WRONGTYPE, found only when EXEC runs it
    pipe.set(f"{key}:after", "1")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        execute_transaction(pipe)

    # As with redis-py: Redis ran the others (a transaction does not roll back).
    assert redis.get(f"{key}:before") == b"1"
    assert redis.get(f"{key}:after") == b"1"
    assert redis.ping()
    assert _in_use(redis) == 0


def test_a_command_redis_refuses_when_queued_aborts_the_whole_transaction(
    redis: Redis, key: str
) -> None:
    pipe: Any = redis.pipeline(transaction=True)
    pipe.set(f"{key}:before", "1")
    pipe.execute_command("ZADD", f"{key}:z")  # wrong number of arguments
    pipe.set(f"{key}:after", "1")

    with pytest.raises(ResponseError, match="wrong number of arguments"):
        execute_transaction(pipe)

    assert redis.exists(f"{key}:before", f"{key}:after") == 0
    assert redis.ping()
    assert _in_use(redis) == 0


def test_a_connection_killed_under_it_is_dropped_not_reused(redis: Redis, key: str) -> None:
    pipe: Any = redis.pipeline(transaction=True)
    pipe.watch(f"{key}:offsets")  # pins the pipeline's connection
    victim = pipe.execute_command("CLIENT", "ID")
    pipe.multi()
    pipe.set(f"{key}:a", "1")
    redis.client_kill_filter(_id=victim)

    with pytest.raises((RedisConnectionError, WatchError)):
        execute_transaction(pipe)

    assert redis.exists(f"{key}:a") == 0
    _assert_pool_in_step(redis, key)


def test_a_pipeline_that_is_not_a_transaction_is_run_by_redis_py(redis: Redis, key: str) -> None:
    pipe: Any = redis.pipeline(transaction=False)
    pipe.set(f"{key}:plain", "1")
    execute_transaction(pipe)
    assert redis.get(f"{key}:plain") == b"1"
    assert pipe.command_stack == []
