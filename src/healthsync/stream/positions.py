"""Where a consumer stands in the partitions it holds: read to their end, its lag, and
the commits the broker refused."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

# How long the broker may take to say where a partition ends.
_ASK_S = 2.0


def read_to_the_end(consumer: Consumer) -> bool:
    """Whether each partition held has been read to its high watermark: from the
    consumer's position, or where the group left it when nothing was read from it yet.
    Asks the broker (False when it cannot say)."""
    try:
        assignment = consumer.assignment()
        committed: dict[int, int] | None = None
        for tp in consumer.position(assignment):
            low, high = consumer.get_watermark_offsets(tp, timeout=_ASK_S)
            at = tp.offset
            if at < 0:
                if committed is None:
                    done = consumer.committed(assignment, timeout=_ASK_S)
                    committed = {c.partition: c.offset for c in done}
                at = committed.get(tp.partition, -1)
            if max(at, low) < high:
                return False
    except KafkaException as exc:
        log.debug("end of partitions unknown", extra={"error": str(exc)})
        return False
    return True


def lags(consumer: Consumer) -> dict[int, int]:
    """Messages left to read per partition held, as the consumer last heard (no request)."""
    found: dict[int, int] = {}
    try:
        for tp in consumer.position(consumer.assignment()):
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                found[tp.partition] = high - tp.offset
    except KafkaException as exc:
        log.debug("lag unavailable", extra={"error": str(exc)})
    return found


def commit_failed(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
    """The consumer's ``on_commit``: log an asynchronous commit the broker refused."""
    if error is not None:
        # As with a synchronous failure: the next owner, or this process, replays.
        log.warning(
            "offset commit failed",
            extra={"error": error.str(), "partitions": [p.partition for p in partitions]},
        )
