"""How fast the jobs chew through archived data, and how much memory they hold.

Builds a synthetic period in memory (patients x readings, one reading per
`--interval` seconds per patient, a few alerts) and runs `trends`,
`alarm-report` and `reprocess` (with stricter heart-rate bands) over it
through the same executor `healthsync job run` uses, with the run records in
a private `redis-server` and the output in a temporary directory. Prints
readings per second and the peak memory of each job (tracemalloc).

Run: ``.venv/bin/python bench/jobs.py [--patients 50] [--hours 6] [--interval 10]``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from redis import Redis

from healthsync.domain.readings import Reading
from healthsync.jobs.alarm_report import AlarmReport
from healthsync.jobs.base import Job, JobParams
from healthsync.jobs.execute import Executor
from healthsync.jobs.output import LocalStore
from healthsync.jobs.reprocess import Reprocess
from healthsync.jobs.trends import Trends
from healthsync.names import RedisKeys
from healthsync.stack import start_redis
from healthsync.store.period import ArchivedAlert, MemoryArchive
from healthsync.store.runs import RunStore
from healthsync.stream.replay import replay

STRICTER = '[anomaly.patients."P-0000".bands.heart_rate]\nhigh = 95\n'


def dataset(patients: int, hours: float, interval: float) -> list[Reading]:
    rng = random.Random(7)
    start = 1_800_000_000.0
    readings = []
    for p in range(patients):
        hr = rng.uniform(60, 100)
        for i in range(int(hours * 3600 / interval)):
            ts = start + i * interval + p * 0.01
            hr = min(180.0, max(35.0, hr + rng.gauss(0, 1.5)))
            spo2 = float(rng.choice([94, 95, 96, 97, 98]))
            vitals = {"heart_rate": float(round(hr)), "spo2": spo2}
            readings.append(Reading(f"r{p}-{i}", f"mon-{p}", f"P-{p:04d}", ts, ts, vitals))
    return readings


def measure(executor: Executor, job: Job, params: JobParams, readings: int) -> None:
    tracemalloc.start()
    began = time.perf_counter()
    record = executor.run(job, params)
    took = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{job.name:<13} {took:7.2f} s  {readings / took:10,.0f} readings/s  "
        f"peak {peak / 2**20:7.1f} MiB  {record.summary}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    args = parser.parse_args()
    readings = dataset(args.patients, args.hours, args.interval)
    alerts = [
        ArchivedAlert(e.alert)
        for e in replay(readings[: len(readings) // 10])
        if e.type == "opened"
    ]
    since, until = readings[0].ts, readings[-1].ts + 1
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(log_dir=Path(tmp))
        try:
            client = Redis(host=redis.host, port=redis.port)
            runs = RunStore(client, RedisKeys("bench"))
            store = LocalStore(Path(tmp) / "archive")
            executor = Executor(runs, store, MemoryArchive(readings, alerts), lock_ttl_s=3600)
            rules = Path(tmp) / "stricter.toml"
            rules.write_text(STRICTER)
            print(f"{len(readings):,} readings, {args.patients} patients, {args.hours:g} h")
            measure(executor, Trends(), JobParams("b-trends", since, until), len(readings))
            measure(executor, AlarmReport(), JobParams("b-alarms", since, until), len(readings))
            options = {"rules": str(rules)}
            with Path("/dev/null").open("w") as discard:  # the diff lines are not the point
                job = Reprocess(replay, discard)
                params = JobParams("b-rp", since, until, options=options)
                measure(executor, job, params, len(readings))
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
