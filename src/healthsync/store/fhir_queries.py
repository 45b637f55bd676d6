"""Reads and searches of the FHIR resources kept in Redis, for the FHIR API (asyncio).

The layout is :class:`healthsync.names.RedisKeys`: each resource's JSON under
``fhir:{type}:{id}``, and sorted sets of ids scored by the resource's time,
one across patients and one per patient; vital-sign Observations are rebuilt
from their readings, which are indexed once each (:mod:`.fhir_order`). A
search walks its indexes in time order within a window, loads the resources
and keeps those a predicate accepts. A page ends at a (time, id) position and
the next page starts just after it, so resources that arrive between two pages
neither repeat nor shift the results. Stored JSON is opened through the records' codec.

Opening is the costly part (AES-GCM-SIV, then JSON), so it runs on a few
worker threads, not on the event loop, and a filtered search opens at most
``max_scan`` resources per page: a window wider than that is read a page's
scan at a time, each page ending where its scan ended.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
from anyio import to_thread
from redis.asyncio import Redis

from healthsync.fhir.ids import reading_of_observation
from healthsync.fhir.observations import observations_for
from healthsync.store.fhir_order import (
    Cursor,
    Index,
    Position,
    Window,
    beyond,
    indexes_of,
    may_pass,
    members_for,
    merge,
    score_bounds,
)
from healthsync.store.multi import aget_many
from healthsync.store.records import Records

Resource = dict[str, Any]
Predicate = Callable[[Resource], bool]

# Ids fetched per round trip while a filtered search scans its window.
_SCAN_CHUNK = 1000
# Up to this many values are opened on the event loop (a read by id, a small
# page): a thread hop would cost more than the work.
_INLINE = 16

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Search:
    """One search over one resource type's index."""

    resource_type: str
    patient: str | None = None
    window: Window = field(default_factory=Window)
    newest_first: bool = True
    count: int = 50
    after: Position | None = None
    # Filters on the loaded resource; None means every resource in the window matches.
    match: Predicate | None = None


@dataclass(frozen=True, slots=True)
class Page:
    # How many resources match in the whole window; None when a filtered search's
    # window is wider than one page may scan, so they were not all counted.
    total: int | None
    resources: list[Resource]
    # The position the following page starts after; None on the last page.
    next: Position | None


Entries = list[tuple[Position, Resource]]


class FhirReader:
    def __init__(
        self, client: Redis, records: Records, max_scan: int = 5_000, threads: int = 2
    ) -> None:
        self.client = client
        self.records = records
        self.keys = records.keys
        # Filters apply to opened resources: this bounds what one page may open.
        self.max_scan = max_scan
        # Opening runs on at most this many threads at once, whatever the requests.
        self.threads = threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def read(self, resource_type: str, resource_id: str) -> Resource | None:
        found = await self._load(resource_type, [Position(0.0, resource_id)])
        return found[0][1] if found else None

    async def search(self, query: Search) -> Page:
        """The page after `query.after` of the matches in the window, in time order.

        Without a predicate only the page is read and the total is the indexes'
        count in the window (a reading's entry counting as its Observations).
        With one, a window of at most `max_scan` resources is read whole to
        count the matches; a wider one is scanned from `query.after` for at
        most `max_scan` resources, the total is None, and a page whose scan ran
        out before it filled ends (shorter, maybe empty) at the last resource
        scanned, so following `next` reaches every match.
        """
        if query.window.empty:
            return Page(0, [], None)
        indexes, counts = await self._counted(query)
        in_window = sum(i.per_member * n for i, n in zip(indexes, counts, strict=True))
        indexes = [i for i, n in zip(indexes, counts, strict=True) if n]
        wanted = query.count + 1  # one more than the page tells whether a next page exists
        total: int | None
        if query.match is None:
            total = in_window
            wanted_any = query.count > 0 and in_window > 0
            found = await self._page(indexes, query, wanted) if wanted_any else []
        elif in_window <= self.max_scan:
            total, found = await self._matches(indexes, query, query.match, wanted)
        elif query.count == 0:
            return Page(None, [], None)  # counting would open the whole window
        else:
            found, scanned_to = await self._scan(indexes, query, query.match, wanted)
            if len(found) < wanted and scanned_to is not None:
                return Page(None, [resource for _, resource in found], scanned_to)
            total = None
        page = found[: query.count]
        following = page[-1][0] if len(found) > query.count and page else None
        return Page(total, [resource for _, resource in page], following)

    async def _counted(self, query: Search) -> tuple[list[Index], list[int]]:
        """The indexes `query` walks, and how many members each has in its window."""
        indexes = indexes_of(self.keys, query.resource_type, query.patient)
        bounds = score_bounds(query.window)
        pipe = self.client.pipeline(transaction=False)
        for index in indexes:
            pipe.zcount(index.key, *bounds)
        return indexes, [int(n) for n in await pipe.execute()]

    async def _page(self, indexes: list[Index], query: Search, wanted: int) -> Entries:
        """Up to `wanted` resources after `query.after`: only what the page needs is read."""
        found: Entries = []
        batches = self._walk(indexes, query, query.after, chunk=wanted)
        async with aclosing(batches):
            async for batch, _, _ in batches:
                found.extend(batch[: wanted - len(found)])
                if len(found) == wanted:
                    break
        return found

    async def _matches(
        self, indexes: list[Index], query: Search, match: Predicate, wanted: int
    ) -> tuple[int, Entries]:
        """How many resources in the window match, and up to `wanted` of them after `after`."""
        total = 0
        found: Entries = []
        after = query.after
        async for batch, _, _ in self._walk(indexes, query, None, chunk=_SCAN_CHUNK):
            for position, resource in batch:
                if not match(resource):
                    continue
                total += 1
                if len(found) < wanted and (
                    after is None or beyond(position, after, query.newest_first)
                ):
                    found.append((position, resource))
        return total, found

    async def _scan(
        self, indexes: list[Index], query: Search, match: Predicate, wanted: int
    ) -> tuple[Entries, Position | None]:
        """Up to `wanted` matches after `query.after`, opening at most `max_scan` resources.

        Also the last position scanned when the scan stopped at its limit with
        more of the window possibly left (None when it reached the window's end).
        """
        found: Entries = []
        budget = self.max_scan
        batches = self._walk(indexes, query, query.after, chunk=min(_SCAN_CHUNK, budget))
        async with aclosing(batches):
            async for batch, scanned, more in batches:
                budget -= len(scanned)
                for position, resource in batch:
                    if match(resource):
                        found.append((position, resource))
                        if len(found) == wanted:
                            return found, None
                if budget <= 0 and more and scanned:
                    return found, scanned[-1]
        return found, None

    async def _walk(
        self, indexes: list[Index], query: Search, after: Position | None, chunk: int
    ) -> AsyncGenerator[tuple[Entries, list[Position], bool], None]:
        """The window's resources in the search's order, from just after `after`, in batches.

        The indexes are merged by (time, member): a reading's Observation ids
        are its id and a suffix, and reading ids are all as long, so that is
        the order of (time, resource id) of what they stand for. Each batch
        comes with the positions it scanned (some resources may have expired)
        and whether the window may hold more after them.
        """
        low, high = score_bounds(query.window, after, query.newest_first)
        cursors = [Cursor(index) for index in indexes]
        while True:
            await self._fill(
                [c for c in cursors if not c.rows and not c.exhausted], low, high, query, chunk
            )
            taken = merge(cursors, chunk, query.newest_first)
            more = any(c.rows or not c.exhausted for c in cursors)
            if after is not None:
                # The range starts at `after`'s score: drop the ties up to and including it.
                taken = [t for t in taken if may_pass(t, after, query.newest_first)]
            found, scanned = await self._entries(query, taken)
            if after is not None:  # and a reading's Observations up to it
                found = [e for e in found if beyond(e[0], after, query.newest_first)]
                scanned = [p for p in scanned if beyond(p, after, query.newest_first)]
            yield found, scanned, more
            if not more:
                return

    async def _fill(
        self, cursors: list[Cursor], low: str, high: str, query: Search, chunk: int
    ) -> None:
        """The members of each of these cursors' indexes for the next `chunk` resources,
        in one round trip."""
        if not cursors:
            return
        pipe = self.client.pipeline(transaction=False)
        sizes = [members_for(cursor.index, chunk) for cursor in cursors]
        for cursor, num in zip(cursors, sizes, strict=True):
            key, offset = cursor.index.key, cursor.offset
            if query.newest_first:
                pipe.zrevrangebyscore(key, high, low, start=offset, num=num, withscores=True)
            else:
                pipe.zrangebyscore(key, low, high, start=offset, num=num, withscores=True)
        for cursor, num, found in zip(cursors, sizes, await pipe.execute(), strict=True):
            rows = cast("list[tuple[bytes, float]]", found)
            cursor.offset += len(rows)
            cursor.rows.extend((float(score), member.decode()) for member, score in rows)
            cursor.exhausted = len(rows) < num

    async def _entries(
        self, query: Search, taken: list[tuple[float, str, Index]]
    ) -> tuple[Entries, list[Position]]:
        """The resources the members taken stand for, and the positions scanned, in order.

        A reading's position is its Observations'; one that has expired (with
        the retention) is scanned at its own id, which comes before theirs.
        """
        stored = [Position(score, member) for score, member, index in taken if not index.readings]
        readings = {member: score for score, member, index in taken if index.readings}
        found = await self._load(query.resource_type, stored)
        scanned = list(stored)
        if readings:
            rebuilt, missing = await self._expand(readings)
            found += rebuilt
            scanned += [position for position, _ in rebuilt]
            scanned += [Position(readings[r], r) for r in missing]
            found.sort(key=lambda e: e[0], reverse=query.newest_first)
            scanned.sort(reverse=query.newest_first)
        return found, scanned

    async def _expand(self, readings: dict[str, float]) -> tuple[Entries, list[str]]:
        """Every vital-sign Observation of these readings (reading id -> its index score),
        rebuilt at that score; and the readings no longer stored."""
        ids = list(readings)
        keys = [self.keys.fhir_reading(r) for r in ids]
        docs = await aget_many(self.client, keys)
        missing = [r for r, doc in zip(ids, docs, strict=True) if doc is None]
        scores = [readings[r] for r in ids]
        return await self._off_loop(self._rebuild_all, scores, keys, docs), missing

    def _rebuild_all(
        self, scores: list[float], keys: list[str], docs: list[bytes | None]
    ) -> Entries:
        rebuilt: Entries = []
        id_key = self.records.codec.id_key
        for score, key, doc in zip(scores, keys, docs, strict=True):
            if doc is None:
                continue
            reading = self.records.decode_fhir_reading(key, doc)
            for resource in observations_for(reading, id_key):
                rebuilt.append((Position(score, resource["id"]), resource))
        return rebuilt

    async def _load(
        self, resource_type: str, positions: list[Position]
    ) -> list[tuple[Position, Resource]]:
        """The resources at these positions; an id whose resource has expired is skipped."""
        if not positions:
            return []
        ids = [p.resource_id for p in positions]
        found = await self._rebuilt(ids) if resource_type == "Observation" else {}
        stored = [i for i in ids if i not in found]
        if stored:
            keys = [self.keys.fhir(resource_type, i) for i in stored]
            docs = await aget_many(self.client, keys)
            found.update(await self._off_loop(self._open_resources, stored, keys, docs))
        return [(p, found[p.resource_id]) for p in positions if p.resource_id in found]

    def _open_resources(
        self, ids: list[str], keys: list[str], docs: list[bytes | None]
    ) -> dict[str, Resource]:
        decode = self.records.decode_resource
        return {i: decode(key, doc) for i, key, doc in zip(ids, keys, docs, strict=True) if doc}

    async def _rebuilt(self, ids: list[str]) -> dict[str, Resource]:
        """Vital-sign Observations, rebuilt from the readings they were made from."""
        readings = {rid for rid in map(reading_of_observation, ids) if rid is not None}
        if not readings:
            return {}
        keys = [self.keys.fhir_reading(r) for r in sorted(readings)]
        docs = await aget_many(self.client, keys)
        return await self._off_loop(self._rebuild, set(ids), keys, docs)

    def _rebuild(
        self, wanted: set[str], keys: list[str], docs: list[bytes | None]
    ) -> dict[str, Resource]:
        rebuilt: dict[str, Resource] = {}
        id_key = self.records.codec.id_key
        for key, doc in zip(keys, docs, strict=True):
            if doc is None:
                continue  # expired with the retention
            reading = self.records.decode_fhir_reading(key, doc)
            for resource in observations_for(reading, id_key):
                if resource["id"] in wanted:
                    rebuilt[resource["id"]] = resource
        return rebuilt

    async def _off_loop(
        self,
        work: Callable[[T, list[str], list[bytes | None]], R],
        ids: T,
        keys: list[str],
        docs: list[bytes | None],
    ) -> R:
        """`work` on one of the reader's threads, or here when there is little to open."""
        if len(keys) <= _INLINE:
            return work(ids, keys, docs)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await to_thread.run_sync(work, ids, keys, docs, limiter=self._limiter)
