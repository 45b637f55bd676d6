"""A patient's latest values: a reading that arrives late never replaces a newer one.

Readings of a patient can arrive out of order across batches (a device resends
what it was refused, a monitor catches up after a network fault). The API's
current vitals must stay the newest measured, field by field.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.security.codec import Codec
from healthsync.store.latest import STAMP
from healthsync.store.queries import LiveReader
from healthsync.store.records import Records

# The steps and sinks as the processor wires them.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from churn import Stages


def reading(n: int, at: float, **vitals: float) -> Reading:
    return Reading(f"{n:024x}", "mon-1", "P-1", at, at, vitals)


def current_vitals(settings: Settings, codec: Codec) -> dict[str, Any]:
    """What the API shows as the patient's current vitals: value and reading, per field."""

    async def read() -> dict[str, Any] | None:
        client = aioredis.Redis.from_url(str(settings.redis.url))
        try:
            return await LiveReader(client, Records(codec)).latest("P-1")
        finally:
            await client.aclose()

    latest = asyncio.run(read())
    assert latest is not None
    return {name: (v["value"], int(v["reading_id"], 16)) for name, v in latest.items()}


def test_a_reading_that_arrives_late_leaves_the_newer_values_current(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    stages, now = Stages(settings, redis, codec), time.time()
    stages.run([reading(2, now, heart_rate=80.0, spo2=97.0)])
    # Measured 20 s earlier, arriving in the next batch; it alone has a temperature.
    stages.run([reading(1, now - 20, heart_rate=60.0, spo2=91.0, temp=37.0)])

    assert current_vitals(settings, codec) == {
        "heart_rate": (80.0, 2),
        "spo2": (97.0, 2),
        "temp": (37.0, 1),
    }, "a late reading replaced newer values, or its own new field was lost"

    # A newer reading still replaces them, and a replayed batch changes nothing.
    stages.run([reading(3, now + 5, heart_rate=82.0)])
    stages.run([reading(1, now - 20, heart_rate=60.0, spo2=91.0, temp=37.0)])
    assert current_vitals(settings, codec) == {
        "heart_rate": (82.0, 3),
        "spo2": (97.0, 2),
        "temp": (37.0, 1),
    }


def test_values_stored_before_their_times_were_kept_take_the_next_reading(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    stages, now = Stages(settings, redis, codec), time.time()
    stages.run([reading(2, now, heart_rate=80.0)])
    key = codec.keys.latest("P-1")
    stamps = [name for name in cast("list[bytes]", redis.hkeys(key)) if name.startswith(STAMP)]
    assert stamps, "no measurement time kept beside the values"
    redis.hdel(key, *stamps)  # as an earlier version stored them

    stages.run([reading(1, now - 20, heart_rate=60.0)])
    assert current_vitals(settings, codec) == {"heart_rate": (60.0, 1)}
    stages.run([reading(3, now - 30, heart_rate=50.0)])
    assert current_vitals(settings, codec) == {"heart_rate": (60.0, 1)}, "not stamped since"
