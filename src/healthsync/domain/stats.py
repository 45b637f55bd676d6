"""Per-bucket statistics of one vital: count, min, max, mean, median.

One definition for every path that serves them: the `trends` job that
precomputes hourly and daily buckets and the trends route that computes the
rest, so a bucket reads the same whichever path computed it. Buckets are
aligned to the epoch (UTC); mean and median are rounded to three decimals.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable

Point = tuple[float, float]


def aggregate(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "mean": round(statistics.fmean(values), 3),
        "median": round(statistics.median(values), 3),
    }


def buckets(points: Iterable[Point], size: float) -> list[dict[str, float]]:
    """(time, value) points as buckets of `size` seconds, oldest first."""
    grouped: dict[float, list[float]] = defaultdict(list)
    for ts, value in points:
        grouped[ts // size * size].append(value)
    return [{"start": start} | aggregate(grouped[start]) for start in sorted(grouped)]
