"""Redis clients as the settings ask for them: one server, or a Redis Cluster.

A cluster is named by ``HEALTHSYNC_REDIS_CLUSTER=true`` or a ``redis+cluster://``
(``rediss+cluster://`` for TLS) URL; the URL then names any one node, and the
client learns the others from it. TLS options are the same either way.

The stages type their client as :class:`redis.Redis`: redis-py's cluster
client offers the same commands for keys in one slot, pipelines, and
transactions within one hash slot, which is all the stages use on a cluster
(the key layout keeps each transaction in one slot: names.RedisKeys); reads of
keys in several slots go through :mod:`healthsync.store.multi`.
"""

from __future__ import annotations

from typing import cast

from redis import Redis, RedisCluster
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from healthsync.config import RedisSettings


def connect(settings: RedisSettings) -> Redis:
    """A client for the configured Redis or Redis Cluster."""
    options = settings.client_options()
    if settings.clustered:
        return cast("Redis", RedisCluster.from_url(settings.client_url, **options))
    return Redis.from_url(settings.client_url, **options)


def connect_async(settings: RedisSettings) -> AsyncRedis:
    """An asyncio client for the configured Redis or Redis Cluster."""
    options = settings.client_options()
    if settings.clustered:
        return cast("AsyncRedis", AsyncRedisCluster.from_url(settings.client_url, **options))
    return AsyncRedis.from_url(settings.client_url, **options)
