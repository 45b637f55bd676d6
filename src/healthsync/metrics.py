"""Pipeline counters shared through Redis, exposed by the API as Prometheus metrics.

Ingest and processor instances may run on several machines, so each counts in
memory and adds its counts to one Redis hash per component about once a second
(one pipelined round trip). The API's `/metrics` reads those hashes, so one
scrape shows the whole pipeline: readings in and out, rejects by reason,
consumer lag and the end-to-end latency histogram.

Hash fields are ``name`` or ``name|label=value,label=value``; names ending in
``_total`` are counters, the rest gauges.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from healthsync.names import RedisKeys

LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMPONENTS = ("ingest", "processor", "archiver", "push")
# Counted by more than one stage: the processor's and the archiver's offset-gap checks.
_SHARED = ("fetch_gaps_total", "offsets_skipped_total")
_PREFIX = "healthsync_"


def field_name(name: str, labels: Mapping[str, str] | None = None) -> str:
    if not labels:
        return name
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_field(field: str) -> tuple[str, dict[str, str]]:
    name, _, rest = field.partition("|")
    labels = dict(pair.split("=", 1) for pair in rest.split(",") if "=" in pair)
    return name, labels


def merge_counters(hashes: Iterable[Mapping[bytes, bytes]]) -> dict[str, str]:
    """One component's fields from several hashes (its own and the patient groups'), summed."""
    merged: dict[str, str] = {}
    for found in hashes:
        for raw_field, raw in found.items():
            field, value = raw_field.decode(), raw.decode()
            if field in merged:
                value = str(int(merged[field]) + int(value))  # only counters are in several
            merged[field] = value
    return merged


@dataclass(frozen=True, slots=True)
class Pending:
    """Counts taken from a :class:`StatsRecorder` for one flush."""

    counts: Counter[str]
    gauges: dict[str, float]
    latency: Counter[str]
    latency_sum: float


class StatsRecorder:
    """Counts for one component, accumulated locally and flushed to Redis."""

    def __init__(self, keys: RedisKeys, component: str) -> None:
        self.key = keys.stats(component)
        self.latency_key = keys.latency
        self._counts: Counter[str] = Counter()
        self._gauges: dict[str, float] = {}
        self._latency: Counter[str] = Counter()
        self._latency_sum = 0.0
        # What this instance has counted since it started, for its own summary.
        self.lifetime: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        if n:
            field = field_name(name, labels)
            self._counts[field] += n
            self.lifetime[field] += n

    def gauge(self, name: str, value: float, **labels: str) -> None:
        self._gauges[field_name(name, labels)] = value

    def observe_latencies(self, seconds: Iterable[float]) -> None:
        for value in seconds:
            index = bisect.bisect_left(LATENCY_BUCKETS, value)
            le = str(LATENCY_BUCKETS[index]) if index < len(LATENCY_BUCKETS) else "+Inf"
            self._latency[le] += 1
            self._latency_sum += value

    def add_to(self, pipe: Any) -> Pending:
        """Queue the pending counts on a Redis pipeline (sync or asyncio) and reset them.

        Returns what was queued: a caller whose pipeline then fails hands it to
        :meth:`restore`, so the counts go with the next flush instead of being lost.
        """
        # The pending counts themselves are handed over, and new ones started: no copy.
        taken = Pending(self._counts, self._gauges, self._latency, self._latency_sum)
        self._counts, self._gauges, self._latency = Counter(), {}, Counter()
        self._latency_sum = 0.0
        for field, n in taken.counts.items():
            pipe.hincrby(self.key, field, n)
        if taken.gauges:
            pipe.hset(self.key, mapping=taken.gauges)
        if taken.latency:
            for le, n in taken.latency.items():
                pipe.hincrby(self.latency_key, le, n)
            pipe.hincrby(self.latency_key, "count", sum(taken.latency.values()))
            pipe.hincrbyfloat(self.latency_key, "sum", taken.latency_sum)
        return taken

    def flush(self, client: Any) -> None:
        """Add the pending counts to Redis (a sync client); on failure keep them and raise."""
        pipe = client.pipeline(transaction=False)
        taken = self.add_to(pipe)
        try:
            pipe.execute()
        except Exception:
            self.restore(taken)
            raise

    async def flush_async(self, client: Any) -> None:
        """:meth:`flush` with an asyncio client."""
        async with client.pipeline(transaction=False) as pipe:
            taken = self.add_to(pipe)
            try:
                await pipe.execute()
            except Exception:
                self.restore(taken)
                raise

    def restore(self, taken: Pending) -> None:
        """Take back counts whose flush failed; gauges set since then are newer and win."""
        self._counts.update(taken.counts)
        self._gauges = {**taken.gauges, **self._gauges}
        self._latency.update(taken.latency)
        self._latency_sum += taken.latency_sum


@dataclass(frozen=True)
class Reporting:
    """A stage's counters, and how they reach the API's /metrics (Redis)."""

    stats: StatsRecorder
    publish: Callable[[], None]


class PipelineCollector:
    """A prometheus_client collector over the hashes StatsRecorder writes.

    `snapshot` is filled by the caller (the API reads Redis asynchronously and
    hands the result over), so collect() itself does no I/O.
    """

    def __init__(self) -> None:
        self.snapshot: dict[str, dict[str, str]] = {}
        self.latency: dict[str, str] = {}
        # Values sealed per data key by every process sharing the keyring.
        self.seals: dict[str, int] = {}

    def collect(self) -> Iterator[Any]:
        samples = [
            (component, *parse_field(field), float(raw))
            for component in COMPONENTS
            for field, raw in self.snapshot.get(component, {}).items()
        ]
        # A name more than one stage keeps is labelled with the stage: else /metrics
        # would give one series twice. The consumers' offset-gap counts always are, so
        # that their series stay the same from the first count on.
        keepers: dict[str, set[str]] = {}
        for component, name, _labels, _value in samples:
            keepers.setdefault(name, set()).add(component)
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for component, name, labels, value in samples:
            if name in _SHARED or len(keepers[name]) > 1:
                labels = {**labels, "component": component}
            metric = _PREFIX + name.removesuffix("_total")
            family = families.get(metric)
            if family is None:
                names = sorted(labels)
                helped = ", ".join(sorted(keepers[name]))
                if name.endswith("_total"):
                    family = CounterMetricFamily(metric, f"{helped}: {name}", labels=names)
                else:
                    family = GaugeMetricFamily(metric, f"{helped}: {name}", labels=names)
                families[metric] = family
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()
        yield self._latency_family()
        if self.seals:
            seals = CounterMetricFamily(
                _PREFIX + "crypto_seals",
                "Values sealed per data key, across the processes sharing the keyring",
                labels=["key"],
            )
            for key_id, count in sorted(self.seals.items()):
                seals.add_metric([key_id], float(count))
            yield seals

    def _latency_family(self) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0.0
        for le in [*map(str, LATENCY_BUCKETS), "+Inf"]:
            cumulative += float(self.latency.get(le, 0))
            buckets.append((le, cumulative))
        return HistogramMetricFamily(
            _PREFIX + "end_to_end_latency_seconds",
            "Time from ingest receiving a reading to the reading being visible in Redis",
            buckets=buckets,
            sum_value=float(self.latency.get("sum", 0.0)),
        )
