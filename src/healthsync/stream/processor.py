"""The processor loop: consume a batch, run the steps, write the sinks, then commit.

A batch's sinks flush (Redis executes its transactions, Kafka acknowledges its
resources) on a thread of their own while the next batch is decoded and run
through the steps; that batch is written only once the one before it is
stored. At most one batch is in flight, and nothing else writes to Redis
meanwhile: a rebalance (after which the steps reload their state), a clock
tick that writes, and stopping all wait for it first. Its readings are kept
from the next batch as the seen-check would keep them once it is stored.

Offsets are committed only after every sink has flushed, so a crash replays
the uncommitted batches; the Redis sink skips readings it already stored and
the Kafka resources have deterministic ids, so the replay adds nothing twice.
A sink that fails is retried with backoff, the batch written and flushed again,
without writing further (a flush that fails is retried before the next batch is
written): the partition waits rather than losing readings. A store that came back from a
restart holding less than was committed (see :mod:`healthsync.store.live`)
makes the processor consume again from where the store's data ends, and
reload its steps' state from it: the gap is replayed, never skipped.

Readings arrive sealed (see :mod:`healthsync.security.codec`); one that cannot
be opened (wrong or retired key, tampering) goes to the dead-letter topic with
the reason, like any other value that is not a reading. Dead letters travel
with their batch to the topic sink, so the batch's offsets are committed only
once Kafka has them too.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import orjson
from confluent_kafka import (
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.errors import StoreBehindError
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.stream.contracts import SeenFilter, Sink, Step
from healthsync.stream.gaps import OffsetGaps
from healthsync.stream.membership import Membership
from healthsync.stream.positions import lags, read_to_the_end
from healthsync.stream.retry import retry_until_stopped

log = logging.getLogger(__name__)

_LAG_INTERVAL_S = 1.0
# How often the anomaly engine's clock ticks (device-offline checks) when caught up.
_TICK_INTERVAL_S = 1.0
T = TypeVar("T")
Positions = dict[tuple[str, int], tuple[int, int]]


@dataclass(frozen=True)
class Pipeline:
    """What the processor runs each batch through, in order.

    `seen` tells which readings are stored already; `steps` enrich the batch;
    `sinks` store it (the one that records readings as seen last, see
    :mod:`healthsync.wiring`). With `ticks`, a clock tick (a batch with no
    readings) runs through the steps whenever the processor is caught up.
    """

    seen: SeenFilter
    steps: Sequence[Step]
    sinks: Sequence[Sink]
    stats: StatsRecorder
    publish_stats: Callable[[], None]
    ticks: bool = False


@dataclass(frozen=True)
class _InFlight:
    """A batch written to the sinks whose flush is under way."""

    batch: Batch
    flushed: Future[None]


class Processor:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        pipeline: Pipeline,
        codec: Codec,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.consumer = consumer
        self.seen = pipeline.seen
        self.steps = pipeline.steps
        self.sinks = pipeline.sinks
        self.stats = pipeline.stats
        self.publish_stats = pipeline.publish_stats
        self.ticks = pipeline.ticks
        self.gaps = OffsetGaps(self.stats)
        self.membership = Membership(settings.kafka.joined_file)
        self.stopping = False
        self._lag_at = 0.0
        self._tick_at = 0.0
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix="sink-flush")
        self._in_flight: _InFlight | None = None
        self._owned: set[int] = set()  # the vitals topic's partitions this processor holds
        self._at_end = False  # whether they were read to their end since assigned

    def stop(self) -> None:
        self.stopping = True

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Partitions (and so patients) moved: the steps rebuild their state from Redis,
        # which must hold the batch in flight first.
        self._settle()
        self.gaps.forget((p.topic, p.partition) for p in partitions)
        # Rebalances are cooperative: `partitions` are those added (often none), and the
        # steps are told everything the processor owns.
        self._owned |= {p.partition for p in partitions}
        self._at_end = False
        for step in self.steps:
            step.on_assign(frozenset(self._owned))
        log.info("partitions assigned", extra={"partitions": [p.partition for p in partitions]})
        self.membership.joined()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Stored and committed before the partitions' next owner reads them.
        self._settle()
        self.membership.left()
        self.gaps.forget((p.topic, p.partition) for p in partitions)
        self._owned -= {p.partition for p in partitions}
        for step in self.steps:
            step.on_assign(frozenset(self._owned))
        log.info("partitions revoked", extra={"partitions": [p.partition for p in partitions]})

    def run(self) -> None:
        cfg = self.settings.processor
        self.consumer.subscribe(
            [self.settings.kafka.vitals_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        log.info("processor started", extra={"group": cfg.group_id})
        try:
            while not self.stopping:
                messages = self._next_batch(cfg.batch_size, cfg.batch_wait_s)
                if messages:
                    self.handle(messages)
                if len(messages) < cfg.batch_size:
                    self._settle()  # caught up: no next batch to overlap with
                    if self._read_to_the_end():
                        self._tick()  # silence now means a quiet device, not a backlog
                self._report_lag(idle=not messages)
        finally:
            self._settle()
            self._flusher.shutdown()
            self.consumer.close()
            self.membership.left()
            log.info("processor stopped")

    def _next_batch(self, size: int, wait_s: float) -> list[Message]:
        """What arrived while the last batch was processed; else what `wait_s` gathers.

        Waiting to fill a batch only pays when nothing is waiting: readings
        fetched meanwhile are taken at once, so a reading waits out at most the
        batch in progress, not that batch plus the wait. A partition's messages
        past a hole in its offsets are left for the next batch (see
        :mod:`healthsync.stream.gaps`).
        """
        messages = self.consumer.consume(size, 0) or self.consumer.consume(size, wait_s)
        return self.gaps.check(self.consumer, messages)

    def _read_to_the_end(self) -> bool:
        """Whether partitions are held and each was read to its end since it was assigned.

        A short batch right after an assignment may only mean the first fetch has not
        come back, with the readings of the time the processor was away behind it: a
        tick then would call every device silent since (and before the first assignment
        the engine would tick every patient it finds in Redis). Asked of the broker until
        true once after each assignment, then taken as true until the next.
        """
        if self._at_end:
            return True
        if not self._owned:
            return False  # before the first assignment, nothing to tick for
        if not read_to_the_end(self.consumer):
            return False
        self._at_end = True
        return True

    def _tick(self) -> None:
        now = time.time()
        if not self.ticks or now - self._tick_at < _TICK_INTERVAL_S:
            return
        self._tick_at = now
        self.handle([], now=now)

    def handle(self, messages: list[Message], now: float | None = None) -> None:
        """Process one batch of messages; with none and `now` set, one clock tick.

        The batch is written once the batch before it is stored, and left flushing.
        """
        batch = self._decode(messages, now)
        readings, positions = batch.readings, batch.positions
        fresh = (
            self._retry("check seen", lambda: self.seen.filter_new(readings)) if readings else []
        )
        if fresh is None:
            return
        if self._in_flight is not None:
            storing = {r.reading_id for r in self._in_flight.batch.readings}
            fresh = [r for r in fresh if r.reading_id not in storing]
        self.stats.inc("duplicates_total", len(readings) - len(fresh))
        batch.readings = fresh
        for step in self.steps:
            if self._retry(type(step).__name__, functools.partial(self._run, step, batch)) is None:
                return  # stopping: nothing was written, the batch is replayed on restart
        if not (
            batch.readings or batch.alert_events or batch.states or batch.departed or positions
        ):
            return  # a tick that changed nothing
        if not self._settle(following=positions):
            return  # the batch before is replayed, and this one with it
        behind = self._retry("write sinks", lambda: self._write(batch))
        if behind is None:
            return  # stopping with the batch unwritten: it is replayed on restart
        if behind:
            self._rewind(behind, positions)
            return
        self._in_flight = _InFlight(batch, self._flusher.submit(self._flush))

    def _settle(self, following: Positions | None = None) -> bool:
        """Wait for the batch in flight and commit it once stored; a failed flush is
        retried (written and flushed again) first. False if it was not stored (stopping,
        or the store is behind: then it is consumed again, and so is the batch
        `following` it, at those positions)."""
        done, self._in_flight = self._in_flight, None
        if done is None:
            return True
        batch = done.batch
        try:
            done.flushed.result()
        except Exception as exc:  # noqa: BLE001 - retried as every sink failure is
            self.stats.inc("sink_errors_total")
            log.warning("write sinks failed; retrying", extra={"error": str(exc)})
            behind = self._retry("write sinks", lambda: self._store(batch))
            if behind is None:
                return False  # stopping: the batch is replayed on restart
            if behind:
                self._rewind(behind, {**(following or {}), **batch.positions})
                return False
        if batch.positions:
            self._commit({tp: after for tp, (_first, after) in batch.positions.items()})
        return True

    def _decode(self, messages: list[Message], now: float | None) -> Batch:
        """A batch of every reading in `messages` (before the seen-check), with their
        partitions and positions, and a dead letter for each value that is not one."""
        batch = Batch([], now=now)
        readings, partitions, positions = batch.readings, batch.partitions, batch.positions
        for message in messages:
            error = message.error()
            if error is not None:
                log.warning("consume error", extra={"error": error.str()})
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue  # only error events lack these, and those were handled above
            place = (topic, partition)
            first = positions[place][0] if place in positions else self.gaps.start_of(place, offset)
            positions[place] = (first, offset + 1)
            try:
                value = self.codec.open_message(roles.VITALS, message.key(), message.value() or b"")
                reading = Reading.from_json(value)
            except DecryptError as exc:
                batch.dead_letters.append(self._dead_letter(message, f"cannot decrypt: {exc}"))
                continue
            except ValueError as exc:
                batch.dead_letters.append(self._dead_letter(message, str(exc)))
                continue
            readings.append(reading)
            partitions[reading.patient_id] = partition
        return batch

    def _dead_letter(self, message: Message, reason: str) -> tuple[bytes, bytes]:
        """A value on the vitals topic that is not a reading, kept for audit: its key, and
        the record the dead-letter topic gets."""
        self.stats.inc("poison_messages_total")
        record = {
            "reason": "not_a_reading",
            "detail": reason[:200],
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "value": (message.value() or b"")[:4096].decode("utf-8", "replace"),
        }
        return message.key() or b"", orjson.dumps(record)

    @staticmethod
    def _run(step: Step, batch: Batch) -> bool:
        step.process(batch)
        return True

    def _write(self, batch: Batch) -> dict[tuple[str, int], int]:
        """Write every sink (to flush later); what to consume again if the store is behind."""
        try:
            for sink in self.sinks:
                sink.write(batch)
        except StoreBehindError as exc:
            return exc.positions
        return {}

    def _store(self, batch: Batch) -> dict[tuple[str, int], int]:
        """Write and flush every sink; what to consume again if the store is behind."""
        behind = self._write(batch)
        if not behind:
            self._flush()
        return behind

    def _flush(self) -> None:
        """Flush every sink, in order (the live sink, which records the readings as seen,
        last): on the flush thread, or on this one when a failed flush is retried."""
        for sink in self.sinks:
            sink.flush()

    def _rewind(self, behind: dict[tuple[str, int], int], positions: Positions) -> None:
        """Consume again from where the store's data ends, with state reloaded from it.

        Every partition of the dropped batches is rewound (the others to the batches'
        first offset), so none of their messages is skipped.
        """
        self.stats.inc("store_replays_total")
        log.warning("store behind the consumer; replaying", extra={"partitions": len(behind)})
        self.gaps.forget(positions)
        for place, (first, _after) in positions.items():
            topic, partition = place
            target = self.gaps.readable_from(self.consumer, place, behind.get(place, first))
            try:
                self.consumer.seek(TopicPartition(topic, partition, target))
            except KafkaException as exc:
                # Revoked meanwhile: its next owner finds the same gap and replays it.
                log.warning("rewind failed", extra={"error": str(exc)})
        for step in self.steps:
            step.on_assign(frozenset(self._owned))

    def _retry(self, what: str, action: Callable[[], T]) -> T | None:
        """Run `action` until it succeeds; None if asked to stop first."""
        return retry_until_stopped(
            what,
            action,
            lambda: self.stopping,
            on_error=lambda _exc: self.stats.inc("sink_errors_total"),
        )

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit without waiting for the broker: the next batch need not wait a round trip.

        Redis, not Kafka, says what is stored, so a commit that fails or is still
        under way when the process dies only replays batches the seen-check skips.
        A failure is logged by :func:`.positions.commit_failed`, from the next ``consume()``;
        closing the consumer waits for the commits still under way.
        """
        partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.commit(offsets=partitions, asynchronous=True)
        except KafkaException as exc:
            # e.g. a rebalance took the partition: its next owner replays the batch,
            # and the seen-check makes that safe.
            log.warning("offset commit failed", extra={"error": str(exc)})

    def _report_lag(self, idle: bool) -> None:
        now = time.monotonic()
        if now - self._lag_at < _LAG_INTERVAL_S:
            return
        self._lag_at = now
        for partition, lag in lags(self.consumer).items():
            self.stats.gauge("consumer_lag", lag, partition=str(partition))
        if idle:
            # Busy batches carry the stats in their own transaction; idle ones need a push.
            self._retry("publish stats", self.publish_stats)
