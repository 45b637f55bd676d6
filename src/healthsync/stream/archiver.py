"""`healthsync archive`: every reading (vitals topic) and alert event (alerts topic) archived.

A consumer group of its own, so a slow or absent object store delays only the
archive: the backlog waits in Kafka (and shows as ``archive_lag``), never in
memory beyond one roll. Each partition's readings are buffered and written
as one batch (:class:`ArchiveWriter`) every ``archive.roll_s`` seconds or
at ``archive.roll_bytes``; its offsets are committed only once every object
of the batch is durable.

Replays write nothing twice: a batch's keys are its partition and offsets.
After a crash between writing a batch and committing it, the restarted
archiver starts again at the batch's first offset, finds the object the
crashed run wrote there (:func:`find_span`), and cuts its batch at the same
last offset, so it rewrites the very same objects.

Values are opened through the codec; one that cannot be opened or is not a
reading is counted and skipped (the processor sends it to the dead-letter topic).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from healthsync.config import Settings
from healthsync.domain.alerts import Alert
from healthsync.domain.readings import Reading
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.store.archive.layout import ALERTS, READINGS, Span
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.writer import ArchiveWriter, find_span
from healthsync.stream.retry import retry_until_stopped

log = logging.getLogger(__name__)
T = TypeVar("T")
_LAG_INTERVAL_S = 1.0


@dataclass
class Roll:
    """What one partition of one topic buffered since its last batch."""

    dataset: str
    partition: int
    first: int
    opened_at: float
    last: int = -1
    size: int = 0
    # Readings, or (event type, alert) pairs; and the time of the first one.
    rows: list[Any] = field(default_factory=list)
    first_ts: float = 0.0
    # Where a crashed run cut the batch that starts at `first`: None when not looked up
    # yet, -1 when there was none.
    cut: int | None = None

    @property
    def span(self) -> Span:
        return Span(self.partition, self.first, self.last)


@dataclass(frozen=True)
class Reporting:
    """The archiver's counters, and how they reach the API's /metrics (Redis)."""

    stats: StatsRecorder
    publish: Callable[[], None]


class Archiver:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        writer: ArchiveWriter,
        codec: Codec,
        reporting: Reporting,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.writer = writer
        self.store: ObjectStore = writer.store
        self.codec = codec
        self.reporting = reporting
        self.stats = reporting.stats
        self.publish_stats = reporting.publish
        self.rolls: dict[tuple[str, int], Roll] = {}
        # Partitions whose next roll starts at a committed offset: look for a crashed batch.
        self.resumed: set[tuple[str, int]] = set()
        self.stopping = False
        self._lag_at = 0.0

    def stop(self) -> None:
        self.stopping = True

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.rolls.pop((tp.topic, tp.partition), None)
            self.resumed.add((tp.topic, tp.partition))
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Unwritten rolls are dropped: their offsets are not committed, the next owner
        # reads them again.
        for tp in partitions:
            self.rolls.pop((tp.topic, tp.partition), None)
            self.resumed.discard((tp.topic, tp.partition))
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

    def run(self) -> None:
        cfg = self.settings.archive
        kafka = self.settings.kafka
        self.consumer.subscribe(
            [kafka.vitals_topic, kafka.alerts_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        log.info("archiver started", extra={"group": cfg.group_id, "url": cfg.url})
        try:
            while not self.stopping:
                messages = self.consumer.consume(self.settings.processor.batch_size, 0.2)
                for message in messages:
                    if not self.stopping:
                        self._add(message)
                self._roll_due(time.monotonic())
                self._report_lag()
            self._drain()
        finally:
            self.consumer.close()
            log.info("archiver stopped")

    def _add(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            log.warning("consume error", extra={"error": error.str()})
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return
        place = (topic, partition)
        roll = self.rolls.get(place)
        if roll is not None and roll.cut is not None and roll.cut >= 0 and offset > roll.cut:
            self._flush(roll)  # the crashed run's batch ended before this message
            roll = None
        if roll is None:
            cut = None if place in self.resumed else -1
            dataset = ALERTS if topic == self.settings.kafka.alerts_topic else READINGS
            roll = Roll(dataset, partition, offset, time.monotonic(), cut=cut)
            self.rolls[place] = roll
        roll.last = offset
        roll.size += len(message.value() or b"")
        decoded = self._decode(roll.dataset, message)
        if decoded is not None:
            row, ts = decoded
            if not roll.rows:
                roll.first_ts = ts
            roll.rows.append(row)
            if roll.cut is None:
                self._look_up_cut(place, roll)
        if roll.cut is not None and roll.cut >= 0 and offset >= roll.cut:
            self._flush(roll)

    def _decode(self, dataset: str, message: Message) -> tuple[Any, float] | None:
        """The row a message becomes, and its time; None (counted) for one that is not."""
        role = roles.ALERTS if dataset == ALERTS else roles.VITALS
        try:
            value = self.codec.open_message(role, message.key(), message.value() or b"")
            if dataset == ALERTS:
                return alert_event(value)
            reading = Reading.from_json(value)
        except (DecryptError, ValueError) as exc:
            # No content in the log: the value may hold PHI.
            self.stats.inc("archive_skipped_total")
            log.warning("not archivable; skipped", extra={"reason": type(exc).__name__})
            return None
        return reading, reading.ts

    def _look_up_cut(self, place: tuple[str, int], roll: Roll) -> None:
        """For a roll at a committed offset: the last offset of a batch written from there."""
        if place not in self.resumed:
            roll.cut = -1
            return
        result = self._retry(
            "look up a crashed batch",
            lambda: (
                find_span(self.store, roll.partition, roll.first, roll.first_ts, roll.dataset),
            ),
        )
        if result is None:
            return  # stopping before we know: the roll is not written
        (found,) = result
        roll.cut = found.last if found else -1
        if found:
            log.info("replaying an archived batch", extra={"span": found.name})

    def _roll_due(self, now: float) -> None:
        cfg = self.settings.archive
        for roll in list(self.rolls.values()):
            if roll.cut is None or roll.cut >= 0:
                # A replay cuts where the crashed run did, nowhere else; and until a
                # reading tells where to look, whether there is one is not known.
                continue
            if roll.size >= cfg.roll_bytes or now - roll.opened_at >= cfg.roll_s:
                self._flush(roll)

    def _flush(self, roll: Roll) -> None:
        """Write the roll's batch, then commit past it; retried until it succeeds or we stop."""
        if self.stopping:
            return
        written = self._retry("write archive objects", lambda: self._write(roll))
        if written is None:
            return  # stopping: not committed, replayed on restart
        self._commit(roll)

    def _write(self, roll: Roll) -> list[str]:
        if roll.dataset == ALERTS:
            written = self.writer.write_alerts(roll.span, roll.rows)
            self.stats.inc("archived_alert_events_total", len(roll.rows))
        else:
            written = self.writer.write_readings(roll.span, roll.rows)
            self.stats.inc("archived_readings_total", len(roll.rows))
        self.stats.inc("archive_objects_total", len(written))
        return written

    def _drain(self) -> None:
        """On SIGTERM: write what is buffered, once; what fails is replayed on restart."""
        for roll in list(self.rolls.values()):
            if roll.cut is None or roll.last < roll.cut:
                continue  # a replay not yet at the crashed run's cut: it must end there
            try:
                self._write(roll)
            except Exception as exc:  # noqa: BLE001 - left uncommitted, replayed on restart
                log.warning("could not write the last roll", extra={"error": str(exc)})
                continue
            self._commit(roll)
        self._report_lag()

    def _commit(self, roll: Roll) -> None:
        kafka = self.settings.kafka
        topic = kafka.alerts_topic if roll.dataset == ALERTS else kafka.vitals_topic
        self.rolls.pop((topic, roll.partition), None)
        self.resumed.discard((topic, roll.partition))
        try:
            self.consumer.commit(
                offsets=[TopicPartition(topic, roll.partition, roll.last + 1)], asynchronous=False
            )
        except KafkaException as exc:
            # A rebalance took the partition: its next owner finds this batch and
            # replays it to the same objects.
            log.warning("offset commit failed", extra={"error": str(exc)})

    def _retry(self, what: str, action: Callable[[], T]) -> T | None:
        return retry_until_stopped(what, action, lambda: self.stopping, on_error=self._failed)

    def _failed(self, _exc: Exception) -> None:
        self.stats.inc("archive_errors_total")
        # While the store is down the backlog grows in Kafka: keep /metrics showing it.
        self._report_lag()

    def _report_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < _LAG_INTERVAL_S:
            return
        self._lag_at = now
        try:
            committed = self.consumer.committed(self.consumer.assignment(), timeout=2.0)
            for tp in committed:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                done = tp.offset if tp.offset >= 0 else _low
                if high >= 0:
                    self.stats.gauge("archive_lag", high - done, partition=str(tp.partition))
        except KafkaException as exc:
            log.debug("lag unavailable", extra={"error": str(exc)})
        try:
            self.publish_stats()
        except Exception as exc:  # noqa: BLE001 - metrics must never hold up the archive
            log.warning("could not publish stats", extra={"error": str(exc)})


def alert_event(value: bytes) -> tuple[tuple[str, Alert], float]:
    """An alerts-topic value as (event type, alert) and the event's time."""
    try:
        doc = orjson.loads(value)
        alert = Alert.from_dict(doc["alert"])
        return (str(doc["event"]), alert), float(alert.updated_at)
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an alert event: {exc}") from exc
