"""Trend buckets against values worked out by hand."""

from __future__ import annotations

import pyarrow as pa

from healthsync.store.archive.columns import TS
from healthsync.store.archive.trends import trends

# 2026-11-28 10:00 UTC, a whole hour.
H = 1_795_860_000


def table(points: list[tuple[float, float | None]]) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array([round(t * 1000) for t, _ in points], pa.int64()).cast(TS),
            "heart_rate": pa.array([v for _, v in points], pa.float64()),
        }
    )


def test_hourly_buckets_count_min_max_mean_median() -> None:
    data = table(
        [
            (H + 10, 80), (H + 20, 70), (H + 3599, 90), (H + 1800, None),  # hour 1: 70 80 90
            (H + 3600, 60), (H + 4000, 64), (H + 5000, 100), (H + 7000, 62),  # hour 2
            (H + 4 * 3600 + 1, 55.5),  # hour 5, alone; hours 3 and 4 are empty
        ]
    )  # fmt: skip
    assert trends(data, "heart_rate", 3600) == [
        {"start": H, "count": 3, "min": 70, "max": 90, "mean": 80, "median": 80},
        # 60 62 64 100: the median is between the middle two, 63; the mean 71.5.
        {"start": H + 3600, "count": 4, "min": 60, "max": 100, "mean": 71.5, "median": 63},
        {"start": H + 4 * 3600, "count": 1, "min": 55.5, "max": 55.5, "mean": 55.5, "median": 55.5},
    ]


def test_five_minute_buckets_and_a_vital_with_no_values() -> None:
    data = table([(H + 299, 1), (H + 300, 2), (H + 301, 4)])
    assert [(b["start"], b["count"], b["median"]) for b in trends(data, "heart_rate", 300)] == [
        (H, 1, 1),
        (H + 300, 2, 3),
    ]
    assert trends(data, "spo2", 300) == []
    assert trends(table([(H, None)]), "heart_rate", 300) == []
