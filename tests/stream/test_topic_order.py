"""The observations topic, as the processor's topic sink publishes a batch to a real broker:
a patient's Patient and Device first, then the readings' Bundles that refer to them, then
the NEWS2 resources derived from the Bundles' Observations."""

from __future__ import annotations

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.fhir.step import FhirResources
from healthsync.kafka import ensure_topics, make_producer
from healthsync.security.codec import Codec
from healthsync.stream.news2 import News2Scores
from healthsync.stream.topics import KafkaTopicSink
from tests.test_pipeline import read_topic

TS = 1_795_787_117.825


def test_a_batch_reaches_the_topic_referred_resources_first(settings: Settings) -> None:
    ensure_topics(settings.kafka)
    codec = Codec.from_settings(settings)
    readings = [
        Reading(f"{n:024x}", "mon-1", "P-1", TS + n, TS + n, {"heart_rate": 70 + n, "spo2": 97})
        for n in range(2)
    ]
    batch = Batch(readings)
    News2Scores(lambda patients: {}, freshness_s=900).process(batch)
    FhirResources("urn:mrn", id_key=codec.id_key).process(batch)
    sink = KafkaTopicSink(make_producer(settings.kafka), settings.kafka, codec)

    sink.write(batch)
    sink.flush()

    # One patient: one partition, read in the order it was written.
    topic = read_topic(settings, settings.kafka.observations_topic, 6)
    assert [(r["resourceType"], r["id"]) for r in topic] == [
        ("Patient", "P-1"),
        ("Device", "mon-1"),
        ("Bundle", readings[0].reading_id),
        ("Bundle", readings[1].reading_id),
        *[(r["resourceType"], r["id"]) for r in topic[4:] if r["id"].startswith("news2-")],
    ]
    assert [r["resourceType"] for r in topic[4:]] == ["Observation", "RiskAssessment"]
    bundle = topic[2]
    assert [e["resource"]["id"] for e in bundle["entry"]] == [
        f"{readings[0].reading_id}-heart-rate",
        f"{readings[0].reading_id}-spo2",
    ]
