"""HealthSync on a real Redis Cluster (three primaries started here): each batch is one
transaction per patient group, and two processors in one consumer group store every
acknowledged reading once, also when one of them is killed with SIGKILL."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from redis import Redis, RedisCluster
from redis.exceptions import WatchError

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.errors import StoreBehindError
from healthsync.fhir.ids import fhir_id
from healthsync.metrics import StatsRecorder
from healthsync.names import RedisKeys
from healthsync.redis_client import connect
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.hourly import ProcessedByHour
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from healthsync.store.state import RedisStateStore
from healthsync.supervisor import Pipeline
from tests.conftest import Device, make_settings, wait_for
from tests.redis_cluster import RedisClusterNodes, redis_cluster
from tests.test_durability import Sender

PATIENTS = [f"P-C{i}" for i in range(24)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as nodes:
        yield nodes


@pytest.fixture
def cluster_settings(
    broker: Service, redis_server: Service, cluster: RedisClusterNodes
) -> Settings:
    return make_settings(broker, redis_server, redis={"url": cluster.url})


def nodes_of(client: Redis, keys: RedisKeys, patients: list[str]) -> set[str]:
    """The cluster nodes holding these patients' keys."""
    cluster: Any = cast("RedisCluster", client)  # its node lookup is not typed
    return {cluster.get_node_from_key(keys.seen(p)).name for p in patients}


def test_a_batch_is_one_transaction_per_group_on_a_cluster(cluster_settings: Settings) -> None:
    settings = cluster_settings
    assert settings.redis.clustered and settings.redis.groups == 16
    codec = Codec.from_settings(settings)
    client = connect(settings.redis)
    keys, records = codec.keys, Records(codec)
    stats = StatsRecorder(settings.redis.keys, "processor")
    sink = RedisLiveSink(client, settings.redis, stats, records)
    state = RedisStateStore(client, records, stats)
    assert len(nodes_of(client, keys, PATIENTS)) == 3, "the patients' groups span every node"
    now = time.time()
    readings = [
        Reading(f"r{i}", f"d{i}", patient, now - 1, now - 1, {"heart_rate": 70.0})
        for i, patient in enumerate(PATIENTS)
    ]
    sink.write(Batch(readings, positions={(settings.kafka.vitals_topic, 0): (0, 24)}))
    sink.flush()

    assert state.filter_new(readings) == [], "every reading is recorded as seen"
    assert sum(ProcessedByHour(client, keys).per_hour(now - 3600, now + 3600).values()) == 24
    observed = state.load_observed(PATIENTS)
    assert all(observed[p]["heart_rate"][0] == 70.0 for p in PATIENTS)

    # One node came back without its last writes: its groups' record is gone.
    lost = keys.group_of(PATIENTS[0])
    topic = settings.kafka.vitals_topic
    client.delete(keys.offsets(lost, topic, 0))
    later = Reading("r-late", "d0", PATIENTS[1], now, now, {"heart_rate": 71.0})
    with pytest.raises(StoreBehindError) as behind:
        sink.write(Batch([later], positions={(topic, 0): (24, 25)}))
    assert behind.value.positions == {(topic, 0): 0}, "replayed from where that group ends"
    assert state.filter_new([later]) == [later], "nothing of the refused batch was written"
    client.close()


def test_a_batch_written_again_after_one_group_failed_is_counted_once(
    cluster_settings: Settings,
) -> None:
    """One group's EXEC fails after the others went through; the retry adds nothing twice."""
    settings = cluster_settings
    codec = Codec.from_settings(settings)
    client = connect(settings.redis)
    keys, records = codec.keys, Records(codec)
    sink = RedisLiveSink(client, settings.redis, StatsRecorder(keys, "processor"), records)
    now = time.time()
    readings = [
        Reading(f"r{i}", f"d{i}", patient, now - 1, now - 1, {"heart_rate": 70.0})
        for i, patient in enumerate(PATIENTS)
    ]
    topic = settings.kafka.vitals_topic
    batch = Batch(readings, positions={(topic, 0): (0, 24)})
    last = max(keys.group_of(p) for p in PATIENTS)
    sink.write(batch)
    client.hset(keys.offsets(last, topic, 0), "touched", 1)  # its WATCH now fails the EXEC
    with pytest.raises(WatchError):
        sink.flush()
    sink.write(batch)  # as the processor's retry does
    sink.flush()

    processed = sum(ProcessedByHour(client, keys).per_hour(now - 3600, now + 3600).values())
    assert processed == 24, "each reading counted once"
    counted = [client.hget(k, "readings_processed_total") for k in keys.stats_keys("processor")]
    assert sum(int(cast("bytes", n)) for n in counted if n is not None) == 24
    client.close()


def stored(client: Redis, keys: RedisKeys) -> tuple[set[str], int]:
    """The reading ids recorded as seen, and the processed count summed over the groups."""
    found: set[str] = set()
    for patient in PATIENTS:
        members = cast("list[bytes]", client.zrange(keys.seen(patient), 0, -1))
        found.update(m.decode() for m in members)
    processed = sum(
        int(cast("bytes | None", client.hget(k, "readings_processed_total")) or 0)
        for k in keys.stats_keys("processor")
    )
    return found, processed


def test_two_processors_store_each_reading_once_through_a_kill(
    cluster_settings: Settings, tmp_path: Path
) -> None:
    settings = cluster_settings
    pipeline = Pipeline(settings, tmp_path / "run")
    pipeline.start(stages=("ingest", "process"))
    pipeline.start_child("process-2", stage="process")
    keys = Codec.from_settings(settings).keys
    client = connect(settings.redis)
    devices = [Device(settings.ingest.host, settings.ingest.port) for _ in range(2)]
    try:
        first = Sender(devices[0], PATIENTS)
        first.send(range(0, 100))
        wait_for(lambda: len(stored(client, keys)[0]) == 100, timeout=45, what="the first 100")

        # Ten lines a round trip: about three seconds of sending, which the kill falls in.
        second = Sender(devices[1], PATIENTS, at_once=10)
        sending = threading.Thread(target=second.send, args=(range(100, 400),))
        sending.start()
        wait_for(lambda: len(stored(client, keys)[0]) >= 150, timeout=30, what="readings flowing")
        pipeline.children["process"].kill()  # SIGKILL mid-stream: the other takes over
        sending.join(timeout=60)
        assert not sending.is_alive()

        acknowledged = first.acknowledged | second.acknowledged
        assert len(acknowledged) == 400
        last: list[tuple[set[str], int]] = []

        def all_once() -> bool:
            last[:] = [stored(client, keys)]
            return last[0] == (acknowledged, 400)

        try:
            wait_for(all_once, timeout=45, what="every acknowledged reading stored once")
        except AssertionError as exc:
            ids, processed = last[0]
            missing = len(acknowledged - ids)
            raise AssertionError(f"{exc}: {missing} missing, {processed} processed") from None
        time.sleep(2)  # nothing comes in twice afterwards either
        assert stored(client, keys) == (acknowledged, 400)
    finally:
        for device in devices:
            device.close()
        client.close()
        pipeline.stop()


def test_patients_who_left_are_removed_on_a_cluster(cluster_settings: Settings) -> None:
    """A departure writes to each patient's group and to the FHIR store's shared keys."""
    # The processor's steps and Redis sinks as its wiring builds them, run without Kafka.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from churn import Stages

    settings = cluster_settings
    settings.anomaly.forget_after_s = 3600
    codec = Codec.from_settings(settings)
    client = connect(settings.redis)
    keys, now = codec.keys, time.time()
    stages = Stages(settings, client, codec)
    leaving = PATIENTS
    assert len(nodes_of(client, keys, leaving)) == 3, "the patients' groups span every node"
    stages.run(
        Reading(
            f"r{i}",
            f"d{i}",
            p,
            now - 7200,
            now - 7200,
            {"heart_rate": 70.0},
            patient={"mrn": f"M{i}"},
        )
        for i, p in enumerate(leaving)
    )
    patient_keys = [keys.fhir("Patient", fhir_id(p, codec.id_key)) for p in leaving]
    assert all(client.exists(k) for k in patient_keys)

    assert sorted(stages.run(now=now).departed) == sorted(leaving)
    assert not any(client.exists(k) for k in patient_keys), "a departed patient's Patient stayed"
    assert not any(client.exists(keys.latest(p)) for p in leaving)
    assert client.zcard(keys.fhir_index("Patient")) == 0
    client.close()
