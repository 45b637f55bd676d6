"""The pipeline bench's latency watcher reads the live events the processor writes.

Its send-to-visible figures depend on it: a reading whose event it cannot read is
found only by the half-second poll of every awaited id, which adds about 250 ms
to each figure.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from pipeline_bench.latency import VisibilityWatcher


def test_each_live_event_names_its_patient_and_newest_reading(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    sink = RedisLiveSink(
        redis, settings.redis, StatsRecorder(settings.redis.keys, "processor"), Records(codec)
    )
    now = time.time()
    sent = {"P-1": ["a1", "a2"], "P-2": ["b1"]}
    readings = [
        Reading(rid, f"dev-{patient}", patient, now - 3 + i, now, {"heart_rate": 70.0 + i})
        for patient, ids in sent.items()
        for i, rid in enumerate(ids)
    ]

    async def named() -> dict[str, str | None]:
        assert settings.redis.url
        client = AsyncRedis.from_url(settings.redis.url)
        try:
            # Nothing awaited: the poll of every awaited id, whenever it is due, adds nothing.
            watcher = VisibilityWatcher(client, codec, {}, [])
            sink.write(Batch(readings))
            sink.flush()
            return await watcher._named()
        finally:
            await client.aclose()

    assert asyncio.run(named()) == {"P-1": "a2", "P-2": "b1"}
