"""One patient's readings for any period, a page at a time: Redis for the recent day, the archive
before it, read as one ordered list.

Redis keeps every reading of the last ``redis.history_retention_s``; the archive
keeps all of them, a roll (about a minute) behind. So a period is read from
Redis, and the part of it older than the retention (less :data:`SEAM_MARGIN_S`,
for the trim interval and clocks) from the archive too. Where both answer, a
reading is taken once, by its id, Redis's copy winning.

Readings are ordered by (time in milliseconds, reading id): the archive keeps
milliseconds, so both copies of a reading sort alike and fall in the same
window. A page is the readings after a :class:`Position` (the last one the
previous page returned), found by walking the period forward in windows that
grow while they come back sparse: a page reads about what it returns, plus at
most one window, never the whole period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.queries import LiveReader

# Redis is trimmed at most once a minute and the API's clock may differ from the
# processor's: the archive is also read for this much of the period past the retention.
SEAM_MARGIN_S = 900
# The longest period one request may read: the history is read a window, and the
# archive a day, at a time, so a period ending in the year 9999 tied a worker up for
# minutes, or for good. The history routes and FHIR search both hold to it.
MAX_SPAN_DAYS = 366
_FIRST_WINDOW_MS = 3_600_000
_LARGEST_WINDOW_MS = 7 * 24 * 3_600_000
# A Redis window holds at most the retention's readings of one patient.
_LIVE_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where a reading sorts: its time in milliseconds, then its id."""

    ts_ms: int
    reading_id: str


def position_of(point: dict[str, Any]) -> Position:
    return Position(round(point["ts"] * 1000), point["reading_id"])


@dataclass(frozen=True, slots=True)
class Request:
    """One page's question: a patient, an optional vital, a period (epoch seconds, inclusive)."""

    patient_id: str
    vital: str | None
    since: float
    until: float
    limit: int
    after: Position | None = None


class VitalsHistory:
    """The live store and the archive, paged as one list of readings."""

    def __init__(
        self,
        live: LiveReader,
        archive: ArchiveReader | None,
        retention_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.live = live
        self.archive = archive
        self.retention_s = retention_s
        self.clock = clock

    async def page(self, request: Request) -> tuple[list[dict[str, Any]], Position | None]:
        """Up to `limit` readings after `after`, oldest first, and the next page's position
        (None when the period holds no more).

        Raises :class:`healthsync.store.archive.errors.ArchiveReadError` (naming the
        object) when an archived object the period needs cannot be read.
        """
        after, limit = request.after, request.limit
        low = round(request.since * 1000)
        if after is not None:
            low = max(low, after.ts_ms)
        high = round(request.until * 1000)
        seam = round((self.clock() - self.retention_s + SEAM_MARGIN_S) * 1000)
        found: list[dict[str, Any]] = []
        window = _FIRST_WINDOW_MS
        while low <= high and len(found) <= limit:
            end = min(high, low + window - 1)
            points = await self._window(request, (low, end), seam)
            found += [p for p in points if after is None or position_of(p) > after]
            if len(points) < (limit - len(found)) // 2:
                window = min(window * 2, _LARGEST_WINDOW_MS)
            low = end + 1
        if len(found) > limit:
            return found[:limit], position_of(found[limit - 1])
        return found, None

    async def _window(
        self, request: Request, span: tuple[int, int], seam: int
    ) -> list[dict[str, Any]]:
        """The readings whose millisecond time lies in `span` (inclusive), ordered."""
        low, high = span
        patient, vital = request.patient_id, request.vital
        # Redis keeps sub-millisecond times: a millisecond of slack, then the same cut.
        live = await self.live.history(
            patient, vital, (low - 1) / 1000, (high + 1) / 1000, _LIVE_LIMIT
        )
        merged: dict[str, dict[str, Any]] = {}
        if self.archive is not None and low <= seam:
            until = min(high, seam) / 1000
            archived = await asyncio.to_thread(
                self.archive.readings, patient, low / 1000, until, vital
            )
            merged = {point["reading_id"]: point for point in archived}
        merged.update(
            (point["reading_id"], point)
            for point in live
            if low <= round(point["ts"] * 1000) <= high
        )
        return sorted(merged.values(), key=position_of)
