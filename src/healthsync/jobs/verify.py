"""`verify`: per hour, the readings Kafka carried and the processor stored against the archive.

Both sides count distinct reading ids by the hour they were received (UTC),
so device resends, which carry the same id, count once and a reading measured
just before an hour but received after it lands in the same hour on both
sides. For every hour of the period ``report.json`` gives both counts and the
gap (Kafka minus archive): a positive gap is readings the archive lacks, a
negative one readings the archive has that Kafka no longer holds (retention).
An hour with a positive gap is listed in the run's summary.

Kafka is read from the vitals topic with a consumer that joins no group and
commits nothing, from the offset of the period's start (less an hour's margin,
since devices may send late) to the end of each partition. A message
that cannot be opened or parsed is counted as unreadable, never guessed at.
The processor's count of an hour is what it stored in Redis, kept with each
batch's transaction (store/hourly.py); it covers every patient, so a run
limited by ``--patients`` reports it as null. A positive processor gap is
readings the processor stored and the archive lacks.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from healthsync.config import KafkaSettings
from healthsync.jobs.base import JobContext
from healthsync.kafka import make_consumer
from healthsync.security.codec import VITALS, Codec
from healthsync.security.crypto import DecryptError

HOUR = 3600.0
MARGIN_S = HOUR


class ReceivedCounts(Protocol):
    def per_hour(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> tuple[dict[float, int], int]:
        """Distinct reading ids by hour received (of `patients`, or all), and how many
        messages were unreadable."""
        ...


class StoredCounts(Protocol):
    def per_hour(self, since: float, until: float) -> dict[float, int]:
        """Readings the processor stored, by hour received."""
        ...


class TopicCounter:
    """Counts the vitals topic's readings by the hour they were received."""

    def __init__(self, settings: KafkaSettings, codec: Codec, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.codec = codec
        self.timeout_s = timeout_s
        self.patients: frozenset[str] = frozenset()

    def per_hour(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> tuple[dict[float, int], int]:
        self.patients = patients
        consumer = make_consumer(
            self.settings, f"healthsync-verify-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
        )
        counts: dict[float, int] = defaultdict(int)
        unreadable = 0
        try:
            topic = self.settings.vitals_topic
            meta = consumer.list_topics(topic, timeout=self.timeout_s).topics[topic]
            for partition in sorted(meta.partitions):
                seen, bad = self._partition(consumer, topic, partition, since, until)
                unreadable += bad
                # A reading id always travels on its patient's partition: sets never overlap.
                for hour, ids in seen.items():
                    counts[hour] += len(ids)
        finally:
            consumer.close()
        return dict(counts), unreadable

    def _partition(
        self, consumer: Any, topic: str, partition: int, since: float, until: float
    ) -> tuple[dict[float, set[str]], int]:
        start = self._start(consumer, topic, partition, since - MARGIN_S)
        seen: dict[float, set[str]] = defaultdict(set)
        unreadable = 0
        consumer.assign([TopicPartition(topic, partition, start)])
        for message in _to_end(consumer, self.timeout_s):
            try:
                doc = orjson.loads(self.codec.open_message(VITALS, message.key(), message.value()))
                reading_id, received = str(doc["reading_id"]), float(doc["received_at"])
                patient = str(doc["patient_id"])
            except (DecryptError, ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            if self.patients and patient not in self.patients:
                continue
            if since <= received < until:
                seen[received // HOUR * HOUR].add(reading_id)
        consumer.unassign()
        return seen, unreadable

    def _start(self, consumer: Any, topic: str, partition: int, at: float) -> int:
        """The first offset at or after `at`; the beginning when the broker cannot say."""
        try:
            [found] = consumer.offsets_for_times(
                [TopicPartition(topic, partition, int(at * 1000))], timeout=self.timeout_s
            )
        except Exception:  # noqa: BLE001 - brokers without timestamp lookups: read it all
            return int(OFFSET_BEGINNING)
        return int(found.offset) if found.offset >= 0 else int(OFFSET_BEGINNING)


def _to_end(consumer: Any, timeout_s: float) -> Iterator[Any]:
    """The assigned partition's messages up to its end as the broker reports it (the
    partition-EOF event; watermarks are not trusted, as some brokers count batches)."""
    idle_until = time.monotonic() + timeout_s
    while True:
        # consume() waits for a full batch or its timeout: short waits, so the EOF event
        # that ends a small partition is seen at once.
        batch = consumer.consume(1000, timeout=0.2)
        if not batch:
            if time.monotonic() > idle_until:
                return  # the broker sent nothing, not even the end, for timeout_s
            continue
        idle_until = time.monotonic() + timeout_s
        for message in batch:
            error = message.error()
            if error is None:
                yield message
            elif error.code() == KafkaError._PARTITION_EOF:
                return


class Verify:
    name = "verify"
    description = (
        "per hour, readings on Kafka and stored by the processor against the archive; reports gaps"
    )

    def __init__(self, kafka: ReceivedCounts, processed: StoredCounts | None = None) -> None:
        self.kafka = kafka
        self.processed = processed

    def run(self, ctx: JobContext) -> dict[str, Any]:
        params = ctx.params
        archived: dict[float, set[str]] = defaultdict(set)
        for reading in ctx.reader.readings(
            params.since - MARGIN_S, params.until + MARGIN_S, params.patients
        ):
            if params.since <= reading.received_at < params.until:
                archived[reading.received_at // HOUR * HOUR].add(reading.reading_id)
        carried, unreadable = self.kafka.per_hour(params.since, params.until, params.patients)
        stored = None
        if self.processed is not None and not params.patients:
            stored = self.processed.per_hour(params.since, params.until)
        hours = []
        first = params.since // HOUR * HOUR
        hour = first
        while hour < params.until:
            kafka, archive = carried.get(hour, 0), len(archived.get(hour, ()))
            row: dict[str, Any] = {"hour": hour, "kafka": kafka, "archive": archive}
            row["gap"] = kafka - archive
            row["processor"] = None if stored is None else stored.get(hour, 0)
            row["processor_gap"] = None if stored is None else row["processor"] - archive
            hours.append(row)
            hour += HOUR
        gaps = [h["hour"] for h in hours if h["gap"] > 0 or (h["processor_gap"] or 0) > 0]
        report = {
            "since": params.since,
            "until": params.until,
            "hours": hours,
            "kafka_unreadable": unreadable,
        }
        ctx.output.write_json("report.json", report)
        return {
            "hours": len(hours),
            "kafka": sum(h["kafka"] for h in hours),
            "archive": sum(h["archive"] for h in hours),
            "processor": None if stored is None else sum(h["processor"] for h in hours),
            "hours_with_gaps": gaps,
            "kafka_unreadable": unreadable,
        }
