"""The processor's topic sink replaces a producer that refuses messages outright, so the
batch's retry reaches Kafka (its resources and its dead letters) instead of failing on the
same producer for ever."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.fhir.step import FhirResources
from healthsync.kafka import client_config, ensure_topics, make_producer
from healthsync.security.codec import Codec
from healthsync.stream.news2 import News2Scores
from healthsync.stream.topics import KafkaTopicSink, PublishError
from tests.test_pipeline import read_topic

TS = 1_795_787_117.825


class FatalProducer(Producer):
    """A real producer whose ``produce`` answers as librdkafka's does in its fatal state.

    librdkafka enters that state on the broker's answers (an idempotence state the
    broker lost, as after it restarted empty while two producers raced), which the
    test broker cannot be made to give on demand; every other call is the real one.
    """

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._FATAL, "Local: Fatal error", fatal=True))


def test_a_producer_in_its_fatal_state_is_replaced_and_the_retry_reaches_the_topic(
    settings: Settings,
) -> None:
    ensure_topics(settings.kafka)
    codec = Codec.from_settings(settings)
    readings = [
        Reading(f"{n:024x}", "mon-1", "P-1", TS + n, TS + n, {"heart_rate": 70 + n})
        for n in range(2)
    ]
    batch = Batch(readings)
    batch.dead_letters.append((b"P-X", b'{"reason": "not_a_reading", "offset": 7}'))
    News2Scores(lambda patients: {}, freshness_s=900).process(batch)
    FhirResources("urn:mrn", id_key=codec.id_key).process(batch)
    fatal = FatalProducer(client_config(settings.kafka))
    sink = KafkaTopicSink(fatal, settings.kafka, codec, renew=lambda: make_producer(settings.kafka))

    with pytest.raises(PublishError, match="Fatal error"):
        sink.write(batch)
    assert sink.producer is not fatal, "the batch's retry would use the fatal producer again"

    # The processor's retry: the batch written whole, then flushed.
    sink.write(batch)
    sink.flush()

    topic = read_topic(settings, settings.kafka.observations_topic, 6)
    bundles = [r["id"] for r in topic if r["resourceType"] == "Bundle"]
    assert bundles == [r.reading_id for r in readings]
    assert read_topic(settings, settings.kafka.dlq_topic, 1) == [
        {"reason": "not_a_reading", "offset": 7}
    ]
