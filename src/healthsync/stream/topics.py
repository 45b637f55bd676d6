"""A Sink that publishes the batch's FHIR resources and alert events to Kafka.

The observations topic gets every resource but the alerts' (Patient and
Device, each reading's Bundle of Observations, NEWS2's Observation and
RiskAssessment), in that order; each alert event on the alerts topic carries
the alert's Communication and Flag as they were after that event; the
dead-letter topic gets the batch's values that were not readings.
Values are sealed by the codec and keyed by the patient's pseudonym (a dead
letter keeps its message's key).

A batch Kafka did not acknowledge is produced again whole by the processor's
retry. When a `renew` factory is given, the producer is replaced first: one
whose broker restarted empty keeps failing on its lost idempotence state
(UNKNOWN_PRODUCER_ID) and would never recover on its own. So is a producer
that refuses a message outright: in librdkafka's fatal state it refuses every
message until it is replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from healthsync.config import KafkaSettings
from healthsync.domain.batch import Batch
from healthsync.errors import HealthSyncError
from healthsync.fhir.alerts import alert_resources
from healthsync.security import codec as roles
from healthsync.security.codec import Codec

# What the readings' Observations refer to: on the topic before them.
_REFERRED = frozenset({"Patient", "Device"})


class PublishError(HealthSyncError):
    """Kafka did not acknowledge everything a batch produced."""


class KafkaTopicSink:
    def __init__(
        self,
        producer: Producer,
        settings: KafkaSettings,
        codec: Codec,
        flush_timeout_s: float = 30.0,
        renew: Callable[[], Producer] | None = None,
    ) -> None:
        self.producer = producer
        self.renew = renew
        self.settings = settings
        self.codec = codec
        self.flush_timeout_s = flush_timeout_s
        self._failures: list[KafkaError] = []

    def _report(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failures.append(error)

    def _produce(self, topic: str, role: str, patient_id: str, value: bytes) -> None:
        self._send(topic, role, self.codec.message_key(patient_id), value)

    def _send(self, topic: str, role: str, key: bytes, value: bytes) -> None:
        value = self.codec.seal_message(role, key, value)
        try:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._report)
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self.producer.poll(1.0)
                self.producer.produce(topic, value, key, on_delivery=self._report)
        except KafkaException as exc:
            self._replace()
            raise PublishError(f"Kafka refused a message of the batch: {exc}") from exc

    def write(self, batch: Batch) -> None:
        topic = self.settings.observations_topic
        # Patients and Devices before the readings' Bundles that refer to them, and the
        # Bundles before the NEWS2 resources derived from their Observations.
        derived = []
        for key, resource in batch.observations:
            if resource["resourceType"] in _REFERRED:
                self._produce(topic, roles.OBSERVATIONS, key, orjson.dumps(resource))
            else:
                derived.append((key, resource))
        for bundle in batch.bundles:
            self._produce(topic, roles.OBSERVATIONS, bundle.patient_id, bundle.json)
        for key, resource in derived:
            self._produce(topic, roles.OBSERVATIONS, key, orjson.dumps(resource))
        for event in batch.alert_events:
            # Built from the event's own snapshot: an alert that opens and resolves in one
            # batch sends two events, each with its resources as they were then.
            communication, flag = alert_resources(event.alert, self.codec.id_key)
            value = {
                "event": event.type,
                "alert": event.alert.to_dict(),
                "communication": communication,
                "flag": flag,
            }
            self._produce(
                self.settings.alerts_topic,
                roles.ALERTS,
                event.alert.patient_id,
                orjson.dumps(value),
            )
        for message_key, record in batch.dead_letters:
            self._send(self.settings.dlq_topic, roles.DLQ, message_key, record)
        self.producer.poll(0)

    def flush(self) -> None:
        remaining = self.producer.flush(self.flush_timeout_s)
        failures, self._failures = self._failures, []
        if remaining or failures:
            reason = failures[0].str() if failures else f"{remaining} messages still queued"
            self._replace()
            raise PublishError(f"Kafka did not acknowledge the batch: {reason}")

    def _replace(self) -> None:
        """A new producer for the batch's retry, if there is a `renew` factory; what the old
        one still holds of the batch is dropped (the retry produces the batch whole)."""
        if self.renew is None:
            return
        self.producer.purge()
        self.producer.poll(0)
        self._failures = []
        self.producer = self.renew()
