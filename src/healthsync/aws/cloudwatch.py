"""CloudWatch metrics from the pipeline's shared counters (``HEALTHSYNC_CLOUDWATCH_ENABLED``).

Every instance of a stage adds its counts to the Redis stats hashes (see
:mod:`healthsync.metrics`), so one reader sees the whole pipeline. Each
interval :class:`PipelineMetrics` turns them into CloudWatch data points in the
namespace ``HealthSync`` with the dimension ``Stage`` (and ``Job`` for jobs):

| metric | stage | from |
| --- | --- | --- |
| ReadingsIngested | ingest | readings_accepted_total, per interval |
| ReadingsRejected | ingest | readings_rejected_total (every reason), per interval |
| ReadingsProcessed | processor | readings_processed_total, per interval |
| ConsumerLag | processor | consumer_lag, summed over partitions |
| EndToEndLatencyP99 | processor | the latency histogram's new samples: the bucket bound |
| OpenAlerts | processor | the open alerts |
| ArchiveLag | archive | consumer_lag of the archive stage, when it reports one |
| JobFailures | jobs (+ Job) | runs that failed in the interval, per job and in all |

Only counts, sums and bounds: no dimension or value names a patient.

Sending never touches the pipeline's path: the stages only write Redis, as
always; a collector thread reads it and hands batches to a bounded queue, and
a sender thread drains the queue with PutMetricData (at most 1000 data points
per call, the API's limit), keeping a batch at the head until CloudWatch takes
it. While CloudWatch is away batches wait; past ``queue_size`` the oldest are
dropped and counted in ``dropped``.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from redis import Redis

from healthsync.metrics import LATENCY_BUCKETS, merge_counters, parse_field
from healthsync.names import RedisKeys
from healthsync.store.runs import RunStore

log = logging.getLogger(__name__)

MAX_DATA_PER_CALL = 1000  # PutMetricData: at most 1000 metrics per request
_COUNTERS = (
    ("ReadingsIngested", "ingest", "ingest", ("readings_accepted_total",)),
    ("ReadingsRejected", "ingest", "ingest", ("readings_rejected_total",)),
    ("ReadingsProcessed", "processor", "processor", ("readings_processed_total",)),
)


@dataclass(frozen=True, slots=True)
class Datum:
    name: str
    value: float
    unit: str
    dimensions: tuple[tuple[str, str], ...]
    timestamp: float

    def to_api(self) -> dict[str, Any]:
        return {
            "MetricName": self.name,
            "Value": self.value,
            "Unit": self.unit,
            "Timestamp": self.timestamp,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
        }


def _sum(fields: Mapping[str, str], name: str) -> float | None:
    """The sum of a stat over its labels, or None when no instance reported it."""
    values = [float(v) for f, v in fields.items() if parse_field(f)[0] == name]
    return sum(values) if values else None


def p99_bound(buckets: Mapping[str, float]) -> float | None:
    """The upper bound of the bucket that holds the 99th percentile of these samples."""
    bounds = [str(b) for b in LATENCY_BUCKETS]
    total = sum(buckets.get(le, 0.0) for le in [*bounds, "+Inf"])
    if total <= 0:
        return None
    seen = 0.0
    for bound in bounds:
        seen += buckets.get(bound, 0.0)
        if seen >= 0.99 * total:
            return float(bound)
    return LATENCY_BUCKETS[-1]  # beyond the last bound: report it, the most we can say


@dataclass
class PipelineMetrics:
    """Reads the stats hashes and run records; remembers counters to report per interval."""

    client: Redis
    keys: RedisKeys
    runs: RunStore
    clock: Callable[[], float] = time.time
    _previous: dict[str, float] = field(default_factory=dict)
    _latency: dict[str, float] | None = None
    _since: float | None = None

    def _read(self) -> tuple[dict[str, dict[str, str]], Any, Any]:
        """The components' counters, the latency histogram and the open alerts' count."""
        pipe = self.client.pipeline(transaction=False)
        for component in ("ingest", "processor", "archive"):
            pipe.hgetall(self.keys.stats(component))
        pipe.hgetall(self.keys.latency)
        pipe.hlen(self.keys.open_alerts)
        # The processed counts of the patient groups, kept apart on a Redis Cluster.
        for key in self.keys.stats_keys("processor")[1:]:
            pipe.hgetall(key)
        ingest, processor, archive, latency, open_alerts, *grouped = pipe.execute()
        stats = {
            "ingest": _text(ingest),
            "processor": merge_counters([processor, *grouped]),
            "archive": _text(archive),
        }
        return stats, latency, open_alerts

    def collect(self) -> list[Datum]:
        now = self.clock()
        stats, latency, open_alerts = self._read()
        data: list[Datum] = []

        def add(name: str, value: float, unit: str, **dims: str) -> None:
            data.append(Datum(name, value, unit, tuple(dims.items()), now))

        for metric, stage, component, names in _COUNTERS:
            total = sum(_sum(stats[component], n) or 0.0 for n in names)
            delta = self._delta(metric, total)
            if delta is not None:
                add(metric, delta, "Count", Stage=stage)
        lag = _sum(stats["processor"], "consumer_lag")
        if lag is not None:
            add("ConsumerLag", lag, "Count", Stage="processor")
        archive_lag = _sum(stats["archive"], "consumer_lag")
        if archive_lag is not None:
            add("ArchiveLag", archive_lag, "Count", Stage="archive")
        add("OpenAlerts", float(open_alerts), "Count", Stage="processor")
        p99 = self._latency_p99({k: float(v) for k, v in _text(latency).items()})
        if p99 is not None:
            add("EndToEndLatencyP99", p99, "Seconds", Stage="processor")
        failures = self._job_failures(now)
        if failures is not None:
            for job, count in failures.items():
                add("JobFailures", float(count), "Count", Stage="jobs", Job=job)
            # And over every job, for one alarm that does not list the jobs.
            add("JobFailures", float(sum(failures.values())), "Count", Stage="jobs")
        return data

    def _delta(self, metric: str, total: float) -> float | None:
        previous = self._previous.get(metric)
        self._previous[metric] = total
        if previous is None:
            return None  # the first look only sets the baseline
        # A counter below its last value was reset (Redis flushed): all of it is new.
        return total - previous if total >= previous else total

    def _latency_p99(self, latency: dict[str, float]) -> float | None:
        previous, self._latency = self._latency, latency
        if previous is None:
            return None  # the first look only sets the baseline
        new = {le: latency.get(le, 0.0) - previous.get(le, 0.0) for le in latency}
        return p99_bound({le: n for le, n in new.items() if n > 0})

    def _job_failures(self, now: float) -> dict[str, int] | None:
        since, self._since = self._since, now
        if since is None:
            return None
        failed: dict[str, int] = {}
        for record in self.runs.recent(200):
            done = record.finished_at
            if record.status == "failed" and done is not None and since < done <= now:
                failed[record.job] = failed.get(record.job, 0) + 1
        # Jobs with no failure report zero, so an alarm sees data, not silence.
        for record in self.runs.recent(200):
            failed.setdefault(record.job, 0)
        return failed


def _text(raw: Any) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in cast("dict[bytes, bytes]", raw).items()}


def chunks(data: list[Datum], size: int = MAX_DATA_PER_CALL) -> Iterable[list[Datum]]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class MetricQueue:
    """Batches waiting for CloudWatch; bounded, the oldest dropped (and counted) first."""

    def __init__(self, size: int) -> None:
        self._batches: collections.deque[list[Datum]] = collections.deque()
        self._size = size
        self._lock = threading.Lock()
        self.dropped = 0
        self.ready = threading.Event()

    def put(self, batch: list[Datum]) -> None:
        if not batch:
            return
        with self._lock:
            if len(self._batches) >= self._size:
                self._batches.popleft()
                self.dropped += 1
            self._batches.append(batch)
        self.ready.set()

    def peek(self) -> list[Datum] | None:
        with self._lock:
            return self._batches[0] if self._batches else None

    def done(self, batch: list[Datum]) -> None:
        with self._lock:
            if self._batches and self._batches[0] is batch:
                self._batches.popleft()
            if not self._batches:
                self.ready.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._batches)


class PutMetricDataSender:
    """Sends queued batches with PutMetricData, oldest first."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.sent = 0

    def drain(self, queue: MetricQueue) -> None:
        """Send until the queue is empty; a failure raises and leaves the batch queued."""
        while (batch := queue.peek()) is not None:
            # A batch larger than one call goes in parts; a part sent twice after a
            # failure only repeats a data point with the same timestamp.
            for part in chunks(batch):
                self.client.put_metric_data(
                    Namespace=self.namespace, MetricData=[d.to_api() for d in part]
                )
                self.sent += len(part)
            queue.done(batch)


def emf_lines(data: list[Datum], namespace: str) -> list[str]:
    """The data as Embedded Metric Format lines for the CloudWatch agent: one line per set
    of dimension values, since a line carries one value of each dimension."""
    groups: dict[tuple[tuple[str, str], ...], list[Datum]] = {}
    for datum in data:
        groups.setdefault(datum.dimensions, []).append(datum)
    lines = []
    for dimensions, group in groups.items():
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(max(d.timestamp for d in group) * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [[k for k, _ in dimensions]],
                        "Metrics": [{"Name": d.name, "Unit": d.unit} for d in group],
                    }
                ],
            }
        }
        doc.update(dict(dimensions))
        doc.update({d.name: d.value for d in group})
        lines.append(json.dumps(doc, separators=(",", ":")))
    return lines
