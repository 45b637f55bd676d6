"""A batch's sinks flush while the next batch is processed: nothing is stored twice or lost.

The processor writes a batch and leaves its flush under way while it decodes
the next batch and runs it through the steps. A gate sink placed first holds
that flush open for as long as a test needs (the real sinks behind it are
written and flushed as ever), so the overlap the processor allows for can be
made as long as a slow Redis or Kafka would make it.
"""

from __future__ import annotations

import threading

from redis import Redis

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.kafka import ensure_topics
from healthsync.stream.processor import Processor
from healthsync.wiring import build_processor
from tests.conftest import wait_for
from tests.stream.test_archiver import produce
from tests.stream.test_offset_gaps import fresh_readings, running, stat, stored_ids


class Gate:
    """A sink first in line whose flush waits until the test opens it, or fails once."""

    def __init__(self, fail_first: bool = False) -> None:
        self.flushing = threading.Event()  # a flush is waiting at the gate
        self.open = threading.Event()
        self.fail_first = fail_first
        self.flushes = 0

    def write(self, batch: Batch) -> None:
        pass

    def flush(self) -> None:
        self.flushes += 1
        if self.fail_first and self.flushes == 1:
            raise ConnectionError("the store went away")
        self.flushing.set()
        assert self.open.wait(30), "the test never opened the gate"


def gated(settings: Settings, gate: Gate, batch_size: int) -> Processor:
    """The processor as `healthsync process` builds it, with `gate` before its sinks.

    Batches of `batch_size`: a full batch means more is waiting, so the processor
    goes on to the next one while the full one is flushing.
    """
    processing = settings.processor.model_copy(update={"batch_size": batch_size})
    processor = build_processor(settings.model_copy(update={"processor": processing}))
    processor.sinks = [gate, *processor.sinks]
    return processor


def test_a_reading_sent_again_while_its_first_copy_is_being_stored_is_stored_once(
    settings: Settings, redis: Redis
) -> None:
    ensure_topics(settings.kafka)
    [reading] = fresh_readings(1)
    # Ingest acknowledged the reading late and the device sent it again. One reading a
    # batch: the second copy's batch is checked against Redis while the first copy's is
    # still being stored, so Redis does not know the reading yet.
    produce(settings, [reading, reading])
    gate = Gate()
    processor = gated(settings, gate, batch_size=1)
    with running(processor):
        assert gate.flushing.wait(30), "the first copy's batch was never flushed"
        wait_for(
            lambda: processor.stats.lifetime["duplicates_total"] == 1,
            what="the second copy to be recognised",
        )
        gate.open.set()
        wait_for(
            lambda: stat(redis, settings, "processor", "readings_processed_total") >= 1,
            what="the reading to be stored",
        )
        wait_for(lambda: processor._in_flight is None, what="the processor to settle")

    assert stored_ids(redis, settings) == {reading.reading_id}
    assert stat(redis, settings, "processor", "readings_processed_total") == 1
    assert stat(redis, settings, "processor", "duplicates_total") == 1


def test_a_batch_whose_flush_failed_is_written_again_and_stored_once(
    settings: Settings, redis: Redis
) -> None:
    ensure_topics(settings.kafka)
    sent = fresh_readings(10)
    # A batch from each of two partitions. The first batch's flush fails while the
    # second is processed: the first is written and flushed again before the second.
    produce(settings, sent[:5], partition=0)
    produce(settings, sent[5:], partition=1)
    gate = Gate(fail_first=True)
    gate.open.set()
    processor = gated(settings, gate, batch_size=5)
    with running(processor):
        wait_for(
            lambda: stat(redis, settings, "processor", "readings_processed_total") >= len(sent),
            what="every reading to be stored",
        )
        wait_for(lambda: processor._in_flight is None, what="the processor to settle")

    assert gate.flushes >= 2, "the failed batch was not flushed again"
    assert stored_ids(redis, settings) == {r.reading_id for r in sent}
    assert stat(redis, settings, "processor", "readings_processed_total") == len(sent)
    assert stat(redis, settings, "processor", "sink_errors_total") >= 1
