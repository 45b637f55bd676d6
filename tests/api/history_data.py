"""History on both sides of Redis's retention, for the API's history tests.

Readings reach Redis through the processor's own sink (which trims what is
older than the retention, as in production) and the archive through the
archive writer; requests go to an app built from the same settings, in
process, over the real redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
from redis import Redis

from healthsync.api.app import create_app
from healthsync.config import Settings
from healthsync.domain.alerts import AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.fhir.observations import observations_for
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records

DAY_S = 86_400.0


def reading(settings: Settings, patient: str, seq: int, ts: float, **vitals: float) -> Reading:
    """A reading with a keyed id, as ingest makes it with encryption at rest on."""
    key = Codec.from_settings(settings).id_key
    return Reading(
        reading_id=reading_id_for("mon-h", seq, round(ts * 1000), key=key),
        device_id="mon-h",
        patient_id=patient,
        ts=ts,
        received_at=ts + 0.5,
        vitals=dict(vitals),
        seq=seq,
    )


def to_redis(
    settings: Settings, readings: Sequence[Reading], alerts: Sequence[AlertEvent] = ()
) -> None:
    """Store as the processor does: the live sink (history, trimmed) and the FHIR sink."""
    client = Redis.from_url(str(settings.redis.url))
    try:
        codec = Codec.from_settings(settings)
        batch = Batch(list(readings), alert_events=list(alerts))
        batch.observations += [(r.patient_id, o) for r in readings for o in observations_for(r)]
        stats = StatsRecorder(settings.redis.keys, "processor")
        live = RedisLiveSink(client, settings.redis, stats, Records(codec))
        fhir = RedisFhirSink(client, settings.redis, Records(codec))
        for sink in (live, fhir):
            sink.write(batch)
            sink.flush()
    finally:
        client.close()


def to_archive(settings: Settings, readings: Sequence[Reading], first_offset: int = 0) -> list[str]:
    """One archived batch, through the archive writer; the keys of its objects."""
    span = Span(0, first_offset, first_offset + len(readings) - 1)
    return Archive.from_settings(settings).writer().write_readings(span, readings)


def ask(settings: Settings, token: str, *paths: str) -> list[httpx.Response]:
    """GET each path in turn from one app (one archive footer cache), as a client would."""

    async def run() -> list[httpx.Response]:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            return [await c.get(path) for path in paths]

    return asyncio.run(run())


def follow(settings: Settings, token: str, path: str) -> list[dict[str, Any]]:
    """Every page of a /vitals query, following next_cursor; the pages' answers."""
    pages: list[dict[str, Any]] = []

    async def run() -> None:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            answer = await c.get(path)
            while True:
                assert answer.status_code == 200, answer.text
                pages.append(answer.json())
                cursor = pages[-1]["next_cursor"]
                if cursor is None:
                    return
                answer = await c.get(f"{path}&cursor={cursor}")

    asyncio.run(run())
    return pages


def follow_fhir(
    settings: Settings, token: str, path: str, scan_limit: int | None = None
) -> list[dict[str, Any]]:
    """Every searchset Bundle of a FHIR search, following its `next` links (with the live
    reader scanning at most `scan_limit` resources a page, if given)."""
    bundles: list[dict[str, Any]] = []

    async def run() -> None:
        app = create_app(settings)
        if scan_limit is not None:
            app.state.services.fhir.max_scan = scan_limit
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            following: str | None = path
            while following is not None:
                answer = await c.get(following)
                assert answer.status_code == 200, answer.text
                bundles.append(answer.json())
                links = {link["relation"]: link["url"] for link in bundles[-1]["link"]}
                following = None
                if "next" in links:
                    following = httpx.URL(links["next"]).raw_path.decode()

    asyncio.run(run())
    return bundles


def alerts_to_archive(settings: Settings, events: Sequence[AlertEvent]) -> list[str]:
    """One archived batch of alert events, through the archive writer."""
    span = Span(1, 0, len(events) - 1)
    pairs = [(event.type, event.alert) for event in events]
    return Archive.from_settings(settings).writer().write_alerts(span, pairs)
