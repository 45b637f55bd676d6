"""Client settings: a user's passthrough settings win over tuning, never over safety;
the topics are the pipeline's to create."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from healthsync.config import KafkaSettings
from healthsync.errors import ConfigError
from healthsync.kafka import client_config, delete_topics, ensure_topics, make_producer, unread
from healthsync.stack import Service
from tests.conftest import make_settings


def test_user_settings_override_tuning_but_not_what_guarantees_rest_on() -> None:
    settings = KafkaSettings(
        bootstrap="b:9092",
        client={"linger.ms": "50", "acks": "0", "security.protocol": "SSL"},
    )
    config = client_config(settings, defaults={"linger.ms": 2}, required={"acks": "all"})
    assert config["bootstrap.servers"] == "b:9092"
    assert config["linger.ms"] == "50"
    assert config["security.protocol"] == "SSL"
    assert config["acks"] == "all"


def test_no_bootstrap_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="HEALTHSYNC_KAFKA_BOOTSTRAP"):
        client_config(KafkaSettings())


def test_a_deleted_topic_is_not_created_again_by_a_producer_asking_for_it(
    broker: Service, redis_server: Service
) -> None:
    # Tansu creates a topic a producer asks metadata for (with 4 partitions, not the
    # pipeline's): after a broker restart or a recycle, ingest's producer would make
    # the vitals topic before ensure_topics could, with the wrong partition count.
    kafka = make_settings(broker, redis_server).kafka
    ensure_topics(kafka)
    delete_topics(kafka, [kafka.vitals_topic])
    producer = make_producer(kafka)
    metadata = producer.list_topics(kafka.vitals_topic, timeout=5)
    assert metadata.topics[kafka.vitals_topic].error is not None
    admin = AdminClient(client_config(kafka))
    assert kafka.vitals_topic not in admin.list_topics(timeout=5).topics
    ensure_topics(kafka)
    partitions = admin.list_topics(timeout=5).topics[kafka.vitals_topic].partitions
    assert len(partitions) == kafka.partitions


def test_unread_counts_up_to_each_partition_end_however_long_a_fetch_is_held(
    broker: Service, redis_server: Service
) -> None:
    # A broker holds a fetch open for up to fetch.wait.max.ms while a partition in it has
    # nothing new (Tansu for the whole wait), and a partition with no committed offset
    # first waits for its start offset, behind that fetch. The group below is 30 messages
    # behind; a quiet second, here as under load on two cores, does not mean it caught up.
    kafka = make_settings(broker, redis_server).kafka
    ensure_topics(kafka)
    producer = make_producer(kafka)
    producer.produce(kafka.vitals_topic, b"read", b"k", partition=0)
    for _ in range(30):
        producer.produce(kafka.vitals_topic, b"not read", b"k", partition=1)
    assert producer.flush(30) == 0
    group = f"{kafka.vitals_topic}-reader"
    committer = Consumer(client_config(kafka, {}, {"group.id": group}))
    committer.commit(offsets=[TopicPartition(kafka.vitals_topic, 0, 1)], asynchronous=False)
    committer.close()

    kafka.client = {"fetch.wait.max.ms": "1200"}
    assert unread(kafka, group, [kafka.vitals_topic], 0) > 0, "caught up, it says"
    assert unread(kafka, group, [kafka.vitals_topic], 100) == 30


def test_unread_before_a_time_counts_while_producers_carry_on(
    broker: Service, redis_server: Service
) -> None:
    # Under steady production a partition's end moves on with every fetch: the count of
    # what was there before `before` must not wait for an end it may never reach (the
    # broker recycle asks while ingest still takes readings).
    kafka = make_settings(broker, redis_server).kafka
    ensure_topics(kafka)
    producer = make_producer(kafka)
    for i in range(40):
        producer.produce(kafka.vitals_topic, b"before", f"k{i}".encode())
    assert producer.flush(30) == 0
    time.sleep(0.05)  # timestamps are in milliseconds: none on the edge
    before = time.time()
    time.sleep(0.05)
    stop = threading.Event()

    def carry_on() -> None:
        while not stop.is_set():
            for i in range(kafka.partitions * 5):
                producer.produce(kafka.vitals_topic, b"after", f"k{i}".encode())
            producer.flush(5)
            time.sleep(0.01)

    producing = threading.Thread(target=carry_on)
    producing.start()
    try:
        time.sleep(0.5)
        assert unread(kafka, "nobody", [kafka.vitals_topic], 1000, before=before) == 40
    finally:
        stop.set()
        producing.join(10)
