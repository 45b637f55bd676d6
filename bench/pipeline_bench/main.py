"""End-to-end benchmark of the pipeline `healthsync up` runs: device lines in, readings in Redis.

Starts the broker, redis-server and every stage through
:class:`healthsync.supervisor.Pipeline` in a temporary run directory, with
`up`'s defaults (TLS on the broker and Redis, two ingest replicas behind
HAProxy, everything sealed at rest; ``--plain`` drops the TLS), then measures,
in this order (the report prints them numbered as in bench/README.md):

1. the broker's raw produce and consume rate with no logic (the ceiling);
3. end-to-end latency at each ``--latency-rates`` offered rate, paced (run
   before the throughput phase so it does not start behind a backlog);
2. throughput with ingest driven as hard as it takes, and how long the
   processor needs to catch up afterwards;
4. peak RSS of every process, and CPU per process during phases 2 and 3.

``--soak SECONDS`` replaces phases 1-3 with one paced phase at ``--soak-rate``
and reports every process's RSS and CPU over time.

Run: ``.venv/bin/python bench/pipeline.py [--plain] [--duration 60] [--latency-rates 1000 5000]``
or ``.venv/bin/python bench/pipeline.py --soak 600``. Progress goes to stderr,
the report to stdout. Everything started is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from redis import Redis

from healthsync.config import Settings
from healthsync.recycle import BrokerRecycler
from healthsync.stack import free_port
from healthsync.supervisor import Pipeline
from pipeline_bench.ceiling import measure_ceiling, sample_value
from pipeline_bench.driver import Device
from pipeline_bench.figures import say
from pipeline_bench.latency import latency_phase
from pipeline_bench.redis_stats import warm_up
from pipeline_bench.report import RunFacts, render
from pipeline_bench.soak import ProcessSampler, Recycling, render_soak
from pipeline_bench.throughput import throughput_phase
from pipeline_bench.usage import busy_others, vm_status


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="throughput phase, seconds")
    p.add_argument("--devices", type=int, default=50, help="concurrent device connections")
    p.add_argument(
        "--latency-rates",
        type=float,
        nargs="+",
        default=[1000.0, 5000.0],
        help="offered readings/s, one latency phase each",
    )
    p.add_argument("--latency-duration", type=float, default=20.0, help="latency phase, seconds")
    p.add_argument("--latency-warmup", type=float, default=2.0, help="seconds not counted")
    p.add_argument("--ceiling-messages", type=int, default=300_000, help="raw broker messages")
    p.add_argument("--ceiling-rounds", type=int, default=2, help="best of this many")
    p.add_argument("--catch-up-timeout", type=float, default=50.0, help="seconds, after phase 2")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    p.add_argument(
        "--plain",
        action="store_true",
        help="embedded Kafka and Redis without TLS (default: exactly what `up` runs)",
    )
    p.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="instead of phases 1-3: --soak-rate paced for SECONDS, RSS and CPU sampled",
    )
    p.add_argument("--soak-rate", type=float, default=2000.0, help="offered readings/s in --soak")
    p.add_argument(
        "--sample-every", type=float, default=30.0, help="RSS and CPU sample interval, seconds"
    )
    p.add_argument(
        "--processors",
        type=int,
        default=None,
        help="processor processes in the one consumer group, as `processor.processes` "
        "(default: its setting, as `up` runs it: 2 on two cores or more unless set)",
    )
    args = p.parse_args(argv)
    if args.processors is not None and args.processors < 1:
        p.error("--processors must be 1 or more")
    return args


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    run_dir = Path(tempfile.mkdtemp(prefix="healthsync-bench-"))
    settings = Settings()
    settings.crypto.keyring_file = run_dir / "keyring.json"
    if args.plain:
        # Plain embedded Kafka and Redis, as in the figures recorded before 2026-12-01:
        # the broker's CPU figure is then Tansu's own rather than Tansu's and its TLS front's.
        settings.kafka.embedded_tls = False
        settings.redis.embedded_tls = False
    # Everything else as `up` runs it; only the public ports move, so that the bench
    # runs beside another pipeline. The devices use ingest's plaintext loopback port.
    settings.ingest.port = free_port()
    settings.ingest.tls_port = free_port()
    settings.api.port = free_port()
    if args.processors is not None:
        settings.processor.processes = args.processors
    args.processors = settings.processor.processes  # what the report names
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


def process_ids(pipeline: Pipeline) -> dict[str, int]:
    """Every process of the pipeline by name (stages, broker and its TLS front, Redis, HAProxy)."""
    pids = {name: child.process.pid for name, child in pipeline.children.items() if child.process}
    for service in pipeline.stack.services():
        pids[service.name] = service.process.pid
    pids["bench"] = os.getpid()
    return pids


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
    pids = process_ids(pipeline)
    sampler = ProcessSampler(lambda: process_ids(pipeline), args.sample_every)

    rng = random.Random(1)
    first_seq = time.time_ns() // 1000
    devices = [Device(i, rng, first_seq) for i in range(1, args.devices + 1)]

    def facts(warm_s: float) -> RunFacts:
        return RunFacts(
            args=args,
            settings=settings,
            pipeline=pipeline,
            load=load_before,
            others=others_before,
            startup_s=startup_s,
            warm_s=warm_s,
            rss={name: vm_status(pid, "VmHWM") for name, pid in pids.items()},
            pids=pids,
            total_s=time.perf_counter() - bench_started,
        )

    if args.soak:
        say("waiting for the processor to join its group and store a first reading")
        warm_s = warm_up(settings, redis, devices[0])
        say(f"soak: {args.soak_rate:.0f} readings/s paced for {args.soak:.0f} s")
        sampler.start()
        recycling = Recycling(BrokerRecycler(pipeline, say))
        recycling.start()
        soak = asyncio.run(
            latency_phase(settings, devices, args.soak_rate, args.soak, args.latency_warmup)
        )
        recycles = recycling.stop()
        samples = sampler.stop()
        redis.close()
        return render_soak(facts(warm_s), soak, samples, recycles)

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

    latencies = []
    duration, warmup = args.latency_duration, args.latency_warmup
    for offered in sorted(args.latency_rates):
        say(f"2/3 latency: {offered:.0f} readings/s paced for {duration:.0f} s")
        latencies.append(asyncio.run(latency_phase(settings, devices, offered, duration, warmup)))

    say(f"3/3 throughput: {len(devices)} connections flat out for {args.duration:.0f} s")
    throughput = throughput_phase(settings, redis, devices, args.duration, args.catch_up_timeout)
    redis.close()
    return render(facts(warm_s), ceiling, latencies, throughput)
