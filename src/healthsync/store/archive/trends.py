"""Per-bucket statistics of one vital: count, min, max, mean and the exact median."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

BUCKETS_S = {"5m": 300, "1h": 3600, "1d": 86_400}


def trends(table: pa.Table, vital: str, bucket_s: int) -> list[dict[str, Any]]:
    """Buckets of `bucket_s` seconds (aligned to the epoch, UTC), oldest first.

    `table` needs the columns ``ts`` and `vital`; rows without the vital are skipped.
    """
    if vital not in table.column_names:
        return []
    values = table.select(["ts", vital]).filter(pc.is_valid(table[vital]))
    if values.num_rows == 0:
        return []
    width = bucket_s * 1000
    millis = pc.cast(values["ts"], pa.int64())
    starts = pc.multiply(pc.floor(pc.divide(pc.cast(millis, pa.float64()), width)), width)
    frame = pa.table({"bucket": pc.cast(starts, pa.int64()), "value": values[vital]})
    # Sorted by bucket, then value: each bucket's median sits in the middle of its run.
    frame = frame.take(
        pc.sort_indices(frame, sort_keys=[("bucket", "ascending"), ("value", "ascending")])
    )
    stats = frame.group_by("bucket", use_threads=False).aggregate(
        [("value", "count"), ("value", "min"), ("value", "max"), ("value", "mean")]
    )
    # Groups come out in no promised order; the medians below need the frame's.
    stats = stats.take(pc.sort_indices(stats, sort_keys=[("bucket", "ascending")]))
    counts = stats["value_count"]
    ends = pc.cumulative_sum(counts)
    first = pc.subtract(ends, counts)
    low = pc.add(first, pc.divide(pc.subtract(counts, 1), 2))
    high = pc.add(first, pc.divide(counts, 2))
    sorted_values = frame["value"]
    medians = pc.divide(
        pc.add(pc.take(sorted_values, low), pc.take(sorted_values, high)), 2.0
    ).to_pylist()
    rows = stats.to_pydict()
    return [
        {
            "start": bucket / 1000,
            "count": count,
            "min": low_value,
            "max": high_value,
            "mean": mean,
            "median": median,
        }
        for bucket, count, low_value, high_value, mean, median in zip(
            rows["bucket"],
            rows["value_count"],
            rows["value_min"],
            rows["value_max"],
            rows["value_mean"],
            medians,
            strict=True,
        )
    ]
