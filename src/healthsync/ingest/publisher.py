"""Bridge between the asyncio ingest server and an idempotent Kafka producer.

librdkafka delivers its reports from `poll()`; polling from the event loop
(non-blocking, every few milliseconds) runs the callbacks on the loop's own
thread, so no locks or cross-thread hand-offs are needed per reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from healthsync.config import KafkaSettings
from healthsync.kafka import make_producer

log = logging.getLogger(__name__)

# Delivery failures after which this producer's idempotence state cannot be trusted,
# so a fresh producer (with a new producer id) is needed:
# - a broker that restarted empty answers UNKNOWN_PRODUCER_ID, and librdkafka retries
#   that without end (each message then times out);
# - a broker that restarted empty may also hand the producer id this producer still
#   uses to another producer, and then fences this one (PRODUCER_FENCED) on every
#   message: no retry can succeed (after a kill -9 of the embedded broker, both ingest
#   replicas answered ERR 503 for as long as they ran).
_STALE_STATE = frozenset(
    {
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError._MSG_TIMED_OUT,
    }
)
# At most one replacement per this many seconds, so a long outage does not churn.
_REPLACE_INTERVAL_S = 5.0

DeliveryCallback = Callable[[KafkaError | None], None]
# How long the metadata request that connects a fresh producer may take.
_CONNECT_TIMEOUT_S = 10.0


def _connect(producer: Producer, topic: str) -> None:
    """Connect `producer` to the broker by asking for `topic`'s metadata (see
    Publisher._new_producer); a broker that does not answer changes nothing."""
    with contextlib.suppress(KafkaException):
        producer.list_topics(topic, timeout=_CONNECT_TIMEOUT_S)


class Publisher:
    """Produces to Kafka and reports each delivery (or its failure) exactly once."""

    def __init__(self, settings: KafkaSettings, ack_timeout_s: float) -> None:
        self._settings = settings
        self._ack_timeout_s = ack_timeout_s
        self._fatal: KafkaError | None = None
        self._replaced_at = 0.0
        self._failing: int | None = None  # the code of the delivery failures going on
        self.broker_down = False
        # Topics that take nothing new for now (a hold, see hold.py).
        self.held: frozenset[str] = frozenset()
        self._producer = self._new_producer()
        self._task: asyncio.Task[None] | None = None

    def _new_producer(self) -> Producer:
        # message.timeout.ms bounds how long a device waits for its answer when
        # the broker is unreachable: the report then fails and the device gets ERR 503.
        producer = make_producer(
            self._settings,
            required={
                "message.timeout.ms": int(self._ack_timeout_s * 1000),
                "error_cb": self._on_error,
            },
        )
        # A fresh idempotent producer's first delivery waits for its producer id, which
        # librdkafka asks for only once it is connected: about 0.5 s more unless a
        # metadata request for a topic has connected it first. Asked in a thread (it
        # blocks until the broker answers), so the first readings after a start, a
        # hold's release or a replacement wait out the linger alone.
        threading.Thread(
            target=_connect, args=(producer, self._settings.vitals_topic), daemon=True
        ).start()
        return producer

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.broker_down = True
        log.warning("kafka client error", extra={"error": error.str()})

    def publish(self, topic: str, key: bytes, value: bytes, on_done: DeliveryCallback) -> None:
        """Queue one message; `on_done` is called from the event loop when Kafka answers.

        Raises BufferError when librdkafka's local queue is full (callers bound
        their in-flight count well below it, so this signals a misconfiguration),
        when the producer failed fatally and awaits its replacement, or while
        `topic` is held.
        """

        if topic in self.held:
            raise BufferError(f"{topic} is held")

        def report(error: KafkaError | None, _message: Any) -> None:
            self.delivered(error)
            on_done(error)

        try:
            self._producer.produce(topic, value, key, on_delivery=report)
        except KafkaException as exc:
            # A producer in a fatal state refuses every message until it is replaced;
            # the caller answers this one as it answers a full queue (ERR, resend).
            self._fatal = self._fatal or exc.args[0]
            raise BufferError(f"producer unusable until replaced: {exc}") from exc

    def delivered(self, error: KafkaError | None) -> None:
        """Note a delivery report: after one that says this producer's state is stale, the
        producer is replaced (by the poll loop, at most every few seconds)."""
        if error is None:
            self.broker_down = False
            self._failing = None
            return
        if error.code() != self._failing:
            # Once per kind of failure in a row, not once per reading.
            self._failing = error.code()
            log.warning("kafka delivery failed", extra={"error": error.name()})
        if error.code() in _STALE_STATE and self._fatal is None:
            self._fatal = error

    @property
    def queued(self) -> int:
        """Messages produced and not yet answered by Kafka."""
        return len(self._producer)

    def renew(self) -> None:
        """A fresh producer for what comes next (the old one must have nothing queued).

        After a hold the held topics may have been deleted and created again: the
        old producer's idempotence sequence numbers belong to the topics that went.
        """
        self._producer.flush(2.0)  # only rejected lines' dead letters can still be queued
        self._producer = self._new_producer()

    def probe(self, topic: str, timeout: float) -> bool:
        """Whether the cluster answers a metadata request for `topic` (blocking: run in a
        thread). Used for readiness: delivery reports alone say nothing while idle."""
        try:
            metadata = self._producer.list_topics(topic, timeout=timeout)
        except KafkaException:
            return False
        found = metadata.topics.get(topic)
        return bool(metadata.brokers) and found is not None and found.error is None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll_forever(), name="kafka-poll")

    async def _poll_forever(self) -> None:
        while True:
            try:
                served = self._producer.poll(0)
            except KafkaException as exc:
                # librdkafka raises its fatal error from poll() too: replace, never crash.
                self._fatal = self._fatal or exc.args[0]
                served = 0
            now = asyncio.get_running_loop().time()
            if self._fatal is not None and now - self._replaced_at >= _REPLACE_INTERVAL_S:
                self._replaced_at = now
                self._replace_producer()
            # Poll often while reports flow, less often when idle.
            await asyncio.sleep(0.001 if served else 0.003)

    def _replace_producer(self) -> None:
        """After a fatal error (e.g. lost idempotence state) a producer must be replaced."""
        log.error("kafka producer failed; replacing it", extra={"error": str(self._fatal)})
        old = self._producer
        old.purge()
        old.poll(0)  # fail the purged messages' reports now, so devices hear ERR 503
        self._fatal = None
        self._producer = self._new_producer()

    async def close(self, timeout: float) -> None:
        """Deliver what is queued (bounded by `timeout`), then stop polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._producer) and loop.time() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.005)
        self._producer.poll(0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
