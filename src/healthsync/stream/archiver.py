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
last offset, so it rewrites the very same objects. Offsets a fetch skipped
are read again (:mod:`healthsync.stream.gaps`), never archived as a hole.

A topic created again (deleted and recreated, or held in memory by a broker
that restarted) starts its offsets over at 0, often in the same hour: its
batches get the same offsets as batches already archived. So the topic's id
is asked of the broker when a partition's first roll opens, and again
whenever its offsets go back: then the topic is a new one. Batches of the
topic's first incarnation, as the archive records it
(:mod:`healthsync.store.archive.topics`), keep the plain names; those of a
later one carry its id. A roll of the topic before is written then without
committing its offsets, which mean nothing in the new one.

Values are opened through the codec; one that cannot be opened or is not a
reading is counted and skipped (the processor sends it to the dead-letter topic).
A roll of nothing else is committed without writing anything, so that such
values never keep the group behind (the broker recycle waits until it has
committed everything); a restart may then begin inside a crashed run's batch,
and :func:`find_span` finds the batch there too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

import orjson
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from healthsync.config import Settings
from healthsync.domain.alerts import Alert, EventType, checked_alert
from healthsync.domain.readings import Reading
from healthsync.metrics import Reporting
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.store.archive.layout import ALERTS, READINGS
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.topics import FirstIncarnations
from healthsync.store.archive.writer import ArchiveWriter, find_span
from healthsync.stream.gaps import OffsetGaps
from healthsync.stream.membership import Membership
from healthsync.stream.retry import retry_until_stopped
from healthsync.stream.rolls import Roll

log = logging.getLogger(__name__)
T = TypeVar("T")
_LAG_INTERVAL_S = 1.0


@dataclass(frozen=True)
class Source:
    """What the archiver reads: its consumer, and the id of a topic now (hex, or "")."""

    consumer: Consumer
    topic_id: Callable[[str], str]


class Archiver:
    def __init__(
        self,
        settings: Settings,
        source: Source,
        writer: ArchiveWriter,
        codec: Codec,
        reporting: Reporting,
    ) -> None:
        self.settings = settings
        self.consumer = source.consumer
        self.topic_id = source.topic_id
        self.writer = writer
        self.store: ObjectStore = writer.store
        self.first_incarnations = FirstIncarnations(self.store)
        self.codec = codec
        self.reporting = reporting
        self.stats = reporting.stats
        self.publish_stats = reporting.publish
        self.rolls: dict[tuple[str, int], Roll] = {}
        # Partitions whose next roll starts at a committed offset: look for a crashed batch.
        self.resumed: set[tuple[str, int]] = set()
        # Per partition of this assignment: the incarnation of its last roll, the last offset.
        self.streams: dict[tuple[str, int], tuple[str, int]] = {}
        self.gaps = OffsetGaps(self.stats)
        self.membership = Membership(settings.kafka.joined_file)
        self.stopping = False
        self.write_requested = False
        self._lag_at = 0.0

    def stop(self) -> None:
        self.stopping = True

    def write_now(self) -> None:
        """Write and commit what is buffered at the next pass, and go on (SIGUSR1): the
        broker recycle has every reading archived before it stops the archiver."""
        self.write_requested = True

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.gaps.forget((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            self.rolls.pop((tp.topic, tp.partition), None)
            self.streams.pop((tp.topic, tp.partition), None)
            self.resumed.add((tp.topic, tp.partition))
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})
        self.membership.joined()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Unwritten rolls are dropped: their offsets are not committed, the next owner
        # reads them again.
        self.membership.left()
        self.gaps.forget((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            self.rolls.pop((tp.topic, tp.partition), None)
            self.streams.pop((tp.topic, tp.partition), None)
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
                fetched = self.consumer.consume(self.settings.processor.batch_size, 0.2)
                messages = self.gaps.check(self.consumer, fetched)
                for message in messages:
                    if not self.stopping:
                        self._add(message)
                self._roll_due(time.monotonic())
                if self.write_requested:
                    self.write_requested = False
                    for roll in self._writable():
                        self._flush(roll)
                self._report_lag()
            self._drain()
        finally:
            self.consumer.close()
            self.membership.left()
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
        roll = self._roll_for(place, offset)
        if roll is None:
            return  # stopping: not committed, read again on restart
        roll.last = offset
        self.streams[place] = (roll.incarnation, offset)
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

    def _roll_for(self, place: tuple[str, int], offset: int) -> Roll | None:
        """The roll a message at `offset` goes to, opened if need be; None if stopping first."""
        roll = self.rolls.get(place)
        if roll is not None and offset <= roll.last:
            self._started_over(place, roll)
            roll = None
        if roll is not None and roll.cut is not None and roll.cut >= 0 and offset > roll.cut:
            self._flush(roll)  # the crashed run's batch ended before this message
            roll = None
        if roll is not None:
            return roll
        incarnation = self._incarnation(place, offset)
        if incarnation is None:
            return None
        topic, partition = place
        cut = None if place in self.resumed else -1
        dataset = ALERTS if topic == self.settings.kafka.alerts_topic else READINGS
        roll = Roll(dataset, partition, offset, time.monotonic(), cut=cut, incarnation=incarnation)
        self.rolls[place] = roll
        return roll

    def _incarnation(self, place: tuple[str, int], offset: int) -> str | None:
        """How a roll opening at `offset` names its incarnation; None if stopping before known.

        "" for the topic's first incarnation, the topic id for a later one
        (:meth:`FirstIncarnations.marker`).

        Offsets that go on from the partition's last roll are of the same topic,
        whatever the broker says by now; the id is asked for a partition's first
        roll, and when the offsets went back.
        """
        known = self.streams.get(place)
        if known is not None and offset > known[1]:
            return known[0]
        topic, partition = place
        result = self._retry(
            "look up the topic's incarnation",
            lambda: (self.first_incarnations.marker(topic, self.topic_id(topic)),),
        )
        if result is None:
            return None
        (incarnation,) = result
        if known is not None:
            what = {"topic": topic, "partition": partition, "offset": offset}
            log.warning("offsets started over: a new incarnation of the topic", extra=what)
            if incarnation == known[0]:
                # A broker without topic ids: new batches may get the names of old ones.
                log.warning("the topic id did not change; archive objects may be replaced")
        return incarnation

    def _started_over(self, place: tuple[str, int], roll: Roll) -> None:
        """The offsets went back under an open roll: write it as the old topic's batch."""
        self.rolls.pop(place, None)
        if roll.cut is not None and roll.cut >= 0:
            return  # a replay: the crashed run's batch, archived already, holds all of it
        # Not committed: its offsets would skip readings of the new topic.
        self._retry("write archive objects", lambda: self._write(roll))

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
            lambda: (find_span(self.store, roll.span, roll.first_ts, roll.dataset),),
        )
        if result is None:
            return  # stopping before we know: the roll is not written
        (found,) = result
        roll.cut = found.last if found else -1
        if found:
            # It may start before the roll, at messages committed past as unarchivable:
            # the replay takes its names, so that it rewrites the same objects.
            roll.first = min(roll.first, found.first)
            log.info("replaying an archived batch", extra={"span": found.name})

    def _roll_due(self, now: float) -> None:
        cfg = self.settings.archive
        for roll in list(self.rolls.values()):
            if (roll.cut is not None and roll.cut >= 0) or not roll.writable:
                continue  # a replay cuts where the crashed run did, nowhere else
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
        for roll in self._writable():
            try:
                self._write(roll)
            except Exception as exc:  # noqa: BLE001 - left uncommitted, replayed on restart
                log.warning("could not write the last roll", extra={"error": str(exc)})
                continue
            self._commit(roll)
        self._report_lag()

    def _writable(self) -> list[Roll]:
        """The buffered rolls that may be written now (:attr:`Roll.writable`)."""
        return [r for r in self.rolls.values() if r.writable]

    def _commit(self, roll: Roll) -> None:
        kafka = self.settings.kafka
        topic = kafka.alerts_topic if roll.dataset == ALERTS else kafka.vitals_topic
        self.rolls.pop((topic, roll.partition), None)
        if roll.cut is not None:  # else a crashed run's batch may start with these messages:
            self.resumed.discard((topic, roll.partition))  # the next roll looks for it
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
        event = doc["event"]
        if event not in get_args(EventType):
            raise ValueError(f"event: not one of {', '.join(get_args(EventType))}")
        alert = checked_alert(doc["alert"])
        return (event, alert), alert.updated_at
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an alert event: {exc}") from exc
