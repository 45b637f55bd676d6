"""One patient's readings and trends for any period: Redis for the recent day, the archive before.

The two overlap (the archive has everything it rolled, Redis the last day), so
points are merged by reading id: ordered by time, none twice across the seam.
Hourly and daily trends take the whole buckets the latest `trends` job run
covered from its output (:mod:`healthsync.store.precomputed`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from healthsync.domain.stats import buckets
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.precomputed import TrendRuns
from healthsync.store.queries import LiveReader

# Redis holds a day of readings per patient; enough to read them all at once.
_LIVE_LIMIT = 1_000_000


class History:
    """The live store and the archive, read as one."""

    def __init__(
        self,
        live: LiveReader,
        archive: ArchiveReader | None,
        precomputed: TrendRuns | None = None,
    ) -> None:
        self.live = live
        self.archive = archive
        self.precomputed = precomputed

    async def readings(
        self, patient_id: str, vital: str | None, period: tuple[float, float]
    ) -> list[dict[str, Any]]:
        """Every reading of the patient in the period (epoch seconds), oldest first."""
        since, until = period
        recent = await self.live.history(patient_id, vital, since, until, _LIVE_LIMIT)
        older: list[dict[str, Any]] = []
        if self.archive is not None:
            older = await asyncio.to_thread(self.archive.readings, patient_id, since, until, vital)
        merged = {point["reading_id"]: point for point in older}
        merged.update((point["reading_id"], point) for point in recent)
        return sorted(merged.values(), key=lambda p: (p["ts"], p["reading_id"]))

    async def trends(
        self, patient_id: str, vital: str, period: tuple[float, float], bucket_s: int
    ) -> list[dict[str, Any]]:
        """Per-bucket count, min, max, mean and median of one vital over the period."""
        return (await self.trends_from(patient_id, vital, period, bucket_s))[0]

    async def trends_from(
        self, patient_id: str, vital: str, period: tuple[float, float], bucket_s: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """As :meth:`trends`, and which precomputed run answered part of it (None: none).

        The whole buckets of the period that the latest `trends` run covered
        come from its output; the rest (the edges, the hours since it ran,
        5-minute buckets) is computed here, the same way.
        """
        since, until = period
        found = None
        if self.precomputed is not None:
            found = await asyncio.to_thread(self.precomputed.latest, patient_id, vital, bucket_s)
        if found is not None:
            # Buckets wholly inside both the run's period and the one asked for.
            low = -(-max(since, found.since) // bucket_s) * bucket_s
            high = min(found.until, until) // bucket_s * bucket_s
        if found is None or low >= high:
            return buckets(
                _series(await self.readings(patient_id, vital, period), vital), bucket_s
            ), None
        before: list[dict[str, Any]] = []
        if since < low:
            points = await self.readings(patient_id, vital, (since, low))
            before = [p for p in points if p["ts"] < low]
        after = await self.readings(patient_id, vital, (high, until))
        middle = [b for b in found.buckets if low <= b["start"] < high]
        answer = buckets(_series(before, vital), bucket_s) + middle
        answer += buckets(_series(after, vital), bucket_s)
        return answer, {"run_id": found.run_id, "since": low, "until": high}


def _series(points: list[dict[str, Any]], vital: str) -> list[tuple[float, float]]:
    return [(p["ts"], p["vitals"][vital]) for p in points if vital in p["vitals"]]
