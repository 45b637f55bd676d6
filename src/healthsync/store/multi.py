"""Reads of many keys that work on a standalone Redis and on a Redis Cluster alike.

MGET is one command on a standalone Redis, but a Redis Cluster refuses it for
keys in different hash slots; redis-py's cluster client splits such a read by
slot (``mget_nonatomic``). The readers here pick whichever the client offers.
"""

from __future__ import annotations

from typing import Any, cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis


def get_many(client: Redis, keys: list[str]) -> list[bytes | None]:
    """The values of `keys`, in order (None where absent)."""
    if not keys:
        return []
    split = getattr(client, "mget_nonatomic", None)
    found: Any = split(keys) if split is not None else client.mget(keys)
    return cast("list[bytes | None]", found)


async def aget_many(client: AsyncRedis, keys: list[str]) -> list[bytes | None]:
    """The values of `keys`, in order (None where absent), from an asyncio client."""
    if not keys:
        return []
    split = getattr(client, "mget_nonatomic", None)
    found: Any = await (split(keys) if split is not None else client.mget(keys))
    return cast("list[bytes | None]", found)
