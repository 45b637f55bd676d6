"""The report: what each phase measured, numbered as in bench/README.md."""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass

from healthsync.config import Settings
from healthsync.kafka import LINGER_MS
from healthsync.supervisor import Pipeline
from pipeline_bench.ceiling import Ceiling
from pipeline_bench.figures import histogram_quantile, ms, pcts, rate
from pipeline_bench.latency import VISIBLE_TIMEOUT_S, LatencyResult
from pipeline_bench.throughput import BURST, WINDOW, ThroughputResult

_CPU_BOUND_PCT = 85.0


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
    facts: RunFacts, ceiling: Ceiling, latencies: list[LatencyResult], throughput: ThroughputResult
) -> str:
    sections = (
        header(facts),
        _ceiling(facts, ceiling),
        _throughput(facts, ceiling, throughput),
        *(_latency(facts, latency) for latency in latencies),
        _rss(facts),
    )
    return "\n".join(line for section in sections for line in section)


def header(facts: RunFacts) -> list[str]:
    out: list[str] = []
    add = out.append
    args, settings, pipeline, load = facts.args, facts.settings, facts.pipeline, facts.load
    cores = os.cpu_count() or 0
    broker = "embedded Tansu (memory storage)" if pipeline.stack.broker else "external Kafka"
    tls = "plain (--plain)" if args.plain else "TLS 1.3 (as `up`)"
    front = pipeline.front
    ingest = f"{len(front.replicas)} ingest replicas behind HAProxy" if front else "one ingest"
    add("")
    add("=== HealthSync pipeline benchmark ===")
    add(
        f"machine    {cores} cores ({platform.machine()}, Linux {platform.release()}), "
        f"Python {platform.python_version()}; load average before start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    add(
        f"same host  {broker}, redis-server, {ingest}, {_processors(args.processors)}, "
        "archiver, api, scheduler "
        f"and this bench's device driver all share these {cores} cores; other busy processes "
        f"at start: {facts.others}"
    )
    add(
        f"security   Kafka and Redis links {tls}; readings sealed at rest "
        f"({'on' if settings.crypto.enabled else 'off'}); devices on ingest's plaintext "
        f"loopback port"
    )
    add(
        f"setup      vitals topic {settings.kafka.partitions} partitions; processor batch "
        f"{settings.processor.batch_size} / {settings.processor.batch_wait_s * 1000:.0f} ms; "
        f"{args.devices} device connections; stack start {facts.startup_s:.1f} s; a first reading "
        f"was stored {facts.warm_s:.1f} s after it was sent (after phase 1, incl. any wait for the "
        f"processor's group join)"
    )
    return out


def _processors(count: int) -> str:
    return "processor" if count == 1 else f"{count} processors in one consumer group"


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
        f"   produce  acks=all idempotent lz4 linger {LINGER_MS} ms (ingest's config), "
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
        f"2. Throughput: {args.devices} connections, each keeping {WINDOW} lines unanswered "
        f"(writes of {BURST}), for {t.duration:.1f} s"
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
            f"; {lat.not_visible} not visible after {VISIBLE_TIMEOUT_S:.0f} s"
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
    for name, kib in sorted(facts.rss.items(), key=lambda kv: -(kv[1] or 0)):
        if kib is not None:
            add(f"   {name:12s} {kib / 1024:7.1f} MiB")
    add("")
    add(f"total bench time {facts.total_s:.0f} s")
    return out
