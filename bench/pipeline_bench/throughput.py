"""Phase 2: ingest driven as hard as it takes, and how long the processor needs to catch up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from healthsync.config import Settings
from pipeline_bench.driver import Device, Link, Tally, close_links, drain_replies, merge, open_links
from pipeline_bench.figures import rate, say
from pipeline_bench.redis_stats import counter, wait_for_processed
from pipeline_bench.usage import Usage, UsageMeter

# Lines unanswered per connection, and lines per write. The window stays under
# ingest's per-connection in-flight bound (1000), so the server's own backpressure
# is not what limits the sender.
WINDOW = 500
BURST = 100


@dataclass
class ThroughputResult:
    duration: float
    tally: Tally  # every reply of the phase, including those after the window
    ok_in_window: int
    processed_in_window: int
    catch_up_s: float | None
    backlog_left: int
    drain_rate: float
    usage: Usage


async def flat_out(link: Link, stop_at: float) -> None:
    """Keep about `WINDOW` lines unanswered on the connection until `stop_at`."""
    device = link.device
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        if WINDOW - link.unanswered < BURST:
            link.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.room.wait(), stop_at - now)
            continue
        data, _ = device.lines(BURST)
        link.write(data, BURST)
        await link.writer.drain()


async def _progress(tallies: list[Tally], start: float) -> None:
    last_ok, last_t = 0, start
    while True:
        await asyncio.sleep(10.0)
        now = time.perf_counter()
        ok = sum(t.ok for t in tallies)
        say(f"    t={now - start:3.0f} s  acked {ok} ({rate(ok - last_ok, now - last_t):.0f}/s)")
        last_ok, last_t = ok, now


async def _throughput_send(
    settings: Settings, devices: list[Device], duration: float, mark: Callable[[str], None]
) -> tuple[Tally, int]:
    """Send flat out for `duration`; the replies' tally and how many OKs came inside it."""
    links = await open_links(devices, settings.ingest.host, settings.ingest.port)
    tallies = [Tally() for _ in links]
    try:
        for link, tally in zip(links, tallies, strict=True):
            link.use(tally)
        mark("start")
        start = time.perf_counter()
        progress = asyncio.create_task(_progress(tallies, start))
        try:
            await asyncio.gather(*(flat_out(link, start + duration) for link in links))
        finally:
            progress.cancel()
        mark("stop")
        ok_in_window = sum(t.ok for t in tallies)
        for tally in tallies:
            tally.record_ack = False
        await drain_replies(links)
    finally:
        await close_links(links)
    return merge(tallies), ok_in_window


def throughput_phase(
    settings: Settings, redis: Redis, devices: list[Device], duration: float, catch_up_cap: float
) -> ThroughputResult:
    keys = settings.redis.keys
    marks: dict[str, tuple[float, int]] = {}
    meters: list[UsageMeter] = []
    usages: list[Usage] = []

    def mark(which: str) -> None:
        processed = counter(redis, keys, "processor", "readings_processed_total")
        marks[which] = (time.perf_counter(), processed)
        if which == "start":
            meters.append(UsageMeter())
        else:
            usages.append(meters[0].stop())

    tally, ok_in_window = asyncio.run(_throughput_send(settings, devices, duration, mark))
    t_start, processed_start = marks["start"]
    t_stop, processed_stop = marks["stop"]
    say(f"sending stopped; waiting up to {catch_up_cap:.0f} s for the processor to catch up")
    # Everything acknowledged, inside the window or just after it, must reach Redis.
    target = processed_start + tally.ok
    caught = wait_for_processed(redis, keys, target, catch_up_cap - (time.perf_counter() - t_stop))
    processed_now = counter(redis, keys, "processor", "readings_processed_total")
    since_stop = time.perf_counter() - t_stop
    return ThroughputResult(
        duration=t_stop - t_start,
        tally=tally,
        ok_in_window=ok_in_window,
        processed_in_window=processed_stop - processed_start,
        catch_up_s=None if caught is None else since_stop,
        backlog_left=max(0, target - processed_now),
        drain_rate=rate(processed_now - processed_stop, since_stop),
        usage=usages[0],
    )
