"""`healthsync ingest` as a process: the server, its housekeeping, readiness and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from redis.asyncio import Redis

from healthsync.config import Settings
from healthsync.ingest.assignments import DevicePatients
from healthsync.ingest.hold import Hold
from healthsync.ingest.publisher import Publisher
from healthsync.ingest.readiness import Readiness
from healthsync.ingest.server import IngestServer
from healthsync.metrics import StatsRecorder
from healthsync.redis_client import connect_async
from healthsync.security.codec import Codec
from healthsync.store.assignments import Assignments

log = logging.getLogger(__name__)


async def _flush_stats(server: IngestServer, redis: Redis | None) -> None:
    """Add this instance's counts to the shared totals in Redis."""
    # Several instances share the hash: each labels its gauges with its name.
    labels = (
        {"instance": server.settings.ingest.instance} if server.settings.ingest.instance else {}
    )
    server.stats.gauge("connections_open", len(server.connections), **labels)
    server.stats.gauge("inflight", server.inflight, **labels)
    if redis is None:
        return
    try:
        await server.stats.flush_async(redis)  # what fails is counted again with the next
    except Exception as exc:  # noqa: BLE001 - stats must never take ingest down
        log.warning("could not publish ingest stats", extra={"error": str(exc)})


async def _housekeeping(
    server: IngestServer, redis: Redis | None, stop: asyncio.Event, assigned: Assignments | None
) -> None:
    """Every second: close idle connections, re-read CRL and assignments, publish the counts."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        server.sweep_idle()
        server.refresh_revocations()
        await server.device_patients.refresh(assigned)
        await _flush_stats(server, redis)


async def serve(settings: Settings) -> None:
    """Run the ingest server until SIGTERM or SIGINT, then drain."""
    stats = StatsRecorder(settings.redis.keys, "ingest")
    publisher = Publisher(settings.kafka, settings.ingest.ack_timeout_s)
    codec = Codec.from_settings(settings)
    server = IngestServer(settings, publisher, stats, codec)
    server.device_patients = DevicePatients(
        settings.ingest.device_patients, from_api=settings.redis.url is not None
    )
    redis = None
    assigned = None
    if settings.redis.url:
        redis = connect_async(settings.redis)
        assigned = Assignments(redis, codec)
        await server.device_patients.refresh(assigned)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.ingest.hold_file is not None:
        Hold(server, publisher, settings.ingest.hold_file).install(loop)
    await server.start()
    tasks = [loop.create_task(_housekeeping(server, redis, stop, assigned))]
    readiness = None
    if settings.ingest.check_port is not None:
        readiness = Readiness(publisher, settings.kafka.vitals_topic)
        await readiness.start(settings.ingest.host, settings.ingest.check_port)
        tasks.append(loop.create_task(readiness.beat_forever(stop)))
    log.info("ingest listening", extra={"addresses": server.addresses})
    await stop.wait()
    log.info("ingest draining", extra={"inflight": server.inflight})
    if readiness is not None:
        readiness.draining = True
    await server.drain()
    for task in tasks:
        await task
    if readiness is not None:
        readiness.close()
    await _flush_stats(server, redis)  # what the drain answered counts too
    if redis is not None:
        await redis.aclose()
    log.info("ingest stopped")
