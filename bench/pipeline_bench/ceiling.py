"""Phase 1: the broker's raw produce and consume rates with no pipeline logic."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from healthsync.config import Settings
from healthsync.kafka import client_config, make_producer
from healthsync.wire import parse_line
from pipeline_bench.driver import Device
from pipeline_bench.figures import rate


@dataclass
class Ceiling:
    messages: int
    value_bytes: int
    produce_rate: float
    consume_rate: float
    produce_errors: int
    rounds: int

    @property
    def rate(self) -> float:
        return min(self.produce_rate, self.consume_rate)


def sample_value(device: Device) -> bytes:
    """The JSON value ingest would put on the vitals topic for this device's reading."""
    line, _ = device.lines(1)
    return parse_line(line, time.time()).to_json()


def measure_ceiling(
    settings: Settings, messages: int, value: bytes, keys: list[bytes], rounds: int
) -> Ceiling:
    """Best of `rounds` produce runs and consume runs, each of `messages` messages."""
    kafka = settings.kafka
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_config(kafka))
    configs = {"retention.ms": str(kafka.retention_ms), "cleanup.policy": "delete"}
    futures = admin.create_topics(
        [NewTopic(topic, kafka.partitions, kafka.replication_factor, config=configs)]
    )
    for future in futures.values():
        future.result(timeout=15)
    produced: list[float] = []
    consumed: list[float] = []
    failures = 0
    try:
        for _ in range(rounds):
            starts = _high_watermarks(settings, topic)
            produce_rate, failed = _produce_run(settings, topic, messages, value, keys)
            produced.append(produce_rate)
            failures += failed
            consumed.append(_consume_run(settings, topic, starts, messages - failed))
    finally:
        with contextlib.suppress(Exception):  # cleanup only: memory storage frees the messages
            for future in admin.delete_topics([topic]).values():
                future.result(timeout=10)
    return Ceiling(
        messages=messages,
        value_bytes=len(value),
        produce_rate=max(produced),
        consume_rate=max(consumed),
        produce_errors=failures,
        rounds=rounds,
    )


def _produce_run(
    settings: Settings, topic: str, messages: int, value: bytes, keys: list[bytes]
) -> tuple[float, int]:
    """Messages/s from the first produce() until flush() returns, and how many failed."""
    # The same producer configuration ingest uses: acks=all, idempotent, lz4, its linger.
    producer = make_producer(settings.kafka)
    failures = 0

    def report(error: KafkaError | None, _message: Any) -> None:
        nonlocal failures
        if error is not None:
            failures += 1

    produce = producer.produce
    nkeys = len(keys)
    started = time.perf_counter()
    for i in range(messages):
        while True:
            try:
                produce(topic, value, keys[i % nkeys], on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 5000 == 0:
            producer.poll(0)
    failures += producer.flush(60)
    return rate(messages - failures, time.perf_counter() - started), failures


def _ceiling_consumer(settings: Settings) -> Consumer:
    return Consumer(
        client_config(
            settings.kafka,
            required={
                "group.id": f"bench-ceiling-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )


def _high_watermarks(settings: Settings, topic: str) -> list[int]:
    consumer = _ceiling_consumer(settings)
    try:
        return [
            int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in range(settings.kafka.partitions)
        ]
    finally:
        consumer.close()


def _consume_run(settings: Settings, topic: str, starts: list[int], messages: int) -> float:
    """Messages/s reading `messages` messages from offsets `starts` with batched consume()."""
    consumer = _ceiling_consumer(settings)
    try:
        partitions = [TopicPartition(topic, p, offset) for p, offset in enumerate(starts)]
        consumer.assign(partitions)
        received = counted = 0
        first_at = last_at = 0.0
        deadline = time.perf_counter() + 60
        while received < messages and time.perf_counter() < deadline:
            batch = consumer.consume(10_000, 1.0)
            good = sum(1 for m in batch if m.error() is None)
            if not good:
                continue
            now = time.perf_counter()
            if received == 0:
                first_at = now  # the clock starts once data flows; this batch is not counted
            else:
                counted += good
            received += good
            last_at = now
    finally:
        consumer.close()
    return rate(counted, last_at - first_at)
