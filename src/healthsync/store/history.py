"""One patient's readings and trends for any period: Redis for the recent day, the archive before.

The two overlap (the archive has everything it rolled, Redis the last day), so
points are merged by reading id: ordered by time, none twice across the seam.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pyarrow as pa

from healthsync.store.archive.columns import TS
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.archive.trends import trends
from healthsync.store.queries import LiveReader

# Redis holds a day of readings per patient; enough to read them all at once.
_LIVE_LIMIT = 1_000_000


class History:
    """The live store and the archive, read as one."""

    def __init__(self, live: LiveReader, archive: ArchiveReader | None) -> None:
        self.live = live
        self.archive = archive

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
        points = await self.readings(patient_id, vital, period)
        table = pa.table(
            {
                "ts": pa.array([round(p["ts"] * 1000) for p in points], pa.int64()).cast(TS),
                vital: pa.array([p["vitals"].get(vital) for p in points], pa.float64()),
            }
        )
        return trends(table, vital, bucket_s)
