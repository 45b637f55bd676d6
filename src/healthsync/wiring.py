"""The composition root: builds each consumer stage from the settings.

Everything a stage needs is made here once and passed down, so no module
below reads settings or the environment on its own, and the order of the
processor's steps and sinks (which matters) is visible in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from healthsync.config import ProcessorSettings, Settings
from healthsync.errors import ConfigError
from healthsync.fhir.ehr_push import EhrPushSink
from healthsync.fhir.step import FhirResources
from healthsync.kafka import TopicIds, make_consumer, make_producer
from healthsync.metrics import Reporting, StatsRecorder
from healthsync.redis_client import connect
from healthsync.security.codec import Codec
from healthsync.store.archive.setup import Archive
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from healthsync.store.state import RedisStateStore
from healthsync.stream.archiver import Archiver, Source
from healthsync.stream.contracts import Sink, Step
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from healthsync.stream.positions import commit_failed
from healthsync.stream.processor import Pipeline, Processor
from healthsync.stream.push import EhrPusher, Outlets
from healthsync.stream.rulebook import RuleBook
from healthsync.stream.topics import KafkaTopicSink

ARCHIVER_FETCH_WAIT_MS = 1000
ARCHIVER_FETCH_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class Stages:
    """The processor's steps and Redis stores: all it runs a batch through but Kafka."""

    state: RedisStateStore
    steps: list[Step]
    fhir_store: RedisFhirSink
    live: RedisLiveSink


def build_stages(settings: Settings, client: Redis, codec: Codec) -> Stages:
    """The processor's steps, in order, and its Redis stores over `client`."""
    stats = StatsRecorder(settings.redis.keys, "processor")
    records = Records(codec)
    state = RedisStateStore(client, records, stats)
    fhir_store = RedisFhirSink(client, settings.redis, records)
    anomaly = settings.anomaly
    if anomaly.forget_after_s is None:
        # A patient quiet for the live cache's retention has left (see stream.devices).
        retention = float(settings.redis.history_retention_s)
        anomaly = anomaly.model_copy(update={"forget_after_s": retention})
    rules = RuleBook(anomaly.patients, state.load_rules)
    freshness_s = settings.processor.news2_freshness_s
    steps: list[Step] = [
        rules,
        News2Scores(state.load_observed, freshness_s, scale_for=rules.scale_for),
        # After NEWS2: it alerts on the scores too.
        AnomalyEngine(
            anomaly,
            rules,
            state.load_states,
            state.load_open_alerts,
            id_key=codec.id_key,
        ),
        # Last: it turns the readings, scores and alert events into FHIR resources.
        FhirResources(settings.fhir.mrn_system, fhir_store.load, id_key=codec.id_key),
    ]
    live = RedisLiveSink(client, settings.redis, stats, records)
    return Stages(state, steps, fhir_store, live)


def group_membership(cfg: ProcessorSettings) -> dict[str, int]:
    """A consumer stage's group membership: its session, and three heartbeats in it.

    Every consumer stage sets both: librdkafka's default heartbeat (3 s) outlasts a
    short session, such as the 2 s `up` gives against the embedded broker, and a member
    that outlasts its session is dropped from its group and rejoins, over and over.
    """
    return {
        "session.timeout.ms": cfg.session_timeout_ms,
        "heartbeat.interval.ms": max(cfg.session_timeout_ms // 3, 500),
    }


def build_processor(settings: Settings) -> Processor:
    """The stream processor: consumer, producer, Redis, steps and sinks."""
    if not settings.redis.url:
        raise ConfigError("no Redis configured (HEALTHSYNC_REDIS_URL)")
    cfg = settings.processor
    consumer = make_consumer(
        settings.kafka,
        cfg.group_id,
        **group_membership(cfg),
        **{"fetch.wait.max.ms": cfg.fetch_wait_ms, "on_commit": commit_failed},
    )
    codec = Codec.from_settings(settings)
    stages = build_stages(settings, connect(settings.redis), codec)
    # The live sink goes last: it records the batch's reading ids as seen, and a replay
    # skips seen readings. Were it flushed before another sink, a crash in between would
    # make the replay skip that sink's writes for good.
    topics = KafkaTopicSink(
        make_producer(settings.kafka),
        settings.kafka,
        codec,
        # A broker that answers at all acknowledges a batch in milliseconds; waiting
        # longer only delays replacing a producer that cannot recover.
        flush_timeout_s=10.0,
        renew=lambda: make_producer(settings.kafka),
    )
    live = stages.live
    sinks: list[Sink] = [topics, stages.fhir_store, live]
    pipeline = Pipeline(stages.state, stages.steps, sinks, live.stats, live.flush_stats, ticks=True)
    return Processor(settings, consumer, pipeline, codec)


def build_pusher(settings: Settings) -> EhrPusher:
    """The EHR push stage: its own consumer group on the FHIR topics."""
    if not settings.fhir.ehr_base_url:
        raise ConfigError("no EHR configured (HEALTHSYNC_FHIR_EHR_BASE_URL)")
    consumer = make_consumer(
        settings.kafka,
        f"{settings.processor.group_id}-ehr-push",
        **group_membership(settings.processor),
    )
    codec = Codec.from_settings(settings)
    # The Patients and Devices that references need the identifiers of, as stored.
    load = None
    if settings.redis.url:
        load = RedisFhirSink(connect(settings.redis), settings.redis, Records(codec)).load
    outlets = Outlets(EhrPushSink(settings.fhir, load=load), make_producer(settings.kafka))
    return EhrPusher(settings, consumer, outlets, codec, _reporting(settings, "push"))


def build_archiver(settings: Settings) -> Archiver:
    """The archiver: its own consumer group on the vitals topic, writing the archive.

    Its counters and lag go to Redis for the API's /metrics when Redis is configured.
    """
    cfg = settings.processor
    consumer = make_consumer(
        settings.kafka,
        settings.archive.group_id,
        **{
            **group_membership(cfg),
            # The archiver rolls objects every minute, so it need not read within
            # milliseconds: fetching what a second gathers spares the broker a listing of
            # every record batch it holds per fetch (see kafka.LINGER_MS).
            "fetch.wait.max.ms": ARCHIVER_FETCH_WAIT_MS,
            "fetch.min.bytes": ARCHIVER_FETCH_MIN_BYTES,
        },
    )
    writer = Archive.from_settings(settings).writer()
    codec = Codec.from_settings(settings)
    source = Source(consumer, TopicIds(settings.kafka))
    return Archiver(settings, source, writer, codec, _reporting(settings, "archiver"))


def _reporting(settings: Settings, component: str) -> Reporting:
    """A stage's counters, sent to Redis for the API's /metrics when Redis is configured."""
    stats = StatsRecorder(settings.redis.keys, component)
    publish = _no_stats
    if settings.redis.url:
        client = connect(settings.redis)

        def publish() -> None:
            stats.flush(client)

    return Reporting(stats, publish)


def _no_stats() -> None:
    """Without Redis a stage's counters stay in its own log."""
