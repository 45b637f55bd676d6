"""One reader of the live event stream per API process, fanned out to every SSE client.

Each client reading Redis itself would decrypt every event once per client;
the feed reads, decodes and encodes it as an SSE frame once and hands the
same objects to every subscription. A subscription holds at most `limit` pending events: a client
that falls that far behind is cut off (``overflowed``) rather than holding
memory, and resumes from Redis with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from redis.exceptions import RedisError

from healthsync.api.sse import Outgoing
from healthsync.store.events import EventLog

log = logging.getLogger(__name__)

_READ_COUNT = 500
_BLOCK_MS = 1000
_RETRY_S = 1.0


class Subscription:
    """The events one client has not been sent yet, bounded by `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: deque[Outgoing] = deque()
        self.overflowed = False
        self.closed = False  # the API is stopping
        self._ready = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def offer(self, events: list[Outgoing]) -> None:
        if self.overflowed:
            return
        if len(self.pending) + len(events) > self.limit:
            self.overflowed = True
            self.pending.clear()
        else:
            self.pending.extend(events)
        self._ready.set()

    async def take(self, timeout: float) -> list[Outgoing]:
        """Everything pending, waiting up to `timeout` seconds for something."""
        if not self.pending and not self.overflowed and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        self._ready.clear()
        batch = list(self.pending)
        self.pending.clear()
        return batch


class EventFeed:
    """Reads `{prefix}:events` while anyone is subscribed, and offers each read to all."""

    def __init__(self, events: EventLog, client_buffer: int) -> None:
        self.events = events
        self.client_buffer = client_buffer
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def clients(self) -> int:
        return len(self._subscriptions)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self.client_buffer)
        self._subscriptions.add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-feed")
        return subscription

    def close(self) -> None:
        """End every client's stream: the API is stopping (each gets a last frame)."""
        for subscription in list(self._subscriptions):
            subscription.close()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        last = await self._start()
        while self._subscriptions:
            try:
                events, last = await self.events.after(last, _READ_COUNT, _BLOCK_MS)
            except RedisError as exc:
                log.warning("live event stream unreadable", extra={"error": str(exc)})
                await asyncio.sleep(_RETRY_S)
                continue
            if events:
                outgoing = [Outgoing.of(event) for event in events]
                for subscription in list(self._subscriptions):
                    subscription.offer(outgoing)

    async def _start(self) -> str:
        while True:
            try:
                return await self.events.last_id()
            except RedisError as exc:
                log.warning("live event stream unreadable", extra={"error": str(exc)})
                await asyncio.sleep(_RETRY_S)
