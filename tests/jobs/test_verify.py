"""`verify` against a real broker: readings on the vitals topic, sealed as ingest seals
them, against an archive that lacks one of them.

Hour 10: five readings, one sent twice (a device resend, same reading id); all five
archived. Hour 11: three readings, two archived. One message on the topic is not a
reading at all. The processor stored every reading, through the real live sink.
"""

from __future__ import annotations

import json
from pathlib import Path

from redis import Redis

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.jobs.base import JobParams
from healthsync.jobs.execute import Executor
from healthsync.jobs.output import LocalStore
from healthsync.jobs.verify import TopicCounter, Verify
from healthsync.kafka import ensure_topics, make_producer
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import VITALS, Codec
from healthsync.store.hourly import ProcessedByHour
from healthsync.store.live import RedisLiveSink
from healthsync.store.period import MemoryArchive
from healthsync.store.records import Records
from healthsync.store.runs import RunStore
from tests.jobs.dataset import t


def reading(n: int, patient: str, received: str) -> Reading:
    at = t(received)
    return Reading(f"r-{n}", "mon-1", patient, at - 2, at, {"heart_rate": 70.0 + n})


HOUR_10 = [reading(i, f"P-{i % 3}", f"10:{10 * i:02d}") for i in range(5)]
HOUR_11 = [reading(10 + i, f"P-{i % 3}", f"11:{5 + 10 * i:02d}") for i in range(3)]


def publish(settings: Settings, codec: Codec) -> None:
    ensure_topics(settings.kafka)
    producer = make_producer(settings.kafka)
    topic = settings.kafka.vitals_topic
    for r in [*HOUR_10, HOUR_10[2], *HOUR_11]:
        key = codec.message_key(r.patient_id)
        producer.produce(topic, key=key, value=codec.seal_message(VITALS, key, r.to_json()))
    producer.produce(topic, key=b"x", value=b"not a reading")
    assert producer.flush(30) == 0


def test_verify_finds_the_hour_the_archive_lacks_a_reading(
    settings: Settings, redis: Redis, codec: Codec, tmp_path: Path
) -> None:
    publish(settings, codec)
    keys = settings.redis.keys
    sink = RedisLiveSink(redis, settings.redis, StatsRecorder(keys, "processor"), Records(codec))
    sink.write(Batch([*HOUR_10, *HOUR_11]))
    sink.flush()
    archive = MemoryArchive([*HOUR_10, *HOUR_11[:2]])
    store = LocalStore(tmp_path / "archive")
    executor = Executor(RunStore(redis, keys), store, archive, 60, codec)
    job = Verify(TopicCounter(settings.kafka, codec), ProcessedByHour(redis, keys))
    record = executor.run(job, JobParams("v-1", t("10:00"), t("12:00")))
    assert record.summary == {
        "hours": 2,
        "kafka": 8,
        "archive": 7,
        "processor": 8,
        "hours_with_gaps": [t("11:00")],
        "kafka_unreadable": 1,
    }
    report = json.loads((tmp_path / "archive/jobs/verify/v-1/report.json").read_text())
    assert report["hours"] == [
        {
            "hour": t("10:00"),
            "kafka": 5,
            "archive": 5,
            "gap": 0,
            "processor": 5,
            "processor_gap": 0,
        },
        {
            "hour": t("11:00"),
            "kafka": 3,
            "archive": 2,
            "gap": 1,
            "processor": 3,
            "processor_gap": 1,
        },
    ]
    # Limited to one patient, both sides count only that patient's readings.
    # P-2 sent r-2 (twice) and r-12, which the archive lacks.
    one = executor.run(job, JobParams("v-2", t("10:00"), t("12:00"), frozenset({"P-2"})))
    assert (one.summary["kafka"], one.summary["archive"]) == (2, 1)
