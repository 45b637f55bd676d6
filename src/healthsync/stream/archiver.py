"""`healthsync archive`: every reading from the vitals topic into the archive.

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
from typing import TypeVar

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.store.archive.layout import Span
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.writer import ArchiveWriter, find_span
from healthsync.stream.retry import retry_until_stopped

log = logging.getLogger(__name__)
T = TypeVar("T")
_LAG_INTERVAL_S = 1.0


@dataclass
class Roll:
    """What one partition buffered since its last batch."""

    partition: int
    first: int
    opened_at: float
    last: int = -1
    size: int = 0
    readings: list[Reading] = field(default_factory=list)
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
        self.rolls: dict[int, Roll] = {}
        # Partitions whose next roll starts at a committed offset: look for a crashed batch.
        self.resumed: set[int] = set()
        self.stopping = False
        self._lag_at = 0.0

    def stop(self) -> None:
        self.stopping = True

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.rolls.pop(tp.partition, None)
            self.resumed.add(tp.partition)
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Unwritten rolls are dropped: their offsets are not committed, the next owner
        # reads them again.
        for tp in partitions:
            self.rolls.pop(tp.partition, None)
            self.resumed.discard(tp.partition)
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

    def run(self) -> None:
        cfg = self.settings.archive
        self.consumer.subscribe(
            [self.settings.kafka.vitals_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
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
        partition, offset = message.partition(), message.offset()
        if partition is None or offset is None:
            return
        roll = self.rolls.get(partition)
        if roll is not None and roll.cut is not None and roll.cut >= 0 and offset > roll.cut:
            self._flush(roll)  # the crashed run's batch ended before this message
            roll = None
        if roll is None:
            cut = None if partition in self.resumed else -1
            roll = self.rolls[partition] = Roll(partition, offset, time.monotonic(), cut=cut)
        roll.last = offset
        roll.size += len(message.value() or b"")
        reading = self._decode(message)
        if reading is not None:
            roll.readings.append(reading)
            if roll.cut is None:
                self._look_up_cut(roll)
        if roll.cut is not None and roll.cut >= 0 and offset >= roll.cut:
            self._flush(roll)

    def _decode(self, message: Message) -> Reading | None:
        try:
            value = self.codec.open_message(roles.VITALS, message.key(), message.value() or b"")
            return Reading.from_json(value)
        except (DecryptError, ValueError) as exc:
            # No content in the log: the value may hold PHI.
            self.stats.inc("archive_skipped_total")
            log.warning("not a reading; skipped", extra={"reason": type(exc).__name__})
            return None

    def _look_up_cut(self, roll: Roll) -> None:
        """For a roll at a committed offset: the last offset of a batch written from there."""
        if roll.partition not in self.resumed:
            roll.cut = -1
            return
        first_ts = roll.readings[0].ts
        result = self._retry(
            "look up a crashed batch",
            lambda: (find_span(self.store, roll.partition, roll.first, first_ts),),
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
        written = self.writer.write_readings(roll.span, roll.readings) if roll.readings else []
        self.stats.inc("archived_readings_total", len(roll.readings))
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
        self.rolls.pop(roll.partition, None)
        self.resumed.discard(roll.partition)
        topic = self.settings.kafka.vitals_topic
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
