"""The FHIR store's Observations: what Redis holds for them, and what a search costs.

Starts a private redis-server and writes ``--patients`` patients' last
``--minutes`` of readings (one every 5 s, five vital-sign Observations
each, as a bedside monitor sends them) through the processor's FHIR sink,
in batches of one reading per patient as in live operation. Prints Redis's
memory and CPU per reading stored, then times the FHIR reader's searches
(the API's code, over its asyncio client), ``--searches`` of each:

- one patient's newest page of 50 Observations, with its total;
- the same patient's heart rates (a filter, counted within the scan limit);
- the next page of the first search (from its cursor);
- every patient's newest page of 50.

    .venv/bin/python bench/fhir_search.py [--patients 200] [--minutes 60] [--searches 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.fhir.step import FhirResources
from healthsync.security.codec import Codec
from healthsync.store.fhir_queries import FhirReader, Search
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.records import Records

# A private redis-server and keyring, as the FHIR store's other bench starts them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fhir_trim import private_store

VITALS = {"heart_rate": 72, "spo2": 97, "temp": 36.8, "resp_rate": 15, "bp_sys": 120}
HR = "8867-4"


def fill(client: Redis, settings: Settings, codec: Codec, patients: int, minutes: int) -> int:
    """Every patient's readings, one batch per 5 s tick; how many readings were written."""
    sink = RedisFhirSink(client, settings.redis, Records(codec))
    step = FhirResources("urn:mrn")
    start = time.time() - minutes * 60
    written = 0
    for tick in range(minutes * 12):
        ts = start + 5 * tick
        readings = [
            Reading(f"{p:08x}{tick:016x}", f"mon-{p}", f"P-{p}", ts, ts, VITALS | {"bp_dia": 80})
            for p in range(patients)
        ]
        batch = Batch(readings)
        step.process(batch)
        sink.write(batch)
        sink.flush()
        written += len(readings)
    return written


def is_heart_rate(resource: dict[str, Any]) -> bool:
    return any(c["code"] == HR for c in resource["code"]["coding"])


async def searches(url: str, codec: Codec, patients: int, count: int) -> dict[str, list[float]]:
    client = AsyncRedis.from_url(url)
    reader = FhirReader(client, Records(codec))
    timings: dict[str, list[float]] = {}
    rng = random.Random(7)

    async def timed(label: str, search: Search) -> Any:
        began = time.perf_counter()
        page = await reader.search(search)
        timings.setdefault(label, []).append((time.perf_counter() - began) * 1000)
        return page

    try:
        for _ in range(count):
            patient = f"P-{rng.randrange(patients)}"
            first = await timed("one patient, newest 50", Search("Observation", patient))
            assert first.total and len(first.resources) == 50, first.total
            await timed(
                "one patient, heart rates",
                Search("Observation", patient, match=is_heart_rate),
            )
            await timed(
                "one patient, second page", Search("Observation", patient, after=first.next)
            )
            await timed("every patient, newest 50", Search("Observation"))
    finally:
        await client.aclose()
    return timings


def redis_cpu_us(client: Redis) -> float:
    info: Any = client.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--searches", type=int, default=200)
    args = parser.parse_args()

    with private_store() as (settings, codec, url):
        client = Redis.from_url(url)
        memory, cpu = int(client.info("memory")["used_memory"]), redis_cpu_us(client)
        written = fill(client, settings, codec, args.patients, args.minutes)
        cpu = redis_cpu_us(client) - cpu
        memory = int(client.info("memory")["used_memory"]) - memory
        client.close()
        timings = asyncio.run(searches(url, codec, args.patients, args.searches))

    print(f"{written:,} readings of {args.patients} patients, {args.minutes} min each")
    print(
        f"redis per reading stored: {memory / written:,.0f} bytes of memory, "
        f"{cpu / written:.0f} us of CPU while writing"
    )
    for label, ms in timings.items():
        ms.sort()
        p99 = ms[min(len(ms) - 1, round(0.99 * len(ms)))]
        print(f"  {label:26s} p50 {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms")


if __name__ == "__main__":
    main()
