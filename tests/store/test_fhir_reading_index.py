"""Searches over readings indexed once each, against a real redis-server.

The processor indexes a reading once (in the index of readings that make as
many Observations), not once per vital-sign Observation; the FHIR reader walks
those indexes together with the Observation index and rebuilds each reading's
Observations. What a client sees must not change: every Observation once, in
(time, id) order, page after page, with exact totals.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.fhir.observations import observations_for
from healthsync.security.codec import Codec
from healthsync.store.fhir_order import Window
from healthsync.store.fhir_queries import FhirReader, Page, Search
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.records import Records
from tests.api.fhir_seed import Seed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from fhir_trim import batch_of, write

# An hour ago, whole seconds: within the retention, so the writer's trim keeps it all.
T0 = float(int(time.time()) - 3600)
HR = "8867-4"
# Readings of one, two and five Observations (the BP panel is one), two devices at the
# same instants so that their Observations tie on time.
VITALS: tuple[dict[str, float], ...] = (
    {"heart_rate": 72},
    {"resp_rate": 16, "spo2": 97},
    {"heart_rate": 75, "spo2": 96, "temp": 36.8, "resp_rate": 15, "bp_sys": 120, "bp_dia": 80},
)


def reading_id(n: int) -> str:
    return f"{n:024x}"  # the shape of the reading ids ingest makes


def readings(patient: str, count: int, start: int = 0) -> list[Reading]:
    found = []
    for k in range(count):
        n = start + k
        ts = T0 + 5 * (n // 2)  # two readings at each instant
        found.append(Reading(reading_id(n), f"mon-{n % 2}", patient, ts, ts, VITALS[n % 3]))
    return found


def expected(
    codec: Codec,
    stored: list[Reading],
    keep: Callable[[dict[str, Any]], bool] = lambda r: True,
    others: Sequence[tuple[float, str]] = (),
) -> list[tuple[float, str]]:
    """P-1's Observations (and `others`), newest first: the readings' as they rebuild."""
    positions = [
        (r.ts, o["id"])
        for r in stored
        for o in observations_for(r, codec.id_key)
        if keep(o) and o["subject"]["reference"] == "Patient/P-1"
    ]
    return sorted([*positions, *others], reverse=True)


def news2_observations(redis: Redis, codec: Codec) -> list[tuple[float, str]]:
    """The NEWS2 Observations the processor stored whole for P-1, and their times."""
    key = codec.keys.fhir_index("Observation", "P-1")
    rows = cast("list[tuple[bytes, float]]", redis.zrange(key, 0, -1, withscores=True))
    return [(score, member.decode()) for member, score in rows]


def is_heart_rate(resource: dict[str, Any]) -> bool:
    return any(c["code"] == HR for c in resource["code"]["coding"])


def every_page(settings: Settings, codec: Codec, search: Search, max_scan: int) -> list[Page]:
    async def run() -> list[Page]:
        client = AsyncRedis.from_url(str(settings.redis.url))
        reader = FhirReader(client, Records(codec), max_scan=max_scan)
        pages: list[Page] = []
        query = search
        try:
            while True:
                pages.append(await reader.search(query))
                if pages[-1].next is None or len(pages) > 200:
                    return pages
                fields = {name: getattr(query, name) for name in Search.__slots__}
                query = Search(**{**fields, "after": pages[-1].next})
        finally:
            await client.aclose()

    return asyncio.run(run())


def ids(pages: list[Page]) -> list[str]:
    return [r["id"] for page in pages for r in page.resources]


@pytest.fixture
def stored(settings: Settings, redis: Redis, codec: Codec) -> list[Reading]:
    """60 readings of P-1 and 30 of P-2, written by the processor's FHIR sink."""
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    written = readings("P-1", 60) + readings("P-2", 30, start=1000)
    for start in range(0, len(written), 25):
        write(sink, batch_of(written[start : start + 25]))
    return written


def test_a_reading_is_one_index_entry_however_many_observations_it_makes(
    stored: list[Reading], redis: Redis, codec: Codec
) -> None:
    keys = codec.keys

    def members(key: str) -> set[str]:
        return {m.decode() for m in cast("list[bytes]", redis.zrange(key, 0, -1))}

    p1 = [r for r in stored if r.patient_id == "P-1"]
    by_count = {n: {r.reading_id for r in p1 if len(observations_for(r)) == n} for n in (1, 2, 5)}
    for n, expected_ids in by_count.items():
        assert members(keys.fhir_reading_index(n, "P-1")) == expected_ids
    assert members(keys.fhir_reading_index(5)) >= by_count[5]
    # None of their Observations is indexed one by one any more: only the NEWS2 ones,
    # which are stored whole.
    stored_whole = members(keys.fhir_index("Observation", "P-1"))
    assert stored_whole and all(m.startswith("news2-") for m in stored_whole)


@pytest.mark.parametrize("newest_first", [True, False])
def test_every_observation_once_in_time_order_with_exact_totals(
    stored: list[Reading], settings: Settings, redis: Redis, codec: Codec, newest_first: bool
) -> None:
    want = [i for _, i in expected(codec, stored, others=news2_observations(redis, codec))]
    if not newest_first:
        want.reverse()
    # Seven per page: pages end inside a reading's five Observations and inside ties.
    pages = every_page(
        settings, codec, Search("Observation", "P-1", count=7, newest_first=newest_first), 5000
    )
    assert ids(pages) == want
    assert {page.total for page in pages} == {len(want)}
    assert all(len(page.resources) == 7 for page in pages[:-1])


def test_filtered_searches_count_within_the_scan_limit_and_page_past_it(
    stored: list[Reading], settings: Settings, redis: Redis, codec: Codec
) -> None:
    want = [i for _, i in expected(codec, stored, is_heart_rate)]
    [first, *_] = every_page(
        settings, codec, Search("Observation", "P-1", match=is_heart_rate, count=3), 5000
    )
    assert first.total == len(want) == 40
    # A scan limit below the window's Observations: pages without a total, every match once.
    pages = every_page(
        settings, codec, Search("Observation", "P-1", match=is_heart_rate, count=3), 12
    )
    assert ids(pages) == want
    assert {page.total for page in pages} == {None}
    window = Window(T0 + 50, T0 + 100)
    everything = expected(codec, stored, others=news2_observations(redis, codec))
    inside = [i for t, i in everything if window.start <= t < window.end]
    pages = every_page(settings, codec, Search("Observation", "P-1", window, count=4), 5000)
    assert ids(pages) == inside and pages[0].total == len(inside)


def test_observations_indexed_one_by_one_before_still_read_and_count_once(
    stored: list[Reading], settings: Settings, redis: Redis, codec: Codec
) -> None:
    """Redis written before this layout holds each Observation in the Observation index;
    they stay searchable for the retention, among the new entries, and a NEWS2
    Observation stored whole sits among them too."""
    keys = codec.keys
    news2s = news2_observations(redis, codec)
    old = [r for r in stored if r.patient_id == "P-1"][:20]
    for reading in old:
        observations = observations_for(reading, codec.id_key)
        redis.zrem(keys.fhir_reading_index(len(observations), "P-1"), reading.reading_id)
        redis.zadd(
            keys.fhir_index("Observation", "P-1"), {o["id"]: reading.ts for o in observations}
        )
    news2 = {
        "resourceType": "Observation",
        "id": "news2-p1-early",
        "subject": {"reference": "Patient/P-1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "1104051000000101"}]},
    }
    Seed(codec, redis).put(news2, T0 + 10, "P-1")
    want = expected(codec, stored, others=[*news2s, (T0 + 10, "news2-p1-early")])
    pages = every_page(settings, codec, Search("Observation", "P-1", count=6), 5000)
    assert ids(pages) == [i for _, i in want]
    assert pages[0].total == len(want)


def test_a_reading_gone_with_the_retention_is_skipped(
    stored: list[Reading], settings: Settings, redis: Redis, codec: Codec
) -> None:
    gone = [r for r in stored if r.patient_id == "P-1"][10:13]
    for reading in gone:
        redis.delete(codec.keys.fhir_reading(reading.reading_id))
    left = [r for r in stored if r not in gone]
    pages = every_page(settings, codec, Search("Observation", "P-1", count=4), 5000)
    want = expected(codec, left, others=news2_observations(redis, codec))
    assert ids(pages) == [i for _, i in want]
    # With a scan limit of 3 the pages stop every reading or so, at gone ones too, and
    # following them still reaches every match.
    pages = every_page(
        settings, codec, Search("Observation", "P-1", match=is_heart_rate, count=2), 3
    )
    assert ids(pages) == [i for _, i in expected(codec, left, is_heart_rate)]
