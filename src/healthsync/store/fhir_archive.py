"""Vital-sign Observations older than Redis keeps, rebuilt from the archive for FHIR search.

A vital-sign Observation is a pure function of its reading
(:func:`healthsync.fhir.observations.observations_for`), which is how the live
store serves them too; so one rebuilt from an archived reading has the id and
content it had while live. A search that names a patient and a date with a
lower bound reaching past Redis's retention (less the seam margin of
:mod:`healthsync.store.vitals_history`) reads that part of the window from the
archive; the Observations Redis still indexes are left to Redis, so none comes
twice. NEWS2 scores are not archived: those Observations end with the retention.

The merge keeps the live page's order and cursor: the archived part is read
whole (at most ``max_scan`` Observations, else :class:`ArchiveTooCostly`),
and a page is cut where the live page ends
whenever the live store has more after it, so the next page misses nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import cast

from redis.asyncio import Redis

from healthsync.domain.readings import VITALS, Reading
from healthsync.errors import HealthSyncError
from healthsync.fhir.ids import reading_of_observation
from healthsync.fhir.observations import observations_for
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.fhir_order import Position, beyond, indexes_of
from healthsync.store.fhir_queries import Page, Resource, Search
from healthsync.store.records import Records
from healthsync.store.vitals_history import MAX_SPAN_DAYS, SEAM_MARGIN_S

Entry = tuple[Position, Resource]
# What one request may rebuild from the archive: the archived part is read whole.
MAX_SCAN = 100_000


class ArchiveTooCostly(HealthSyncError):
    """A search would read more of the archive than one request may."""

    @classmethod
    def scan(cls, found: int, limit: int) -> ArchiveTooCostly:
        return cls(
            f"more than {limit} archived Observations in the searched window ({found} so far); "
            "narrow the date"
        )

    @classmethod
    def span(cls, days: float) -> ArchiveTooCostly:
        return cls(
            f"the date reaches {days:.0f} days into the archive, which a search may read "
            f"{MAX_SPAN_DAYS} days of; narrow the date"
        )


class ArchivedObservations:
    def __init__(
        self,
        archive: ArchiveReader,
        client: Redis,
        records: Records,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.archive = archive
        self.client = client
        self.keys = records.keys
        self.retention_s = retention_s
        # The key live Observation ids are derived with, so rebuilt ones keep their ids.
        self.id_key = records.codec.id_key
        self.max_scan = MAX_SCAN
        self.clock = clock

    def _seam(self) -> float:
        return self.clock() - self.retention_s + SEAM_MARGIN_S

    def reaches(self, query: Search) -> bool:
        """Whether the search needs the archive: Observations of one patient, a window
        starting before what Redis keeps."""
        window = query.window
        return (
            query.resource_type == "Observation"
            and query.patient is not None
            and not window.empty
            and -math.inf < window.start < self._seam()
        )

    async def search(self, query: Search, patient_id: str, live: Page) -> Page:
        """The live page merged with the archive's Observations of the patient (`patient_id`
        as devices sent it; `query.patient` is its FHIR id)."""
        archived = await self._archived(query, patient_id)
        after = query.after
        newer = query.newest_first
        candidates = [e for e in archived if after is None or beyond(e[0], after, newer)]
        if live.next is not None:
            # The live store has more after its page, which may hold nothing (its scan
            # ran out): nothing beyond where it stopped yet.
            candidates = [e for e in candidates if not beyond(e[0], live.next, newer)]
        candidates += [(_position(r), r) for r in live.resources]
        candidates.sort(key=lambda e: e[0], reverse=newer)
        page = candidates[: query.count]
        following = page[-1][0] if len(candidates) > query.count else live.next
        total = None if live.total is None else live.total + len(archived)
        return Page(total, [r for _, r in page], following)

    async def _archived(self, query: Search, patient_id: str) -> list[Entry]:
        """The window's Observations older than the seam that Redis does not index."""
        # Nothing was archived before 1970.
        start, end = max(query.window.start, 0.0), min(query.window.end, self._seam())
        if start >= end or query.patient is None:
            return []
        if end - start > MAX_SPAN_DAYS * 86_400:  # a window opening in year 1000 read for ~1 min
            raise ArchiveTooCostly.span((end - start) / 86_400)
        points = await asyncio.to_thread(self.archive.readings, patient_id, start, end)
        found: list[Entry] = []
        for point in points:
            vitals = {k: v for k, v in point["vitals"].items() if k in VITALS}
            reading = Reading(
                point["reading_id"],
                point["device_id"],
                patient_id,
                point["ts"],
                point["ts"],
                vitals,
            )
            for resource in observations_for(reading, self.id_key):
                position = _position(resource)
                if not start <= position.time < end:
                    continue
                if query.match is None or query.match(resource):
                    found.append((position, resource))
            if len(found) > self.max_scan:
                raise ArchiveTooCostly.scan(len(found), self.max_scan)
        if not found:
            return []
        # Redis indexes an Observation under its own id, or its reading under the reading's.
        low, high = found[0][0].time - 1, found[-1][0].time + 1
        pipe = self.client.pipeline(transaction=False)
        for index in indexes_of(self.keys, "Observation", query.patient):
            pipe.zrangebyscore(index.key, low, high)
        live = cast("list[list[bytes]]", await pipe.execute())
        in_redis = {member.decode() for members in live for member in members}
        return [
            e
            for e in found
            if e[0].resource_id not in in_redis
            and reading_of_observation(e[0].resource_id) not in in_redis
        ]


def _position(resource: Resource) -> Position:
    # The live index scores an Observation by the instant its effectiveDateTime names.
    when = datetime.fromisoformat(str(resource["effectiveDateTime"])).timestamp()
    return Position(when, str(resource["id"]))
