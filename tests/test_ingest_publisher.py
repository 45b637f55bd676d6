"""Ingest's producer against a real broker: a producer whose identity the broker no longer
accepts is replaced, so readings are acknowledged again without a restart."""

from __future__ import annotations

import asyncio
import logging

import pytest
from confluent_kafka import KafkaError

from healthsync.config import Settings
from healthsync.ingest.publisher import Publisher
from healthsync.kafka import ensure_topics


async def deliver(publisher: Publisher, topic: str, value: bytes) -> KafkaError | None:
    """Publish one message and wait for Kafka's answer."""
    answer: asyncio.Future[KafkaError | None] = asyncio.get_running_loop().create_future()
    publisher.publish(topic, b"key", value, answer.set_result)
    return await asyncio.wait_for(answer, timeout=30)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(KafkaError.PRODUCER_FENCED, id="fenced"),
        pytest.param(KafkaError.INVALID_PRODUCER_EPOCH, id="stale-epoch"),
        pytest.param(KafkaError.UNKNOWN_PRODUCER_ID, id="unknown-id"),
    ],
)
def test_a_producer_the_broker_fenced_is_replaced_and_readings_flow_again(
    settings: Settings, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that restarted empty may give the producer id an ingest replica still
    uses to another producer, then answer every message of the replica with
    PRODUCER_FENCED; librdkafka keeps the id, so only a new producer gets through. The
    broker's answer is given to the publisher as librdkafka reports it (this broker
    fences only when its restart races two producers, which a test cannot arrange)."""
    ensure_topics(settings.kafka)
    topic = settings.kafka.vitals_topic
    caplog.set_level(logging.WARNING, logger="healthsync.ingest.publisher")

    async def scenario() -> None:
        publisher = Publisher(settings.kafka, 5.0)
        publisher.start()
        try:
            assert await deliver(publisher, topic, b"before") is None
            fenced = publisher._producer
            publisher.delivered(KafkaError(code))
            for _ in range(100):
                if publisher._producer is not fenced:
                    break
                await asyncio.sleep(0.05)
            assert publisher._producer is not fenced, "the fenced producer is still in use"
            assert await deliver(publisher, topic, b"after") is None
        finally:
            await publisher.close(5.0)

    asyncio.run(scenario())
    logged = [r.getMessage() for r in caplog.records]
    assert "kafka delivery failed" in logged
    assert "kafka producer failed; replacing it" in logged
