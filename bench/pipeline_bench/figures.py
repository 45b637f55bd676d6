"""Progress lines and the statistics the report prints."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping

from healthsync.metrics import LATENCY_BUCKETS


def say(text: str) -> None:
    """Progress, on stderr so the report on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def pcts(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (
        f"p50 {ms(percentile(ordered, 0.50))}  p95 {ms(percentile(ordered, 0.95))}  "
        f"p99 {ms(percentile(ordered, 0.99))}  max {ms(percentile(ordered, 1.0))}  "
        f"(n={len(ordered)})"
    )


def histogram_quantile(buckets: Mapping[str, float], q: float) -> str:
    """Quantile from the processor's (non-cumulative) histogram, interpolated in its bucket."""
    total = sum(buckets.values())
    if total <= 0:
        return "n/a"
    rank, cumulative, lower = q * total, 0.0, 0.0
    for bound in LATENCY_BUCKETS:
        count = buckets.get(str(bound), 0.0)
        if count and cumulative + count >= rank:
            return ms(lower + (bound - lower) * (rank - cumulative) / count)
        cumulative += count
        lower = bound
    return f"> {LATENCY_BUCKETS[-1]:g} s"


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.nan
