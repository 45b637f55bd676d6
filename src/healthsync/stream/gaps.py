"""Offsets a fetch skipped: read them again rather than move past them.

The pipeline's topics are never compacted and none of its producers is
transactional, so the offsets of a partition run on without holes. A consumer
that gets offset 12 where 10 was next has been handed a later record batch
before an earlier one became readable. The embedded broker (Tansu) does this
now and then while two producers (the ingest replicas) append to one partition
at once: in some runs of `bench/pipeline.py`'s 30,000 readings at 1,000/s, a
batch or two. The consumer would move past those readings for good:
acknowledged to the device, and never stored or archived.

So the messages of that partition from the hole on are put back: the
partition is sought to the first missing offset, and the next fetch reads the
missing records, which are readable by then. A hole still there after
`patience_s` is real (retention deleted the records before they were read):
it is skipped, logged and counted, so that a partition never stalls on it.
The next batch of that partition claims the hole (`start_of`), so that the
live store's record of how far the partition reaches takes it as passed, not
as readings missing from Redis (see :mod:`healthsync.store.live`).

The same holds where the store lacks readings that retention already deleted
from Kafka (Redis came back empty, or from an old backup, on a broker that
keeps a week): read again from where the store ends, the broker answers from
the partition's log start, beyond it. The partition is read from its log start
instead (`readable_from`), the offsets lost are logged and counted, and the
next batch claims them, rather than seeking back to them for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from healthsync.metrics import StatsRecorder

log = logging.getLogger(__name__)

Place = tuple[str, int]

# How long the broker may take to say where a partition starts.
_ASK_S = 2.0


class OffsetGaps:
    """Per partition, the next offset expected, and the holes being read again."""

    def __init__(self, stats: StatsRecorder | None, patience_s: float = 5.0) -> None:
        self.stats = stats
        self.patience_s = patience_s
        self._next: dict[Place, int] = {}
        # A hole being read again: its first missing offset, and since when.
        self._holes: dict[Place, tuple[int, float]] = {}
        # A hole skipped, by its first offset, until a batch starting after it claims it.
        self._skipped: dict[Place, int] = {}

    def forget(self, places: Iterable[Place]) -> None:
        """The consumer's position moved (assigned, revoked, sought): take what comes next."""
        for place in places:
            self._next.pop(place, None)
            self._holes.pop(place, None)
            self._skipped.pop(place, None)

    def start_of(self, place: Place, offset: int) -> int:
        """Where a batch whose first message of `place` is at `offset` starts: at the
        hole skipped just before it, if any, so the batch covers the hole too."""
        return min(offset, self._skipped.pop(place, offset))

    def readable_from(self, consumer: Consumer, place: Place, offset: int) -> int:
        """Where to read `place` again from `offset`: there, or at the partition's log
        start when retention deleted the records before it (the next batch then claims
        the offsets between). `offset` when the broker cannot say."""
        topic, partition = place
        try:
            low, _high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=_ASK_S
            )
        except KafkaException as exc:
            log.warning("log start unknown", extra={**_where(place, offset), "error": str(exc)})
            return offset
        if low <= offset:
            return offset
        self._skipped[place] = min(offset, self._skipped.get(place, offset))
        if self.stats is not None:
            self.stats.inc("offsets_expired_total", low - offset)
        log.warning(
            "readings the store lacks are no longer in Kafka; reading on from the log start",
            extra={**_where(place, offset), "log_start": low, "lost": low - offset},
        )
        return low

    def check(self, consumer: Consumer, messages: list[Message]) -> list[Message]:
        """`messages` up to the first hole of each partition; those partitions are sought
        back to the hole, so the next consume starts there."""
        kept: list[Message] = []
        held: set[Place] = set()
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if message.error() is not None or topic is None or partition is None or offset is None:
                kept.append(message)  # the caller reports errors
                continue
            place = (topic, partition)
            if place in held:
                continue
            expected = self._next.get(place)
            if expected is not None and offset > expected and self._read_again(consumer, place):
                held.add(place)
                continue
            self._next[place] = offset + 1
            hole = self._holes.get(place)
            if hole is not None and offset >= hole[0]:
                del self._holes[place]
            kept.append(message)
        return kept

    def _read_again(self, consumer: Consumer, place: Place) -> bool:
        """Seek back to the hole at `place`; False once it is to be skipped."""
        expected = self._next[place]
        now = time.monotonic()
        hole = self._holes.get(place)
        if hole is None or hole[0] != expected:
            hole = (expected, now)
            self._holes[place] = hole
            if self.stats is not None:
                self.stats.inc("fetch_gaps_total")
            log.info("a fetch skipped offsets; reading them again", extra=_where(place, expected))
        elif now - hole[1] > self.patience_s:
            self._skip(place, expected, "not readable")
            return False
        topic, partition = place
        try:
            consumer.seek(TopicPartition(topic, partition, expected))
        except KafkaException as exc:
            # e.g. revoked meanwhile: its next owner starts at the committed offset.
            self._skip(place, expected, str(exc))
            return False
        return True

    def _skip(self, place: Place, expected: int, why: str) -> None:
        del self._holes[place]
        self._skipped[place] = min(expected, self._skipped.get(place, expected))
        if self.stats is not None:
            self.stats.inc("offsets_skipped_total")
        log.warning("offsets skipped", extra={**_where(place, expected), "reason": why})


def _where(place: Place, offset: int) -> dict[str, object]:
    return {"topic": place[0], "partition": place[1], "offset": offset}
