"""End-to-end benchmark of the embedded pipeline: device lines in, readings visible in Redis.

Starts Tansu, redis-server, ingest, processor and API through
:class:`healthsync.supervisor.Pipeline` in a temporary run directory, then
measures, in this order (the report prints them numbered as in bench/README.md):

1. the broker's raw produce and consume rate with no logic (the ceiling);
3. end-to-end latency at a fixed, paced offered rate (run before the
   throughput phase so it does not start behind a backlog);
2. throughput with ingest driven as hard as it takes, and how long the
   processor needs to catch up afterwards;
4. peak RSS of ingest and processor, and CPU per process during phase 2.

Run: ``.venv/bin/python bench/pipeline.py [--duration 60] [--devices 50] [--latency-rate 5000]``.
Progress goes to stderr, the report to stdout. Everything started is stopped
on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.config import Settings
from healthsync.domain.readings import reading_id_for
from healthsync.kafka import client_config, make_producer
from healthsync.metrics import LATENCY_BUCKETS
from healthsync.names import RedisKeys
from healthsync.security.codec import Codec
from healthsync.stack import free_port
from healthsync.supervisor import Pipeline
from healthsync.wire import format_line, parse_line

_READ_CHUNK = 1 << 16
# Throughput sender: lines unanswered per connection, and lines per write. The
# window stays under ingest's per-connection in-flight bound (1000), so the
# server's own backpressure is not what limits the sender.
_WINDOW = 500
_BURST = 100
_BODIES_PER_DEVICE = 32
_PROCESSOR_READY_TIMEOUT_S = 60.0
_REPLY_DRAIN_TIMEOUT_S = 20.0
_VISIBLE_TIMEOUT_S = 15.0
_FULL_POLL_INTERVAL_S = 0.5
_CPU_BOUND_PCT = 85.0


def say(text: str) -> None:
    """Progress, on stderr so the report on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- devices and lines ---------------------------------------------------------


class Device:
    """One simulated monitor: a fixed line template with the seq filled in per reading.

    The vitals cycle through a few normal sets (no alerts are raised), so the
    sender spends microseconds per line and the pipeline, not the driver, is
    what is measured.
    """

    def __init__(self, index: int, rng: random.Random, first_seq: int) -> None:
        self.device_id = f"bench-{index:04d}"
        self.patient_id = f"P-{20000 + index}"
        self.next_seq = first_seq
        self._heads: list[bytes] = []
        self._tails: list[bytes] = []
        for _ in range(_BODIES_PER_DEVICE):
            systolic = rng.randint(105, 140)
            line = format_line(
                {
                    "device_id": self.device_id,
                    "patient_id": self.patient_id,
                    "seq": 0,
                    "heart_rate": rng.randint(60, 100),
                    "spo2": rng.randint(95, 99),
                    "temp": round(rng.uniform(36.4, 37.3), 1),
                    "resp_rate": rng.randint(12, 20),
                    "bp": f"{systolic}/{systolic - rng.randint(35, 50)}",
                }
            )
            head, sep, tail = line.partition(b" seq=0 ")
            if not sep:
                raise RuntimeError(f"unexpected line layout: {line!r}")
            self._heads.append(head + b" seq=")
            self._tails.append(b" " + tail)

    def lines(self, n: int) -> tuple[bytes, range]:
        """`n` consecutive readings as one buffer, and their seq numbers."""
        first = self.next_seq
        self.next_seq = first + n
        heads, tails, k = self._heads, self._tails, _BODIES_PER_DEVICE
        data = b"".join(
            heads[seq % k] + str(seq).encode() + tails[seq % k] for seq in range(first, first + n)
        )
        return data, range(first, first + n)

    def reading_id(self, seq: int) -> str:
        return reading_id_for(self.device_id, seq, 0)


@dataclass
class Tally:
    """What the ingest server answered on all connections of one phase."""

    sent: int = 0
    ok: int = 0
    err: int = 0
    first_err: str | None = None
    # Write -> reply time of the last line of each write (usually one line when paced).
    ack: list[float] = field(default_factory=list)
    record_ack: bool = True


class Link:
    """One device's TCP connection to ingest; replies are read by a background task."""

    def __init__(
        self, device: Device, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.device = device
        self.reader = reader
        self.writer = writer
        self.tally = Tally()
        self.sent = 0
        self.answered = 0
        # (value of `sent` after a write, perf_counter at the write), oldest first.
        self.writes: deque[tuple[int, float]] = deque()
        self.room = asyncio.Event()
        self.reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, device: Device, host: str, port: int) -> Link:
        reader, writer = await asyncio.open_connection(host, port, limit=_READ_CHUNK)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = cls(device, reader, writer)
        link.reader_task = asyncio.create_task(link._read_replies())
        return link

    def use(self, tally: Tally) -> None:
        self.tally = tally

    def write(self, data: bytes, n: int) -> float:
        now = time.perf_counter()
        self.sent += n
        self.tally.sent += n
        self.writes.append((self.sent, now))
        self.writer.write(data)
        return now

    @property
    def unanswered(self) -> int:
        return self.sent - self.answered

    async def _read_replies(self) -> None:
        tail = b""
        reader = self.reader
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                return
            n = data.count(b"\n")
            if n == 0:
                tail += data
                continue
            buf = tail + data if tail else data
            cut = buf.rfind(b"\n") + 1
            complete, tail = buf[:cut], buf[cut:]
            errors = complete.count(b"\nERR ") + complete.startswith(b"ERR ")
            tally = self.tally
            if errors:
                tally.err += errors
                if tally.first_err is None:
                    start = 0 if complete.startswith(b"ERR ") else complete.find(b"\nERR ") + 1
                    end = complete.find(b"\n", start)
                    tally.first_err = complete[start:end].decode("utf-8", "replace")
            tally.ok += n - errors
            self.answered += n
            now = time.perf_counter()
            writes, answered = self.writes, self.answered
            while writes and writes[0][0] <= answered:
                _, written = writes.popleft()
                if tally.record_ack:
                    tally.ack.append(now - written)
            self.room.set()

    async def wait_answered(self, deadline: float) -> None:
        while self.unanswered > 0 and time.perf_counter() < deadline:
            if self.reader_task is not None and self.reader_task.done():
                return
            self.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.room.wait(), max(0.01, deadline - time.perf_counter()))

    async def close(self) -> None:
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self.reader_task
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


async def open_links(devices: list[Device], host: str, port: int) -> list[Link]:
    return list(await asyncio.gather(*(Link.open(d, host, port) for d in devices)))


async def close_links(links: Iterable[Link]) -> None:
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


async def drain_replies(links: list[Link]) -> None:
    deadline = time.perf_counter() + _REPLY_DRAIN_TIMEOUT_S
    await asyncio.gather(*(link.wait_answered(deadline) for link in links))


def merge(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.sent += t.sent
        total.ok += t.ok
        total.err += t.err
        total.ack.extend(t.ack)
        total.first_err = total.first_err or t.first_err
    return total


# --- statistics -----------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def pcts(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (
        f"p50 {ms(percentile(ordered, 0.50))}  p95 {ms(percentile(ordered, 0.95))}  "
        f"p99 {ms(percentile(ordered, 0.99))}  max {ms(percentile(ordered, 1.0))}  "
        f"(n={len(ordered)})"
    )


def histogram_quantile(buckets: Mapping[str, float], q: float) -> str:
    """Quantile from the processor's (non-cumulative) histogram, interpolated in its bucket."""
    total = sum(buckets.values())
    if total <= 0:
        return "n/a"
    rank, cumulative, lower = q * total, 0.0, 0.0
    for bound in LATENCY_BUCKETS:
        count = buckets.get(str(bound), 0.0)
        if count and cumulative + count >= rank:
            return ms(lower + (bound - lower) * (rank - cumulative) / count)
        cumulative += count
        lower = bound
    return f"> {LATENCY_BUCKETS[-1]:g} s"


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.nan


# --- /proc sampling -------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def _proc_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv[:4] if a]
    return " ".join(words)[:60] or "?"


def cpu_snapshot() -> dict[int, int]:
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            value = _proc_cpu_ticks(int(entry))
            if value is not None:
                ticks[int(entry)] = value
    return ticks


def cpu_percent(before: dict[int, int], after: dict[int, int], seconds: float) -> dict[int, float]:
    """CPU use per process over the interval, 100 = one core busy all the time."""
    return {
        pid: 100.0 * (ticks - before.get(pid, 0)) / _CLK_TCK / seconds
        for pid, ticks in after.items()
        if ticks > before.get(pid, 0)
    }


@dataclass
class Usage:
    """CPU per process over an interval (100 = one core) and the names of the busy ones."""

    cpu: dict[int, float]
    names: dict[int, str]

    def of(self, pid: int) -> float:
        return self.cpu.get(pid, 0.0)

    def others(self, exclude: Iterable[int], floor: float = 3.0) -> str:
        skip = set(exclude)
        busy = sorted(
            ((pct, pid) for pid, pct in self.cpu.items() if pid not in skip and pct >= floor),
            reverse=True,
        )
        return (
            ", ".join(f"{self.names.get(pid, '?')} (pid {pid}) {pct:.0f}%" for pct, pid in busy[:4])
            or f"none >= {floor:.0f}%"
        )


class UsageMeter:
    """Measures CPU use of every process from construction until :meth:`stop`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.before = cpu_snapshot()

    def stop(self) -> Usage:
        after = cpu_snapshot()
        cpu = cpu_percent(self.before, after, time.perf_counter() - self.started)
        return Usage(cpu, {pid: _proc_name(pid) for pid, pct in cpu.items() if pct >= 1.0})


def vm_status(pid: int, key: str) -> int | None:
    """A /proc/<pid>/status field in KiB (VmHWM: peak resident set)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def busy_others(exclude: set[int], seconds: float = 1.0) -> str:
    """Other processes using more than 5% of a core right now."""
    meter = UsageMeter()
    time.sleep(seconds)
    return meter.stop().others(exclude, floor=5.0)


# --- phase 1: the broker ceiling -------------------------------------------------


@dataclass
class Ceiling:
    messages: int
    value_bytes: int
    produce_rate: float
    consume_rate: float
    produce_errors: int
    rounds: int

    @property
    def rate(self) -> float:
        return min(self.produce_rate, self.consume_rate)


def sample_value(device: Device) -> bytes:
    """The JSON value ingest would put on the vitals topic for this device's reading."""
    line, _ = device.lines(1)
    return parse_line(line, time.time()).to_json()


def measure_ceiling(
    settings: Settings, messages: int, value: bytes, keys: list[bytes], rounds: int
) -> Ceiling:
    """Best of `rounds` produce runs and consume runs, each of `messages` messages."""
    kafka = settings.kafka
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_config(kafka))
    configs = {"retention.ms": str(kafka.retention_ms), "cleanup.policy": "delete"}
    futures = admin.create_topics(
        [NewTopic(topic, kafka.partitions, kafka.replication_factor, config=configs)]
    )
    for future in futures.values():
        future.result(timeout=15)
    produced: list[float] = []
    consumed: list[float] = []
    failures = 0
    try:
        for _ in range(rounds):
            starts = _high_watermarks(settings, topic)
            produce_rate, failed = _produce_run(settings, topic, messages, value, keys)
            produced.append(produce_rate)
            failures += failed
            consumed.append(_consume_run(settings, topic, starts, messages - failed))
    finally:
        with contextlib.suppress(Exception):  # cleanup only: memory storage frees the messages
            for future in admin.delete_topics([topic]).values():
                future.result(timeout=10)
    return Ceiling(
        messages=messages,
        value_bytes=len(value),
        produce_rate=max(produced),
        consume_rate=max(consumed),
        produce_errors=failures,
        rounds=rounds,
    )


def _produce_run(
    settings: Settings, topic: str, messages: int, value: bytes, keys: list[bytes]
) -> tuple[float, int]:
    """Messages/s from the first produce() until flush() returns, and how many failed."""
    # The same producer configuration ingest uses: acks=all, idempotent, lz4, linger 2 ms.
    producer = make_producer(settings.kafka)
    failures = 0

    def report(error: KafkaError | None, _message: Any) -> None:
        nonlocal failures
        if error is not None:
            failures += 1

    produce = producer.produce
    nkeys = len(keys)
    started = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                produce(topic, value, keys[i % nkeys], on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 5000 == 0:
            producer.poll(0)
    failures += producer.flush(60)
    return rate(messages - failures, time.perf_counter() - started), failures


def _ceiling_consumer(settings: Settings) -> Consumer:
    return Consumer(
        client_config(
            settings.kafka,
            required={
                "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )


def _high_watermarks(settings: Settings, topic: str) -> list[int]:
    consumer = _ceiling_consumer(settings)
    try:
        return [
            int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in range(settings.kafka.partitions)
        ]
    finally:
        consumer.close()


def _consume_run(settings: Settings, topic: str, starts: list[int], messages: int) -> float:
    """Messages/s reading `messages` messages from offsets `starts` with batched consume()."""
    consumer = _ceiling_consumer(settings)
    try:
        partitions = [TopicPartition(topic, p, offset) for p, offset in enumerate(starts)]
        consumer.assign(partitions)
        received = counted = 0
        first_at = last_at = 0.0
        deadline = time.perf_counter() + 60
        while received < messages and time.perf_counter() < deadline:
            batch = consumer.consume(10_000, 1.0)
            good = sum(1 for m in batch if m.error() is None)
            if not good:
                continue
            now = time.perf_counter()
            if received == 0:
                first_at = now  # the clock starts once data flows; this batch is not counted
            else:
                counted += good
            received += good
            last_at = now
    finally:
        consumer.close()
    return rate(counted, last_at - first_at)


# --- Redis helpers ---------------------------------------------------------------


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


# --- phase 3: latency at a paced rate --------------------------------------------


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
    not_visible: int
    achieved_rate: float
    histogram: dict[str, float]
    # Growth of the processor's counter over the sending window, per second.
    processed_rate: float
    usage: Usage


class VisibilityWatcher:
    """Finds when each sent reading becomes visible in its patient's seen set.

    The processor writes a batch (seen set, latest, history and its events) in
    one MULTI/EXEC, so an event on the live stream means that patient's readings
    of the batch are readable. Each event wakes a ZMSCORE of the patient's
    awaited ids up to the reading the event names (a device's readings are sent,
    and normally stored, in order); every 0.5 s all awaited ids are asked, so a
    reading stored out of order or whose event was missed is still found, only
    later. A reading's visible time is when the ZMSCORE reply arrives: an upper
    bound, late by about one Redis round trip.

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
        self.codec = codec
        self.keys = codec.keys
        self.waiting = waiting
        self.found = found
        self.last_id: bytes | str = "0-0"
        self.last_full = time.perf_counter()

    async def run(self, sending_done: asyncio.Event) -> None:
        """Until every reading was found, or `_VISIBLE_TIMEOUT_S` after sending is done."""
        newest: Any = await self.redis.xrevrange(self.keys.events, count=1)
        if newest:
            self.last_id = newest[0][0]
        self.last_full = time.perf_counter()
        deadline: float | None = None
        while True:
            if sending_done.is_set():
                if not any(self.waiting.values()):
                    return
                deadline = deadline or time.perf_counter() + _VISIBLE_TIMEOUT_S
                if time.perf_counter() > deadline:
                    return
            asked = self._to_ask(await self._named())
            if asked:
                await self._ask(asked)

    async def _named(self) -> dict[str, str | None]:
        """Patient -> newest reading id named by an event (None: ask all awaited ids)."""
        keys, codec = self.keys, self.codec
        reply: Any = await self.redis.xread({keys.events: self.last_id}, count=10_000, block=100)
        named: dict[str, str | None] = {}
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                patient = fields.get(b"patient_id")
                if patient is not None:
                    place = codec.field(keys.events, "patient_id")
                    named[codec.open(patient, place).decode()] = _event_reading_id(codec, fields)
        now = time.perf_counter()
        if not reply or now - self.last_full > _FULL_POLL_INTERVAL_S:
            named.update(dict.fromkeys(self.waiting))
            self.last_full = now
        return named

    def _to_ask(self, named: dict[str, str | None]) -> list[tuple[str, list[str]]]:
        asked = []
        for patient, rid in named.items():
            ids = list(self.waiting.get(patient, ()))
            if rid is not None and rid in self.waiting[patient]:
                ids = ids[: ids.index(rid) + 1]
            if ids:
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


def _event_reading_id(codec: Codec, fields: dict[bytes, bytes]) -> str | None:
    """The reading id in a vitals event (`data` maps each vital to its latest entry)."""
    if fields.get(b"type") != b"vitals":
        return None
    try:
        place = codec.field(codec.keys.events, "data")
        data = orjson.loads(codec.open(fields.get(b"data", b"{}"), place))
        return str(next(iter(data.values()))["reading_id"])
    except (orjson.JSONDecodeError, StopIteration, KeyError, TypeError, AttributeError):
        return None


async def paced_sender(
    link: Link,
    per_device_rate: float,
    t0: float,
    stop_at: float,
    waiting: dict[str, float],
) -> None:
    device = link.device
    sent = 0
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        due = math.floor((now - t0) * per_device_rate) + 1 - sent
        if due <= 0:
            await asyncio.sleep(max(0.0, t0 + sent / per_device_rate - now))
            continue
        data, seqs = device.lines(due)
        sent_at = link.write(data, due)
        for seq in seqs:
            waiting[device.reading_id(seq)] = sent_at
        sent += due
        await link.writer.drain()


async def latency_phase(
    settings: Settings, devices: list[Device], offered: float, duration: float, warmup: float
) -> LatencyResult:
    keys = settings.redis.keys
    redis = AsyncRedis.from_url(str(settings.redis.url), **settings.redis.client_options())
    links = await open_links(devices, settings.ingest.host, settings.ingest.port)
    watcher: asyncio.Task[None] | None = None
    try:
        hist_before = await _async_histogram(redis, keys)
        tallies = [Tally(record_ack=False) for _ in links]
        for link, tally in zip(links, tallies, strict=True):
            link.use(tally)
        waiting: dict[str, dict[str, float]] = {d.patient_id: {} for d in devices}
        found: list[tuple[float, float]] = []
        sending_done = asyncio.Event()
        codec = Codec.from_settings(settings)
        visibility = VisibilityWatcher(redis, codec, waiting, found)
        watcher = asyncio.create_task(visibility.run(sending_done))
        per_device = offered / len(links)
        start = time.perf_counter() + 0.05
        stop_at = start + duration

        def count_acks() -> None:
            for tally in tallies:
                tally.record_ack = True

        asyncio.get_running_loop().call_later(start + warmup - time.perf_counter(), count_acks)
        processed_before = await _async_counter(redis, keys)
        meter = UsageMeter()
        senders = [
            # Spread the devices' sends evenly over each send interval.
            paced_sender(
                link,
                per_device,
                start + i / offered,
                stop_at,
                waiting[link.device.patient_id],
            )
            for i, link in enumerate(links)
        ]
        await asyncio.gather(*senders)
        sent_s = time.perf_counter() - start
        usage = meter.stop()
        processed_rate = rate(await _async_counter(redis, keys) - processed_before, sent_s)
        await drain_replies(links)
        sending_done.set()
        await watcher
        not_visible = sum(len(w) for w in waiting.values())
        # The processor publishes its stats with the next batch or within ~1 s when idle.
        await asyncio.sleep(2.0)
        hist_after = await _async_histogram(redis, keys)
    finally:
        if watcher is not None and not watcher.done():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await close_links(links)
        await redis.aclose()
    tally = merge(tallies)
    measured_from = start + warmup
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
        processed_rate=processed_rate,
        usage=usage,
        not_visible=not_visible,
        achieved_rate=rate(tally.sent, sent_s),
        histogram={
            k: hist_after.get(k, 0.0) - hist_before.get(k, 0.0)
            for k in hist_after
            if k not in ("count", "sum")
        },
    )


async def _async_counter(redis: AsyncRedis, keys: RedisKeys) -> int:
    return int(await redis.hget(keys.stats("processor"), "readings_processed_total") or 0)


async def _async_histogram(redis: AsyncRedis, keys: RedisKeys) -> dict[str, float]:
    raw: Any = await redis.hgetall(keys.latency)
    return {k.decode(): float(v) for k, v in raw.items()}


# --- phase 2: throughput -----------------------------------------------------------


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
    """Keep about `_WINDOW` lines unanswered on the connection until `stop_at`."""
    device = link.device
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        if _WINDOW - link.unanswered < _BURST:
            link.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.room.wait(), stop_at - now)
            continue
        data, _ = device.lines(_BURST)
        link.write(data, _BURST)
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


# --- the run ---------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="throughput phase, seconds")
    p.add_argument("--devices", type=int, default=50, help="concurrent device connections")
    p.add_argument("--latency-rate", type=float, default=5000.0, help="offered readings/s")
    p.add_argument("--latency-duration", type=float, default=20.0, help="latency phase, seconds")
    p.add_argument("--latency-warmup", type=float, default=2.0, help="seconds not counted")
    p.add_argument("--ceiling-messages", type=int, default=300_000, help="raw broker messages")
    p.add_argument("--ceiling-rounds", type=int, default=2, help="best of this many")
    p.add_argument("--catch-up-timeout", type=float, default=50.0, help="seconds, after phase 2")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    return p.parse_args(argv)


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    run_dir = Path(tempfile.mkdtemp(prefix="healthsync-bench-"))
    settings = Settings()
    settings.crypto.keyring_file = run_dir / "keyring.json"
    # Plain embedded Kafka and Redis, as in the figures recorded so far; the broker's
    # CPU figure is then Tansu's own rather than its TLS front's.
    settings.kafka.embedded_tls = False
    settings.redis.embedded_tls = False
    settings.ingest.port = free_port()
    settings.api.port = free_port()
    pipeline = Pipeline(settings, run_dir)
    failed = True
    try:
        report = run(pipeline, args)
        failed = False
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("stopping the pipeline")
        pipeline.stop()
        if failed or args.keep:
            say(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(report, flush=True)
    return 0


def run(pipeline: Pipeline, args: argparse.Namespace) -> str:
    bench_started = time.perf_counter()
    load_before = os.getloadavg()
    say("checking what else is busy on this machine")
    others_before = busy_others({os.getpid()})
    say(f"starting the pipeline in {pipeline.run_dir}")
    started = time.perf_counter()
    pipeline.start()
    startup_s = time.perf_counter() - started
    settings = pipeline.settings
    redis = Redis.from_url(str(settings.redis.url), **settings.redis.client_options())
    pids = {name: child.process.pid for name, child in pipeline.children.items() if child.process}
    if pipeline.stack.broker is not None:
        pids["broker"] = pipeline.stack.broker.process.pid
    if pipeline.stack.redis is not None:
        pids["redis"] = pipeline.stack.redis.process.pid
    pids["bench"] = os.getpid()

    rng = random.Random(1)
    first_seq = time.time_ns() // 1000
    devices = [Device(i, rng, first_seq) for i in range(1, args.devices + 1)]

    say("1/3 ceiling: raw produce, then consume, on a separate topic")
    ceiling = measure_ceiling(
        settings,
        args.ceiling_messages,
        sample_value(devices[0]),
        [d.patient_id.encode() for d in devices],
        args.ceiling_rounds,
    )
    say(f"    produce {ceiling.produce_rate:.0f}/s, consume {ceiling.consume_rate:.0f}/s")

    say("waiting for the processor to join its group and store a first reading")
    warm_s = warm_up(settings, redis, devices[0])

    say(f"2/3 latency: {args.latency_rate:.0f} readings/s paced for {args.latency_duration:.0f} s")
    latency = asyncio.run(
        latency_phase(
            settings, devices, args.latency_rate, args.latency_duration, args.latency_warmup
        )
    )

    say(f"3/3 throughput: {len(devices)} connections flat out for {args.duration:.0f} s")
    throughput = throughput_phase(settings, redis, devices, args.duration, args.catch_up_timeout)
    rss = {name: vm_status(pid, "VmHWM") for name, pid in pids.items()}
    redis.close()
    facts = RunFacts(
        args=args,
        settings=settings,
        pipeline=pipeline,
        load=load_before,
        others=others_before,
        startup_s=startup_s,
        warm_s=warm_s,
        rss=rss,
        pids=pids,
        total_s=time.perf_counter() - bench_started,
    )
    return render(facts, ceiling, latency, throughput)


# --- the report --------------------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What the report says about the run besides the three phases' results."""

    args: argparse.Namespace
    settings: Settings
    pipeline: Pipeline
    load: tuple[float, float, float]  # load average before the stack started
    others: str  # other busy processes before the stack started
    startup_s: float
    warm_s: float
    rss: dict[str, int | None]  # peak RSS in KiB by process name
    pids: dict[str, int]
    total_s: float


def render(
    facts: RunFacts, ceiling: Ceiling, latency: LatencyResult, throughput: ThroughputResult
) -> str:
    sections = (
        _header(facts),
        _ceiling(facts, ceiling),
        _throughput(facts, ceiling, throughput),
        _latency(facts, latency),
        _rss(facts),
    )
    return "\n".join(line for section in sections for line in section)


def _header(facts: RunFacts) -> list[str]:
    out: list[str] = []
    add = out.append
    args, settings, pipeline, load = facts.args, facts.settings, facts.pipeline, facts.load
    cores = os.cpu_count() or 0
    broker = "embedded Tansu (memory storage)" if pipeline.stack.broker else "external Kafka"
    add("")
    add("=== HealthSync pipeline benchmark ===")
    add(
        f"machine    {cores} cores ({platform.machine()}, Linux {platform.release()}), "
        f"Python {platform.python_version()}; load average before start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    add(
        f"same host  {broker}, redis-server, ingest, processor, api and this bench's device "
        f"driver all share these {cores} cores; other busy processes at start: "
        f"{facts.others}"
    )
    add(
        f"setup      vitals topic {settings.kafka.partitions} partitions; processor batch "
        f"{settings.processor.batch_size} / {settings.processor.batch_wait_s * 1000:.0f} ms; "
        f"{args.devices} device connections; stack start {facts.startup_s:.1f} s; a first reading "
        f"was stored {facts.warm_s:.1f} s after it was sent (after phase 1, incl. any wait for the "
        f"processor's group join)"
    )
    return out


def _ceiling(facts: RunFacts, ceiling: Ceiling) -> list[str]:
    out: list[str] = []
    add = out.append
    args, settings = facts.args, facts.settings
    add("")
    add(
        f"1. Ceiling: raw broker, no logic (own topic, {settings.kafka.partitions} partitions, "
        f"{ceiling.messages} messages of {ceiling.value_bytes} B reading JSON, "
        f"{args.devices} keys; best of {ceiling.rounds} rounds)"
    )
    add(
        f"   produce  acks=all idempotent lz4 linger 2 ms (ingest's config), "
        f"until flush:  {ceiling.produce_rate:9.0f} msg/s"
        + (f"  ({ceiling.produce_errors} failed)" if ceiling.produce_errors else "")
    )
    add(
        f"   consume  batched consume(10000), assigned partitions:             "
        f"{ceiling.consume_rate:9.0f} msg/s"
    )
    add(
        f"   ceiling  min(produce, consume):                                     "
        f"{ceiling.rate:9.0f} msg/s"
    )
    return out


def _throughput(facts: RunFacts, ceiling: Ceiling, t: ThroughputResult) -> list[str]:
    out: list[str] = []
    add = out.append
    args, pids = facts.args, facts.pids
    cores = os.cpu_count() or 0
    ingest_rate = rate(t.ok_in_window, t.duration)
    processed_rate = rate(t.processed_in_window, t.duration)
    add("")
    add(
        f"2. Throughput: {args.devices} connections, each keeping {_WINDOW} lines unanswered "
        f"(writes of {_BURST}), for {t.duration:.1f} s"
    )
    add(
        f"   ingest acknowledged (OK replies in the window):  {ingest_rate:9.0f} readings/s   "
        f"({t.ok_in_window} OK in the window, {t.tally.ok} in all, {t.tally.err} ERR"
        + (f", first: {t.tally.first_err}" if t.tally.first_err else "")
        + ")"
    )
    add(f"   ack latency under this load (write -> OK):       {pcts(t.tally.ack)}")
    add(
        f"   processed into Redis in the same window:         {processed_rate:9.0f} readings/s   "
        f"({t.processed_in_window} readings, processor counter)"
    )
    if t.catch_up_s is not None:
        sustained = rate(t.tally.ok, t.duration + t.catch_up_s)
        add(
            f"   processor caught up {t.catch_up_s:.1f} s after sending stopped; everything "
            f"acknowledged was stored at {sustained:.0f} readings/s overall"
        )
    else:
        extra = rate(t.backlog_left, t.drain_rate)
        add(
            f"   processor NOT caught up {args.catch_up_timeout:.0f} s after sending stopped: "
            f"{t.backlog_left} readings still queued, draining at {t.drain_rate:.0f}/s "
            f"(~{extra:.0f} s more, ~{args.catch_up_timeout + extra:.0f} s in all)"
        )
    add(
        f"   ratio to the broker ceiling ({ceiling.rate:.0f} msg/s): ingest "
        f"{100 * rate(ingest_rate, ceiling.rate):.1f}%, processor "
        f"{100 * rate(processed_rate, ceiling.rate):.1f}%"
    )
    add("   CPU during the window (100% = one core busy all the time):")
    for name, pid in sorted(pids.items(), key=lambda kv: -t.usage.of(kv[1])):
        pct = t.usage.of(pid)
        flag = "  <- saturates a core" if pct >= _CPU_BOUND_PCT else ""
        add(f"     {name:8s} pid {pid:<7d} {pct:5.0f}%{flag}")
    add(
        f"     machine total {sum(t.usage.cpu.values()):.0f}% of {cores * 100}%; "
        f"others: {t.usage.others(pids.values())}"
    )
    return out


def _latency(facts: RunFacts, lat: LatencyResult) -> list[str]:
    out: list[str] = []
    add = out.append
    args, pids = facts.args, facts.pids
    add("")
    add(
        f"3. Latency at {lat.offered_rate:.0f} readings/s offered (paced over {args.devices} "
        f"connections, achieved {lat.achieved_rate:.0f}/s) for {lat.duration:.0f} s, "
        f"first {lat.warmup:.0f} s not counted"
    )
    add(
        f"   device send -> visible in Redis (seen set; bench polls on each live event):\n"
        f"      {pcts(lat.visible)}"
        + (
            f"; {lat.not_visible} not visible after {_VISIBLE_TIMEOUT_S:.0f} s"
            if lat.not_visible
            else ""
        )
    )
    add(
        "      p50 by thirds of the counted window: "
        + " / ".join(ms(v) for v in lat.trend)
        + "  (rising = falling behind the offered rate)"
    )
    add(
        f"   device send -> OK reply (Kafka acks=all):\n      {pcts(lat.tally.ack)}"
        f"; {lat.tally.ok} OK, {lat.tally.err} ERR"
    )
    hist_n = int(sum(lat.histogram.values()))
    add(
        "   processor histogram, ingest receive -> Redis write, incl. warm-up "
        f"(bucket-interpolated, n={hist_n}):\n"
        f"      p50 {histogram_quantile(lat.histogram, 0.50)}  "
        f"p95 {histogram_quantile(lat.histogram, 0.95)}  "
        f"p99 {histogram_quantile(lat.histogram, 0.99)}"
    )
    add(
        f"   processor stored {lat.processed_rate:.0f} readings/s over the sending window; CPU: "
        + ", ".join(
            f"{name} {lat.usage.of(pid):.0f}%"
            for name, pid in sorted(pids.items(), key=lambda kv: -lat.usage.of(kv[1]))
        )
        + f"; others: {lat.usage.others(pids.values())}"
    )
    return out


def _rss(facts: RunFacts) -> list[str]:
    out: list[str] = []
    add = out.append
    add("")
    add("4. Peak RSS (VmHWM) over the whole run:")
    for name in ("ingest", "process", "broker", "redis", "api"):
        kib = facts.rss.get(name)
        if kib is not None:
            add(f"   {name:8s} {kib / 1024:7.1f} MiB")
    add("")
    add(f"total bench time {facts.total_s:.0f} s")
    return out


if __name__ == "__main__":
    sys.exit(main())
