"""Readings the processor stored, counted by the hour they were received.

The live sink adds a batch's counts inside the batch's own transaction, the
one its offsets guard fences (store/live.py), so a batch that is retried or
replayed after a crash is counted once, as it is stored once. With several
patient groups (a Redis Cluster) each group counts its own readings in its
own transaction, and the reader adds the groups up. The `verify`
job reads them back to compare the processor's count of an hour with what
Kafka carried and what the archive holds. The counts name no patient; one
hash field per hour, about 9,000 a year.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any, cast

from redis import Redis

from healthsync.domain.readings import Reading
from healthsync.names import RedisKeys

HOUR = 3600


def count_into(pipe: Any, keys: RedisKeys, group: int, readings: Iterable[Reading]) -> None:
    """Queue the counts by received hour of a group's readings on `pipe` (inside its MULTI)."""
    hours = Counter(int(r.received_at // HOUR * HOUR) for r in readings)
    for hour, count in hours.items():
        pipe.hincrby(keys.processed_by_hour(group), str(hour), count)


class ProcessedByHour:
    """The counts :func:`count_into` kept, for a period."""

    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def per_hour(self, since: float, until: float) -> dict[float, int]:
        """Readings stored by received hour, for the hours starting in [since, until)."""
        first = int(since // HOUR * HOUR)
        hours = [str(h) for h in range(first, math.ceil(until), HOUR)]
        if not hours:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for group in self.keys.all_groups:
            pipe.hmget(self.keys.processed_by_hour(group), hours)
        counts: dict[float, int] = {}
        for raw in cast("list[list[bytes | None]]", pipe.execute()):
            for h, v in zip(hours, raw, strict=True):
                if v is not None:
                    counts[float(h)] = counts.get(float(h), 0) + int(v)
        return counts
