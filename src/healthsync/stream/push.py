"""`healthsync push`: FHIR resources from the output topics to an EHR's FHIR server.

A consumer group of its own on the observations and alerts topics, so an EHR
that is slow or down delays only the push, never the live pipeline (alerts,
Redis, the API). Offsets are committed after the EHR accepted a batch; the
sink's conditional updates make a replay harmless. Values are opened through
the codec; one that cannot be opened is logged (its reason, no content) and skipped.
Offsets a fetch skipped are read again (:mod:`healthsync.stream.gaps`).

A resource the EHR refuses on its own (:class:`~healthsync.fhir.ehr_push.EhrPushSink`)
is set aside on the dead-letter topic, sealed, with the EHR's reason
(``ehr_refused``), and counted (``ehr_refused_total``), before the batch's offsets
are committed: the push goes on with the rest, and nothing is lost.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from healthsync.config import Settings
from healthsync.fhir.ehr_push import EhrPushSink, Refused
from healthsync.fhir.observations import unbundled
from healthsync.metrics import Reporting
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.stream.gaps import OffsetGaps
from healthsync.stream.membership import Membership
from healthsync.stream.retry import retry_until_stopped
from healthsync.stream.topics import PublishError

log = logging.getLogger(__name__)

_PUBLISH_INTERVAL_S = 1.0
_DLQ_FLUSH_S = 10.0


def resources_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every FHIR resource in a topic value: the value itself, the Observations of a reading's
    Bundle, or those an alert event carries."""
    if isinstance(value, dict):
        if "resourceType" in value:
            yield from unbundled([value])
            return
        for item in value.values():
            yield from resources_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from resources_in(item)


@dataclass(frozen=True)
class Outlets:
    """Where the push puts what it reads: the EHR, and the dead-letter topic for what
    the EHR refuses."""

    ehr: EhrPushSink
    dead_letters: Producer


class EhrPusher:
    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        outlets: Outlets,
        codec: Codec,
        reporting: Reporting,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.dead_letters = outlets.dead_letters
        self.stats = reporting.stats
        self.publish_stats = reporting.publish
        self._published_at = 0.0
        kafka = settings.kafka
        self._roles = {
            kafka.observations_topic: roles.OBSERVATIONS,
            kafka.alerts_topic: roles.ALERTS,
        }
        self.consumer = consumer
        self.sink = outlets.ehr
        # A hole read again or skipped shows in the push's log only.
        self.gaps = OffsetGaps(None)
        self.membership = Membership(settings.kafka.joined_file)
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True

    def run(self) -> None:
        kafka = self.settings.kafka
        self.consumer.subscribe(
            [kafka.observations_topic, kafka.alerts_topic],
            on_assign=self._assigned,
            on_revoke=self._revoked,
        )
        log.info("ehr push started")
        try:
            while not self.stopping:
                fetched = self.consumer.consume(
                    self.settings.fhir.ehr_batch_size, self.settings.processor.batch_wait_s
                )
                messages = self.gaps.check(self.consumer, fetched)
                if messages:
                    self.handle(messages)
        finally:
            self.consumer.close()
            self.membership.left()
            self.sink.close()
            log.info("ehr push stopped")

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.gaps.forget((tp.topic, tp.partition) for tp in partitions)
        self.membership.joined()

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.membership.left()
        self.gaps.forget((tp.topic, tp.partition) for tp in partitions)

    def handle(self, messages: list[Message]) -> None:
        offsets: dict[tuple[str, int], int] = {}
        resources: list[dict[str, Any]] = []
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if message.error() is not None or topic is None or partition is None or offset is None:
                continue
            offsets[(topic, partition)] = offset + 1
            try:
                role = self._roles.get(topic, topic)
                value = self.codec.open_message(role, message.key(), message.value() or b"null")
                resources.extend(resources_in(orjson.loads(value)))
            except DecryptError as exc:
                log.warning("skipped a value that cannot be decrypted", extra={"error": str(exc)})
            except orjson.JSONDecodeError:
                log.warning("skipped a value that is not JSON", extra={"topic": topic})
            except (TypeError, KeyError, AttributeError, RecursionError) as exc:
                # Not what the processor writes (a Bundle entry that is no object, nesting
                # past the interpreter's limit): no resource of it can be pushed, and the
                # batch would fail on it after every restart.
                log.warning(
                    "skipped a value holding no resources that can be read",
                    extra={"topic": topic, "error": type(exc).__name__},
                )
        self.sink.add(resources)
        if retry_until_stopped("push to the EHR", self._flush, lambda: self.stopping) is None:
            return  # stopping: uncommitted, so pushed again on restart
        refused = self.sink.take_refused()
        if refused:
            set_aside = functools.partial(self._set_aside, refused)
            if retry_until_stopped("set aside", set_aside, lambda: self.stopping) is None:
                return  # stopping: uncommitted, so pushed (and refused) again on restart
            self.stats.inc("ehr_refused_total", len(refused))
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            log.warning("offset commit failed", extra={"error": str(exc)})
        self._publish()

    def _flush(self) -> bool:
        self.sink.flush()
        return True

    def _set_aside(self, refused: list[Refused]) -> bool:
        """Each refused resource on the dead-letter topic, sealed; raises unless Kafka has
        them all."""
        failures: list[KafkaError] = []

        def report(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        for item in refused:
            record = {
                "reason": "ehr_refused",
                "status": item.status,
                "detail": item.reason,
                "resource": item.resource,
            }
            value = self.codec.seal_message(roles.DLQ, b"", orjson.dumps(record))
            self.dead_letters.produce(self.settings.kafka.dlq_topic, value, b"", on_delivery=report)
        remaining = self.dead_letters.flush(_DLQ_FLUSH_S)
        if remaining or failures:
            reason = failures[0].str() if failures else f"{remaining} still queued"
            raise PublishError(f"Kafka did not take the refused resources: {reason}")
        return True

    def _publish(self) -> None:
        """The counters to Redis for the API's /metrics, at most once a second."""
        now = time.monotonic()
        if now - self._published_at < _PUBLISH_INTERVAL_S:
            return
        self._published_at = now
        try:
            self.publish_stats()
        except Exception as exc:  # noqa: BLE001 - metrics must never hold up the push
            log.warning("could not publish stats", extra={"error": str(exc)})
