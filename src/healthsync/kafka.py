"""Kafka clients and topics, configured from settings.

Every client gets ``KafkaSettings.client`` passed through verbatim, so SSL or
SASL for a real cluster needs no code change.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from healthsync.config import KafkaSettings
from healthsync.errors import ConfigError, HealthSyncError

log = logging.getLogger(__name__)
# The longest `unread` reads for.
_UNREAD_BUDGET_S = 5.0
# How long the broker may hold `unread`'s fetches: the processor's wait, the shortest
# that still drains a backlog at once (ProcessorSettings.fetch_wait_ms).
_UNREAD_FETCH_WAIT_MS = 50
_librdkafka_log = logging.getLogger("kafka")


class KafkaUnavailableError(HealthSyncError):
    """The broker did not answer in time."""


def client_config(
    settings: KafkaSettings,
    defaults: dict[str, Any] | None = None,
    required: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """librdkafka settings: our defaults, then the user's `kafka.client`, then what we require.

    Required settings are the ones HealthSync's guarantees rest on (acks=all,
    manual commits); a user's setting cannot weaken them.
    """
    if not settings.bootstrap:
        raise ConfigError("no Kafka bootstrap servers configured (HEALTHSYNC_KAFKA_BOOTSTRAP)")
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap, "logger": _librdkafka_log}
    config.update(defaults or {})
    config.update(settings.client)
    config.update(required or {})
    return config


# How long a producer gathers messages into one request. The broker's cost is per request
# far more than per message, and the embedded broker's grows with every request it keeps:
# its memory storage holds each partition's record batch of each request as an object and
# lists all of a partition's objects to answer each fetch (Tansu 0.6, see docs/OPERATIONS.md).
# At 1,000 readings/s through `up`'s defaults, 2 ms kept it at 51% of a core at once; 25 ms
# at 23% at first but 93% after 150 s, as the objects piled up, with send-to-visible p99
# rising from 254 ms to 2.9 s; 100 ms at 12% at first and 28% after 150 s, with p99 at
# 174-288 ms in all but one 15 s interval, 460 ms (bench/pipeline.py --soak 150
# --soak-rate 1000). An OK reply waits for the linger (p50 55 ms at that rate). A flush,
# as the processor's after each batch, sends at once whatever the linger.
LINGER_MS = 100


def make_producer(
    settings: KafkaSettings, required: dict[str, Any] | None = None, **defaults: Any
) -> Producer:
    """An idempotent producer that only reports success once all replicas have it."""
    tuning = {"linger.ms": LINGER_MS, "batch.num.messages": 10_000, "compression.type": "lz4"}
    # The topics are created by ensure_topics only, with the pipeline's partitions and
    # configs. A producer asking for a missing topic's metadata would otherwise have
    # Tansu create it (4 partitions) after a broker restart or a recycle.
    safety = {"acks": "all", "enable.idempotence": True, "allow.auto.create.topics": False}
    safety |= required or {}
    return Producer(client_config(settings, tuning | defaults, safety))


def make_consumer(settings: KafkaSettings, group_id: str, **defaults: Any) -> Consumer:
    """A consumer whose offsets the caller commits, after its sinks succeeded."""
    tuning = {
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
    }
    required = {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
    }
    return Consumer(client_config(settings, tuning | defaults, required))


def ensure_topics(settings: KafkaSettings, timeout: float = 15.0) -> None:
    """Create the pipeline's topics with explicit configs; existing ones are kept.

    Configs are given at creation because some brokers (Tansu) only report
    the configs a topic was created with.
    """
    admin = AdminClient(client_config(settings))
    configs = {"retention.ms": str(settings.retention_ms), "cleanup.policy": "delete"}
    wanted = [
        NewTopic(name, settings.partitions, settings.replication_factor, config=configs)
        for name in settings.topics()
    ]
    futures = admin.create_topics(wanted, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            log.info("topic created", extra={"topic": name, "partitions": settings.partitions})
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise KafkaUnavailableError(
                    f"could not create topic {name}: {error.str()}"
                ) from exc
        except TimeoutError as exc:
            raise KafkaUnavailableError(f"broker did not answer creating {name}") from exc


def check_broker(settings: KafkaSettings, timeout: float = 2.0) -> None:
    """Raise KafkaUnavailableError unless the broker answers a metadata request."""
    admin = AdminClient(client_config(settings))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"Kafka at {settings.bootstrap} did not answer") from exc


def delete_topics(settings: KafkaSettings, topics: list[str], timeout: float = 15.0) -> None:
    """Delete `topics` and wait until the broker says they are gone."""
    admin = AdminClient(client_config(settings))
    futures = admin.delete_topics(topics, request_timeout=timeout)
    _deleted(futures, "topic", KafkaError.UNKNOWN_TOPIC_OR_PART, timeout)
    deadline = time.monotonic() + timeout
    while set(topics) & set(admin.list_topics(timeout=timeout).topics):
        if time.monotonic() > deadline:
            raise KafkaUnavailableError(f"topics still listed {timeout:.0f} s after deletion")
        time.sleep(0.1)


def delete_groups(settings: KafkaSettings, groups: list[str], timeout: float = 15.0) -> None:
    """Delete consumer `groups` (each must have no member left); one that does not exist
    is already gone. KafkaUnavailableError if the broker refuses or does not answer."""
    admin = AdminClient(client_config(settings))
    futures = admin.delete_consumer_groups(groups, request_timeout=timeout)
    _deleted(futures, "consumer group", KafkaError.GROUP_ID_NOT_FOUND, timeout)


def _deleted(futures: dict[str, Any], what: str, gone: int, timeout: float) -> None:
    """Wait for the answers to a delete request; the error `gone` means there was nothing
    to delete. KafkaUnavailableError for any other error, or no answer."""
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != gone:
                raise KafkaUnavailableError(
                    f"could not delete {what} {name}: {exc.args[0].str()}"
                ) from exc
        except TimeoutError as exc:
            raise KafkaUnavailableError(f"broker did not answer deleting {what} {name}") from exc


def unread(
    settings: KafkaSettings,
    group: str,
    topics: list[str],
    limit: int,
    before: float | None = None,
) -> int:
    """Messages of `topics` after `group`'s committed offsets: at most `limit` + 1 are counted.

    Counted by reading them (without joining the group or committing), not worked
    out from high watermarks: Tansu 0.6 reports a partition's end as one offset per
    record batch (1,000 messages in one batch: watermarks (0, 1)), which would make
    a group that is behind look caught up. Each partition is read up to the end its
    fetches report (the partition-EOF event, which Tansu gets right), not until a
    quiet second. Tansu holds a fetch for all of ``fetch.wait.max.ms`` while a
    partition in it has nothing new, and a partition with nothing committed waits
    for its start offset behind such a fetch: with librdkafka's 500 ms an answer of
    0 took 1.2-1.7 s inside `up` at 5,000 readings/s, with `_UNREAD_FETCH_WAIT_MS`
    0.2-0.26 s. A broker recycle asks it over and over while ingest is held
    (:mod:`healthsync.recycle`). With `before` (epoch seconds) only messages
    produced before it count, so the count means something while producers carry
    on; a partition's first message produced after it ends its count, as the end
    may never be reached then. KafkaUnavailableError if the ends are not all
    reached in `_UNREAD_BUDGET_S`.
    """
    wanted = [TopicPartition(t, p) for t in topics for p in range(settings.partitions)]
    required = {"group.id": group, "enable.auto.commit": False, "enable.partition.eof": True}
    consumer = Consumer(
        client_config(settings, {"fetch.wait.max.ms": _UNREAD_FETCH_WAIT_MS}, required)
    )
    cutoff = None if before is None else before * 1000
    try:
        committed = consumer.committed(wanted, timeout=5.0)
        for tp in committed:
            if tp.offset < 0:  # nothing committed yet: all of it is unread
                tp.offset = OFFSET_BEGINNING
        consumer.assign(committed)
        pending = {(tp.topic, tp.partition) for tp in committed}
        count = 0
        deadline = time.monotonic() + _UNREAD_BUDGET_S
        while pending and count <= limit:
            if time.monotonic() > deadline:
                raise KafkaUnavailableError(
                    f"could not read to the end of what {group} has not read "
                    f"in {_UNREAD_BUDGET_S:.0f} s"
                )
            # Short waits: consume() waits for a full batch or its timeout.
            for message in consumer.consume(1000, 0.2):
                error = message.error()
                place = (message.topic(), message.partition())
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(place)
                elif cutoff is None or message.timestamp()[1] <= cutoff:
                    count += 1
                else:  # produced after `before`, as is what follows it
                    pending.discard(place)
        return count
    except KafkaException as exc:
        raise KafkaUnavailableError(f"could not read what {group} has not: {exc}") from exc
    finally:
        consumer.close()


class TopicIds:
    """Each topic's id: a UUID that changes when the topic is created again.

    A topic deleted and created again, or held in memory by a broker that
    restarted, starts its offsets over at 0; its id tells the two apart. Each
    question gets a client of its own: librdkafka's metadata cache can crash a
    client that held a topic's old id when it sees the new one (librdkafka
    issue 4964), and the question comes up when a topic was created again.
    """

    def __init__(self, settings: KafkaSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout

    def __call__(self, topic: str) -> str:
        """The topic's id as 32 hex digits, asked of the broker now; "" if it has none.

        Brokers older than Kafka 2.8 (metadata before version 10) report no ids.
        """
        admin = AdminClient(client_config(self.settings))
        futures = admin.describe_topics(TopicCollection([topic]), request_timeout=self.timeout)
        try:
            description = futures[topic].result(self.timeout)
        except KafkaException as exc:
            raise KafkaUnavailableError(
                f"could not describe topic {topic}: {exc.args[0].str()}"
            ) from exc
        except TimeoutError as exc:
            raise KafkaUnavailableError(f"broker did not answer describing {topic}") from exc
        return topic_id_hex(getattr(description, "topic_id", None))


def topic_id_hex(topic_id: Any) -> str:
    """A confluent-kafka `Uuid` as 32 hex digits; "" for none or the all-zero id."""
    if topic_id is None:
        return ""
    mask = (1 << 64) - 1
    high = topic_id.get_most_significant_bits() & mask
    low = topic_id.get_least_significant_bits() & mask
    value = (high << 64) | low
    return f"{value:032x}" if value else ""
