"""``GET /v1/stream``: the live event stream as Server-Sent Events, for the dashboard.

The caller authenticates with the ``Authorization`` header like on every other
route; browsers read the stream with ``fetch`` (``EventSource`` cannot send
headers), so no credential or patient id ever travels in a URL.

Frames: ``hello`` first (its id is where the stream starts), then one frame per
event (``vitals``, ``alert.opened``, ``alert.escalated``, ``alert.resolved``,
``alert.acknowledged``, ``artefact``), each with its Redis entry id as the SSE
``id``, and a comment line every ``api.stream_heartbeat_s`` when quiet. A
``Last-Event-ID`` header resumes after that entry; ``reset`` says the entries
after it are gone and the client must reload its picture. A client that falls
``api.stream_client_buffer`` events behind gets ``overflow`` and the stream
ends: reconnecting with its last id catches up from Redis. When the API is
stopping, every stream ends with an ``error`` frame saying so (see
:func:`healthsync.commands.api.cmd_api`).

Audit: every patient whose data goes out is named in a ``stream`` record
written before that data is sent, once per connection and audit window.

The credential is checked again at most every ``RECHECK_S`` while the stream
runs: once a JWT expires (with the configured leeway), an API key is revoked or
the caller's rights change, an ``error`` frame says so and the stream ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.responses import StreamingResponse

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.feed import EventFeed, Subscription
from healthsync.api.sse import HEARTBEAT, Outgoing, frame
from healthsync.config import Settings
from healthsync.store.events import EVENT_ID, event_key

# The stream carries vitals (Observations), NEWS2 (RiskAssessment) and alerts (Communication, Flag).
STREAM_TYPES = ("Observation", "RiskAssessment", "Communication", "Flag")
# A patient streamed to a connection is named again in the audit log after this long.
AUDIT_WINDOW_S = 300.0
_CATCH_UP_COUNT = 500
# How often a stream checks that its credential is still accepted.
RECHECK_S = 1.0
_REFUSED = frame("error", {"message": "the credentials expired or were revoked; sign in again"})


class AuditWindow:
    """Writes a `stream` audit record for the patients not named in the current window."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.named: set[str] = set()
        self.started = time.monotonic()

    async def before_sending(self, events: list[Outgoing]) -> None:
        if time.monotonic() - self.started > AUDIT_WINDOW_S:
            self.named.clear()
            self.started = time.monotonic()
        new = {e.event.patient_id for e in events} - self.named
        if new:
            await self.access.record("stream", new)
            self.named |= new


class Stream:
    """One client's connection: catch up from Redis, then follow the feed."""

    def __init__(self, feed: EventFeed, access: Access, hello: dict[str, float]) -> None:
        self.feed = feed
        self.audit = AuditWindow(access)
        self.hello = hello
        self.heartbeat_s = hello["heartbeat_s"]
        self.sent = (0, 0)
        self.access = access
        self.checked = time.monotonic()

    async def still_valid(self) -> bool:
        if time.monotonic() - self.checked < RECHECK_S:
            return True
        self.checked = time.monotonic()
        return await self.access.still_valid()

    async def frames(self, start: str, reset: bool) -> AsyncIterator[bytes]:
        subscription = self.feed.subscribe()
        # The shared reader may hand over entries it read before this client came: only
        # those after the start are this stream's.
        self.sent = event_key(start)
        try:
            yield frame("hello", self.hello, start)
            if reset:
                yield frame("reset", {"reason": "the events after Last-Event-ID are gone"})
            # What was missed since Last-Event-ID, then what the feed brings; the overlap
            # of the two is dropped by id.
            cursor = start
            while True:
                if not await self.still_valid():
                    yield _REFUSED
                    return
                events, after = await self.feed.events.after(cursor, _CATCH_UP_COUNT)
                if after == cursor:
                    break
                cursor = after
                if events:
                    yield await self._send([Outgoing.of(e) for e in events])
            async for chunk in self._follow(subscription):
                yield chunk
        except HTTPException:
            # The audit log cannot be written: no more data leaves, say why and end.
            yield frame("error", {"message": "the audit log cannot be written"})
        finally:
            self.feed.unsubscribe(subscription)

    async def _follow(self, subscription: Subscription) -> AsyncIterator[bytes]:
        while True:
            events = await subscription.take(self.heartbeat_s)
            if subscription.overflowed:
                yield frame("overflow", {"reason": "too far behind; reconnect with Last-Event-ID"})
                return
            if not await self.still_valid():
                yield _REFUSED
                return
            if subscription.closed:
                yield frame("error", {"message": "the API is stopping; reconnect shortly"})
                return
            fresh = [e for e in events if event_key(e.event.id) > self.sent]
            yield await self._send(fresh) if fresh else HEARTBEAT

    async def _send(self, events: list[Outgoing]) -> bytes:
        await self.audit.before_sending(events)
        self.sent = max(self.sent, event_key(events[-1].event.id))
        return b"".join(e.frame for e in events)


def stream_router(feed: EventFeed, settings: Settings) -> APIRouter:
    # What the page needs to show values as the scoring sees them: stale after this long.
    hello = {
        "heartbeat_s": settings.api.stream_heartbeat_s,
        "freshness_s": settings.processor.news2_freshness_s,
    }
    router = APIRouter(tags=["stream"])

    @router.get(
        "/v1/stream",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE frames"}},
    )
    async def stream(
        access: Annotated[Access, Depends(auth.reads(*STREAM_TYPES))],
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Live vitals, NEWS2 and alert changes of every patient, as Server-Sent Events."""
        if last_event_id is not None and not EVENT_ID.match(last_event_id):
            raise HTTPException(400, "Last-Event-ID must be a stream entry id such as 1712-0")
        events = feed.events
        newest = await events.last_id()
        start, reset = newest, False
        if last_event_id is not None:
            first = await events.first_id()
            gone = first is not None and event_key(last_event_id) < event_key(first)
            ahead = event_key(last_event_id) > event_key(newest)
            start, reset = (newest, True) if gone or ahead else (last_event_id, False)
        # Opening the stream is audited even before any patient's data flows.
        await access.record("stream", [])
        connection = Stream(feed, access, hello)
        return StreamingResponse(
            connection.frames(start, reset),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router
