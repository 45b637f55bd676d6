"""What the processor reports in Redis: its counters and latency histogram."""

from __future__ import annotations

import socket
import time
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.config import Settings
from healthsync.names import RedisKeys
from pipeline_bench.driver import Device

_PROCESSOR_READY_TIMEOUT_S = 60.0


def counter(redis: Redis, keys: RedisKeys, component: str, name: str) -> int:
    return int(redis.hget(keys.stats(component), name) or 0)


def latency_histogram(redis: Redis, keys: RedisKeys) -> dict[str, float]:
    raw: dict[bytes, bytes] = redis.hgetall(keys.latency)  # type: ignore[assignment]
    return {k.decode(): float(v) for k, v in raw.items()}


def wait_for_processed(
    redis: Redis, keys: RedisKeys, target: int, timeout: float, poll: float = 0.25
) -> float | None:
    """Seconds until the processor's counter reached `target`; None if it did not in time."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if counter(redis, keys, "processor", "readings_processed_total") >= target:
            return time.perf_counter() - started
        time.sleep(poll)
    return None


def warm_up(settings: Settings, redis: Redis, device: Device) -> float:
    """Send one reading and wait for the processor to store it (its group join takes seconds)."""
    started = time.perf_counter()
    line, _ = device.lines(1)
    with socket.create_connection((settings.ingest.host, settings.ingest.port), 10) as sock:
        sock.sendall(line)
        reply = sock.makefile("rb").readline()
    if not reply.startswith(b"OK "):
        raise RuntimeError(f"ingest did not accept the warm-up reading: {reply!r}")
    if wait_for_processed(redis, settings.redis.keys, 1, _PROCESSOR_READY_TIMEOUT_S) is None:
        raise RuntimeError(f"processor stored nothing within {_PROCESSOR_READY_TIMEOUT_S:.0f} s")
    return time.perf_counter() - started


async def async_counter(redis: AsyncRedis, keys: RedisKeys) -> int:
    return int(await redis.hget(keys.stats("processor"), "readings_processed_total") or 0)


async def async_histogram(redis: AsyncRedis, keys: RedisKeys) -> dict[str, float]:
    raw: Any = await redis.hgetall(keys.latency)
    return {k.decode(): float(v) for k, v in raw.items()}
