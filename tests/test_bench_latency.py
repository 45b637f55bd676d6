"""The pipeline bench's latency watcher reads the live events the processor writes.

Its send-to-visible figures depend on it: a reading whose event it cannot read is
found only by the half-second poll of the oldest awaited ids, which adds about 250 ms
to each figure.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
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
            # Nothing awaited: the poll of the oldest awaited ids, whenever it is due, adds nothing.
            watcher = VisibilityWatcher(client, codec, {}, [])
            sink.write(Batch(readings))
            sink.flush()
            return await watcher._named()
        finally:
            await client.aclose()

    assert asyncio.run(named()) == {"P-1": "a2", "P-2": "b1"}


def test_the_watchers_poll_asks_the_oldest_awaited_ids_not_the_whole_backlog() -> None:
    """A pipeline that falls behind leaves many readings awaited; asking all of them every
    half second made the bench take CPU (and Redis time) from what it measures."""
    from pipeline_bench.latency import OLDEST_ASKED

    awaited = {f"r{i}": float(i) for i in range(1_000)}
    watcher = VisibilityWatcher(None, Codec(None), {"P-1": awaited, "P-2": {}}, [])  # type: ignore[arg-type]

    polled = watcher._to_ask({"P-1": None, "P-2": None})
    assert polled == [("P-1", [f"r{i}" for i in range(OLDEST_ASKED)])]
    # An event naming an awaited reading asks every id up to it, however many.
    assert watcher._to_ask({"P-1": "r300"}) == [("P-1", [f"r{i}" for i in range(301)])]
    # One naming a reading found already: nothing older is awaited, so the oldest few.
    assert watcher._to_ask({"P-1": "gone"}) == polled


def test_a_connection_that_will_not_close_does_not_lose_the_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real connection that hangs on close could not be made to on demand (it happened
    once, after a 10-minute soak), so a client whose close fails as redis-py's does then
    stands in for it here."""
    from redis.exceptions import TimeoutError as RedisTimeout

    from pipeline_bench.latency import _close

    class NoGoodbye:
        async def aclose(self) -> None:
            raise RedisTimeout("Timed out closing connection after 5.0")

    asyncio.run(_close(NoGoodbye()))  # type: ignore[arg-type]
    assert "figures kept" in capsys.readouterr().err
