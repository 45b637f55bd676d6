"""What one filtered FHIR search may cost: a bounded scan per page, decrypted off the event loop.

The reader behind /fhir runs here in-process over a real redis-server, seeded
as in tests/api/fhir_seed.py (161 Observations of two patients), with a small scan limit
so that a search's window is larger than one page may scan.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from healthsync.domain.readings import Reading
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.fhir_order import Window
from healthsync.store.fhir_queries import FhirReader, Page, Search
from healthsync.store.records import Records
from tests.api.fhir_seed import HR, LOINC, Seed, at, seed_resources
from tests.conftest import clear_prefix, make_settings

SCAN_LIMIT = 40


class CountingRecords(Records):
    """The records codec, counting what it decrypts (per search, by the test)."""

    def __init__(self, codec: Codec) -> None:
        super().__init__(codec)
        self.opened = 0

    def decode_resource(self, key: str, raw: bytes) -> dict[str, Any]:
        self.opened += 1
        return super().decode_resource(key, raw)

    def decode_fhir_reading(self, key: str, raw: bytes) -> Reading:
        self.opened += 1
        return super().decode_fhir_reading(key, raw)


@dataclass
class Seeded:
    seed: Seed
    redis_url: str


@pytest.fixture(scope="module")
def seeded(broker: Service, redis_server: Service) -> Iterator[Seeded]:
    settings = make_settings(broker, redis_server)
    client = Redis.from_url(str(settings.redis.url))
    seed = Seed(Codec.from_settings(settings), client)
    seed_resources(seed)
    try:
        yield Seeded(seed, str(settings.redis.url))
    finally:
        clear_prefix(client, settings.redis.prefix)
        client.close()


def is_heart_rate(resource: dict[str, Any]) -> bool:
    return any(c["code"] == HR for c in resource["code"]["coding"])


def every_page(seeded: Seeded, search: Search) -> list[tuple[Page, int]]:
    """Each page of `search` (following `next`), with how many resources it decrypted."""

    async def run() -> list[tuple[Page, int]]:
        client = AsyncRedis.from_url(seeded.redis_url)
        records = CountingRecords(seeded.seed.codec)
        reader = FhirReader(client, records, max_scan=SCAN_LIMIT)
        pages: list[tuple[Page, int]] = []
        query = search
        try:
            while True:
                records.opened = 0
                page = await reader.search(query)
                pages.append((page, records.opened))
                if page.next is None or len(pages) > 100:
                    return pages
                query = Search(**{**_fields(query), "after": page.next})
        finally:
            await client.aclose()

    return asyncio.run(run())


def _fields(search: Search) -> dict[str, Any]:
    return {name: getattr(search, name) for name in Search.__slots__}


def test_a_filtered_search_wider_than_its_scan_limit_pages_through_every_match_once(
    seeded: Seeded,
) -> None:
    seed = seeded.seed
    expected = seed.expected("Observation", lambda s: (LOINC, HR) in s.codes())
    assert len(expected) == 50 and seed.count("Observation") > SCAN_LIMIT
    for newest_first in (True, False):
        search = Search("Observation", match=is_heart_rate, count=7, newest_first=newest_first)
        pages = every_page(seeded, search)
        ids = [r["id"] for page, _ in pages for r in page.resources]
        assert ids == (expected if newest_first else expected[::-1])
        # No page decrypted more than the limit, and none claims a total it did not count.
        assert max(opened for _, opened in pages) <= SCAN_LIMIT
        assert {page.total for page, _ in pages} == {None}
        assert all(len(page.resources) <= 7 for page, _ in pages)


def test_a_filtered_search_within_its_scan_limit_still_counts_its_matches(seeded: Seeded) -> None:
    seed = seeded.seed
    [(page, opened), *_] = every_page(
        seeded, Search("Observation", patient="P-B", match=is_heart_rate, count=5)
    )
    assert page.total == 20 and len(page.resources) == 5 and page.next is not None
    assert opened <= SCAN_LIMIT
    window = Window(at("2026-11-28T00:20Z"), math.inf)
    [(page, _), *_] = every_page(seeded, Search("Observation", window=window, match=is_heart_rate))
    assert page.total == seed.count(
        "Observation", lambda s: s.time >= window.start and (LOINC, HR) in s.codes()
    )
    # Without a filter only the page is decrypted, whatever the window holds.
    [(page, opened), *_] = every_page(seeded, Search("Observation", count=3))
    assert page.total == 161 and opened == 4


def test_other_requests_are_answered_while_a_search_is_decrypting(seeded: Seeded) -> None:
    """A search is held inside decryption; a read on the same event loop still completes."""
    entered, gate = threading.Event(), threading.Event()
    order: list[str] = []

    class Held(Records):
        held = False

        def decode_resource(self, key: str, raw: bytes) -> dict[str, Any]:
            if not Held.held:  # only the search's first resource waits
                Held.held = True
                entered.set()
                gate.wait(60)
            return super().decode_resource(key, raw)

    def watchdog() -> None:
        # Releases a search that blocked the event loop itself, so that the test ends.
        if not gate.wait(30):
            order.append("released by the watchdog")
            gate.set()

    async def run() -> None:
        client = AsyncRedis.from_url(seeded.redis_url)
        reader = FhirReader(client, Held(seeded.seed.codec), max_scan=SCAN_LIMIT * 10)
        try:
            search = asyncio.create_task(reader.search(Search("Observation", match=is_heart_rate)))
            await asyncio.to_thread(entered.wait, 60)
            patient = await reader.read("Patient", "P-A")
            assert patient is not None
            order.append("read answered")
            gate.set()
            page = await search
            order.append(f"search answered with {page.total}")
        finally:
            await client.aclose()

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    asyncio.run(run())
    guard.join()
    assert order == ["read answered", "search answered with 50"]
