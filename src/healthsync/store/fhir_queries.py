"""Reads and searches of the FHIR resources kept in Redis, for the FHIR API (asyncio).

The layout is :class:`healthsync.names.RedisKeys`: each resource's JSON under
``fhir:{type}:{id}``, and sorted sets of ids scored by the resource's time,
one across patients and one per patient. A search walks one index in time
order within a window, loads the resources and keeps those a predicate
accepts. A page ends at a (time, id) position and the next page starts just
after it, so resources that arrive between two pages neither repeat nor shift
the results. Stored JSON is opened through the records' codec.

Opening is the costly part (AES-GCM-SIV, then JSON), so it runs on a few
worker threads, not on the event loop, and a filtered search opens at most
``max_scan`` resources per page: a window wider than that is read a page's
scan at a time, each page ending where its scan ended.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
from anyio import to_thread
from redis.asyncio import Redis

from healthsync.fhir.ids import reading_of_observation
from healthsync.fhir.observations import observations_for
from healthsync.store.multi import aget_many
from healthsync.store.records import Records

Resource = dict[str, Any]
Predicate = Callable[[Resource], bool]

# Scores are float seconds; a resource shows its time rounded to the microsecond
# (e.g. effectiveDateTime), so bounds move by half a microsecond to agree with it.
_HALF_MICROSECOND = 0.5e-6
# Ids fetched per round trip while a filtered search scans its window.
_SCAN_CHUNK = 1000
# Up to this many values are opened on the event loop (a read by id, a small
# page): a thread hop would cost more than the work.
_INLINE = 16

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Window:
    """The resource times (epoch seconds) a search accepts: ``start <= time < end``."""

    start: float = -math.inf
    end: float = math.inf

    def narrow(self, start: float = -math.inf, end: float = math.inf) -> Window:
        return Window(max(self.start, start), min(self.end, end))

    @property
    def empty(self) -> bool:
        return self.start >= self.end


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in an index: a resource's score and id, in the index's own order."""

    time: float
    resource_id: str


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

        Without a predicate only the page is read and the total is the index's
        count in the window. With one, a window of at most `max_scan` resources
        is read whole to count the matches; a wider one is scanned from
        `query.after` for at most `max_scan` resources, the total is None, and
        a page whose scan ran out before it filled ends (shorter, maybe empty)
        at the last resource scanned, so following `next` reaches every match.
        """
        if query.window.empty:
            return Page(0, [], None)
        index = self.keys.fhir_index(query.resource_type, query.patient)
        in_window = int(await self.client.zcount(index, *_score_bounds(query.window)))
        wanted = query.count + 1  # one more than the page tells whether a next page exists
        total: int | None
        if query.match is None:
            total = in_window
            found = await self._page(index, query, wanted) if query.count > 0 and in_window else []
        elif in_window <= self.max_scan:
            total, found = await self._matches(index, query, query.match, wanted)
        elif query.count == 0:
            return Page(None, [], None)  # counting would open the whole window
        else:
            found, scanned_to = await self._scan(index, query, query.match, wanted)
            if len(found) < wanted and scanned_to is not None:
                return Page(None, [resource for _, resource in found], scanned_to)
            total = None
        page = found[: query.count]
        following = page[-1][0] if len(found) > query.count and page else None
        return Page(total, [resource for _, resource in page], following)

    async def _page(
        self, index: str, query: Search, wanted: int
    ) -> list[tuple[Position, Resource]]:
        """Up to `wanted` resources after `query.after`: only what the page needs is read."""
        found: list[tuple[Position, Resource]] = []
        batches = self._walk(index, query, query.after, chunk=wanted)
        async with aclosing(batches):
            async for batch, _, _ in batches:
                found.extend(batch[: wanted - len(found)])
                if len(found) == wanted:
                    break
        return found

    async def _matches(
        self, index: str, query: Search, match: Predicate, wanted: int
    ) -> tuple[int, list[tuple[Position, Resource]]]:
        """How many resources in the window match, and up to `wanted` of them after `after`."""
        total = 0
        found: list[tuple[Position, Resource]] = []
        after = query.after
        async for batch, _, _ in self._walk(index, query, None, chunk=_SCAN_CHUNK):
            for position, resource in batch:
                if not match(resource):
                    continue
                total += 1
                if len(found) < wanted and (
                    after is None or _beyond(position, after, query.newest_first)
                ):
                    found.append((position, resource))
        return total, found

    async def _scan(
        self, index: str, query: Search, match: Predicate, wanted: int
    ) -> tuple[list[tuple[Position, Resource]], Position | None]:
        """Up to `wanted` matches after `query.after`, opening at most `max_scan` resources.

        Also the last position scanned when the scan stopped at its limit with
        more of the window possibly left (None when it reached the window's end).
        """
        found: list[tuple[Position, Resource]] = []
        budget = self.max_scan
        batches = self._walk(index, query, query.after, chunk=min(_SCAN_CHUNK, budget))
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
        self, index: str, query: Search, after: Position | None, chunk: int
    ) -> AsyncGenerator[tuple[list[tuple[Position, Resource]], list[Position], bool], None]:
        """The window's resources in the search's order, from just after `after`, in batches.

        Each batch comes with the positions it scanned (some resources may have
        expired) and whether the window may hold more after them.
        """
        low, high = _score_bounds(query.window, after, query.newest_first)
        offset = 0
        while True:
            if query.newest_first:
                found = await self.client.zrevrangebyscore(
                    index, high, low, start=offset, num=chunk, withscores=True
                )
            else:
                found = await self.client.zrangebyscore(
                    index, low, high, start=offset, num=chunk, withscores=True
                )
            rows = cast("list[tuple[bytes, float]]", found)
            offset += len(rows)
            positions = [Position(float(score), member.decode()) for member, score in rows]
            if after is not None:
                # The range starts at `after`'s score: drop the ties up to and including it.
                positions = [p for p in positions if _beyond(p, after, query.newest_first)]
            more = len(rows) == chunk
            yield await self._load(query.resource_type, positions), positions, more
            if not more:
                return

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
        work: Callable[[T, list[str], list[bytes | None]], dict[str, Resource]],
        ids: T,
        keys: list[str],
        docs: list[bytes | None],
    ) -> dict[str, Resource]:
        """`work` on one of the reader's threads, or here when there is little to open."""
        if len(keys) <= _INLINE:
            return work(ids, keys, docs)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await to_thread.run_sync(work, ids, keys, docs, limiter=self._limiter)


def _score_bounds(
    window: Window, after: Position | None = None, newest_first: bool = True
) -> tuple[str, str]:
    """ZRANGEBYSCORE bounds for ``start <= time < end``, from `after`'s score if given."""
    start = window.start - _HALF_MICROSECOND
    end = window.end - _HALF_MICROSECOND
    low = "-inf" if start == -math.inf else repr(start)
    high = "+inf" if end == math.inf else f"({end!r}"
    if after is not None:
        # Inclusive: resources tied with `after` on time may come after it by id.
        if newest_first and after.time < end:
            high = repr(after.time)
        elif not newest_first and after.time >= start:
            low = repr(after.time)
    return low, high


def _beyond(position: Position, after: Position, newest_first: bool) -> bool:
    """Whether `position` comes after `after` in the search's order."""
    return position < after if newest_first else position > after
