"""A new stream sends nothing from before where it starts, whatever the shared reader holds.

The API reads the live event stream once and hands what it reads to every
client (api/feed.py). A client that connects while that reader has entries
in hand, read but not yet handed out, gets them too: they are older than the
client's start, which its hello frame names. Here the pieces run in-process
over a real redis-server; the one stand-in is the request's `Access` (its
audit and credential checks), which this ordering does not touch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.api.auth import Access
from healthsync.api.feed import EventFeed
from healthsync.api.routes.stream import Stream
from healthsync.api.sse import HEARTBEAT
from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.events import EventLog
from healthsync.store.records import Records
from tests.api.history_data import reading, to_redis
from tests.conftest import clear_prefix, make_settings

HELLO = {"heartbeat_s": 0.5, "freshness_s": 300.0}


class Allowed:
    async def record(self, action: str, patients: object) -> None:
        pass

    async def still_valid(self) -> bool:
        return True


def _newest(settings: Settings) -> str:
    client = Redis.from_url(str(settings.redis.url))
    try:
        rows = cast(
            "list[tuple[bytes, object]]", client.xrevrange(settings.redis.keys.events, count=1)
        )
        return rows[0][0].decode()
    finally:
        client.close()


def _open(
    streams: list[AsyncGenerator[bytes]], feed: EventFeed, access: Access, start: str
) -> AsyncGenerator[bytes]:
    opened = cast("AsyncGenerator[bytes]", Stream(feed, access, HELLO).frames(start, False))
    streams.append(opened)
    return opened


def test_a_stream_opened_while_the_shared_reader_is_behind_sends_nothing_older(
    broker: Service, redis_server: Service
) -> None:
    settings = make_settings(broker, redis_server)
    access = cast("Access", Allowed())

    async def run() -> tuple[str, bytes]:
        client = AsyncRedis.from_url(str(settings.redis.url))
        feed = EventFeed(EventLog(client, Records(Codec.from_settings(settings))), 100)
        streams: list[AsyncGenerator[bytes]] = []
        try:
            to_redis(settings, [reading(settings, "PS-1", 1, 1_790_000_000.0, heart_rate=70)])
            earlier = _open(streams, feed, access, _newest(settings))
            await anext(earlier)  # its hello: the shared reader starts, waiting on Redis
            await asyncio.sleep(0.3)
            # New entries, not yet handed out; a client connects at the newest of them.
            to_redis(settings, [reading(settings, "PS-1", 2, 1_790_000_001.0, heart_rate=71)])
            start = _newest(settings)
            later = _open(streams, feed, access, start)
            await anext(later)
            sent = await asyncio.wait_for(anext(later), 5)
            # The shared reader did read it after the first stream began: that one got it.
            first_sent = await asyncio.wait_for(anext(earlier), 5)
            assert f"id: {start}\n".encode() in first_sent, first_sent
            return start, sent
        finally:
            for opened in streams:
                await opened.aclose()
            await client.aclose()
            cleaner = Redis.from_url(str(settings.redis.url))
            clear_prefix(cleaner, settings.redis.prefix)
            cleaner.close()

    start, sent = asyncio.run(run())
    assert sent == HEARTBEAT, f"a stream starting at {start} was sent {sent!r}"
