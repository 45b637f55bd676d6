"""Phase 3: end-to-end latency at a fixed, paced offered rate.

The latency watcher (:class:`VisibilityWatcher`) finds when each reading a
device sent becomes visible in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError

from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.store.records import Records
from pipeline_bench.driver import Device, Tally, close_links, drain_replies, merge, open_links
from pipeline_bench.figures import percentile, rate, say
from pipeline_bench.pacing import Awaited, send_paced
from pipeline_bench.redis_stats import async_counter, async_histogram
from pipeline_bench.usage import Usage, UsageMeter

VISIBLE_TIMEOUT_S = 15.0
_FULL_POLL_INTERVAL_S = 0.5
# Awaited ids asked per patient where no event names one of them (the half-second poll,
# or an event naming a reading found already): the oldest, since a device's readings are
# stored in order. Asking every awaited id made the watcher's own work grow with the
# backlog when the pipeline fell behind (at 10,000/s offered, 60% of the bench process
# packing ZMSCOREs of tens of thousands of ids, and Redis answering them), which took CPU
# from the pipeline it measures.
OLDEST_ASKED = 64


@dataclass
class LatencyResult:
    offered_rate: float
    duration: float
    warmup: float
    tally: Tally
    # Device send -> reading in the seen set, for readings sent after the warm-up.
    visible: list[float]
    # p50 of `visible` over each third of the measured window, in send order.
    trend: list[float]
    # (seconds from the start of the counted window to the send, latency) per reading.
    timeline: list[tuple[float, float]]
    not_visible: int
    achieved_rate: float
    histogram: dict[str, float]
    # Growth of the processor's counter over the sending window, per second. Readings
    # still on their way when sending stops are not in it, so it falls short of the
    # offered rate by about (latency / duration) even when the pipeline keeps up.
    processed_rate: float
    # Readings that became visible per second from a sixth of the window to the end of
    # sending, counted by when they became visible: the offered rate while the pipeline
    # keeps up, and what it drains while a backlog grows.
    steady_rate: float
    # How long after sending stopped the last reading became visible.
    last_visible_after: float
    usage: Usage


class VisibilityWatcher:
    """Finds when each sent reading becomes visible in its patient's seen set.

    The processor writes a batch (seen set, latest, history and its events) in
    one MULTI/EXEC, so an event on the live stream means that patient's readings
    of the batch are readable. Each event wakes a ZMSCORE of the patient's
    awaited ids up to the reading the event names (a device's readings are sent,
    and normally stored, in order); every 0.5 s each patient's `OLDEST_ASKED`
    oldest awaited ids are asked, so a reading whose event was missed is still
    found, only later (one stored out of order once it is among them). A
    reading's visible time is when the ZMSCORE reply arrives: an upper bound,
    late by about one Redis round trip.

    `waiting` maps patient -> reading id -> send time; a reading found is moved
    from it to `found` as (send time, latency).
    """

    def __init__(
        self,
        redis: AsyncRedis,
        codec: Codec,
        waiting: dict[str, dict[str, float]],
        found: list[tuple[float, float]],
    ) -> None:
        self.redis = redis
        self.records = Records(codec)
        self.keys = codec.keys
        self.waiting = waiting
        self.found = found
        self.last_id: bytes | str = "0-0"
        self.last_full = time.perf_counter()

    async def run(self, sending_done: asyncio.Event) -> None:
        """Until every reading was found, or `VISIBLE_TIMEOUT_S` after sending is done."""
        newest: Any = await self.redis.xrevrange(self.keys.events, count=1)
        if newest:
            self.last_id = newest[0][0]
        self.last_full = time.perf_counter()
        deadline: float | None = None
        while True:
            if sending_done.is_set():
                if not any(self.waiting.values()):
                    return
                deadline = deadline or time.perf_counter() + VISIBLE_TIMEOUT_S
                if time.perf_counter() > deadline:
                    return
            asked = self._to_ask(await self._named())
            if asked:
                await self._ask(asked)

    async def _named(self) -> dict[str, str | None]:
        """Patient -> newest reading id named by an event (None: ask its oldest awaited ids)."""
        stream: Any = {self.keys.events: self.last_id}
        reply: Any = await self.redis.xread(stream, count=10_000, block=100)
        named: dict[str, str | None] = {}
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                kind, patient, data = self.records.decode_event(fields)
                named[patient] = _event_reading_id(kind, data)
        now = time.perf_counter()
        if not reply or now - self.last_full > _FULL_POLL_INTERVAL_S:
            named.update(dict.fromkeys(self.waiting))
            self.last_full = now
        return named

    def _to_ask(self, named: dict[str, str | None]) -> list[tuple[str, list[str]]]:
        """Per patient, the awaited ids up to the one an event named, else the oldest few."""
        asked = []
        for patient, rid in named.items():
            pending = self.waiting.get(patient)
            if not pending:
                continue
            if rid is not None and rid in pending:
                ids = []
                for awaited in pending:
                    ids.append(awaited)
                    if awaited == rid:
                        break
            else:
                ids = list(itertools.islice(pending, OLDEST_ASKED))
            asked.append((patient, ids))
        return asked

    async def _ask(self, asked: list[tuple[str, list[str]]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for patient, ids in asked:
                pipe.zmscore(self.keys.seen(patient), ids)
            scores = await pipe.execute()
        now = time.perf_counter()
        for (patient, ids), patient_scores in zip(asked, scores, strict=True):
            pending = self.waiting[patient]
            for rid, score in zip(ids, patient_scores, strict=True):
                if score is not None:
                    sent_at = pending.pop(rid)
                    self.found.append((sent_at, now - sent_at))


def _event_reading_id(kind: str, data: Any) -> str | None:
    """The reading id in a vitals event (`data` maps each vital to its latest entry)."""
    if kind != "vitals":
        return None
    try:
        return str(next(iter(data.values()))["reading_id"])
    except (StopIteration, KeyError, TypeError, AttributeError):
        return None


async def _close(redis: AsyncRedis) -> None:
    """Close the watcher's client. The figures are in by then: a connection that does not
    say goodbye in time (once, after a 10-minute soak with three broker recycles, one
    took over 5 s) is reported, not allowed to throw the whole run's report away."""
    try:
        await redis.aclose()
    except (RedisError, OSError) as exc:
        say(f"closing the latency watcher's Redis connection failed ({exc}); figures kept")


async def latency_phase(
    settings: Settings, devices: list[Device], offered: float, duration: float, warmup: float
) -> LatencyResult:
    keys = settings.redis.keys
    redis = AsyncRedis.from_url(str(settings.redis.url), **settings.redis.client_options())
    links = await open_links(devices, settings.ingest.host, settings.ingest.port)
    watcher: asyncio.Task[None] | None = None
    try:
        hist_before = await async_histogram(redis, keys)
        tallies = [Tally(record_ack=False) for _ in links]
        for link, tally in zip(links, tallies, strict=True):
            link.use(tally)
        found: list[tuple[float, float]] = []
        sending_done = asyncio.Event()
        codec = Codec.from_settings(settings)
        # Ids for every reading each device can send in time, and a few more.
        awaited = Awaited(devices, math.ceil(offered / len(links) * duration) + 2, codec.id_key)
        visibility = VisibilityWatcher(redis, codec, awaited.waiting, found)
        watcher = asyncio.create_task(visibility.run(sending_done))
        start = time.perf_counter() + 0.05
        stop_at = start + duration

        def count_acks() -> None:
            for tally in tallies:
                tally.record_ack = True

        asyncio.get_running_loop().call_later(start + warmup - time.perf_counter(), count_acks)
        processed_before = await async_counter(redis, keys)
        meter = UsageMeter()
        await send_paced(links, offered, start, stop_at, awaited.note_sent)
        sent_s = time.perf_counter() - start
        usage = meter.stop()
        processed_rate = rate(await async_counter(redis, keys) - processed_before, sent_s)
        await drain_replies(links)
        sending_done.set()
        await watcher
        not_visible = awaited.left
        # The processor publishes its stats with the next batch or within ~1 s when idle.
        await asyncio.sleep(2.0)
        hist_after = await async_histogram(redis, keys)
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await close_links(links)
        await _close(redis)
    tally = merge(tallies)
    measured_from = start + warmup
    steady_from = start + duration / 6
    steady = sum(1 for sent_at, latency in found if steady_from <= sent_at + latency <= stop_at)
    thirds: list[list[float]] = [[], [], []]
    span = max(stop_at - measured_from, 1e-9)
    for sent_at, latency in found:
        if sent_at >= measured_from:
            thirds[min(2, int(3 * (sent_at - measured_from) / span))].append(latency)
    return LatencyResult(
        offered_rate=offered,
        duration=duration,
        warmup=warmup,
        tally=tally,
        visible=[latency for sent_at, latency in found if sent_at >= measured_from],
        trend=[percentile(sorted(part), 0.5) for part in thirds],
        timeline=[(at - measured_from, lat) for at, lat in found if at >= measured_from],
        processed_rate=processed_rate,
        steady_rate=rate(steady, stop_at - steady_from),
        last_visible_after=max((s + lat for s, lat in found), default=stop_at) - stop_at,
        usage=usage,
        not_visible=not_visible,
        achieved_rate=rate(tally.sent, sent_s),
        histogram={
            k: hist_after.get(k, 0.0) - hist_before.get(k, 0.0)
            for k in hist_after
            if k not in ("count", "sum")
        },
    )
