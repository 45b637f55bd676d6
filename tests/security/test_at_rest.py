"""End to end: what the pipeline stores in Redis and Kafka shows no PHI in clear.

The same run with encryption off must find every identifier and vital, so
the scan is shown able to fail. Rotation, retirement and a value sealed with a
foreign keyring, through the real processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from confluent_kafka import TopicPartition
from redis import Redis

from healthsync.config import CryptoSettings, Settings
from healthsync.domain.alerts import alert_id_for
from healthsync.domain.readings import reading_id_for
from healthsync.kafka import make_consumer, make_producer
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.keyring import Keyring
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, Device, make_settings, wait_for
from tests.test_pipeline import read_topic

PATIENT = "PX-73910"
# The device id too: it links a patient's pseudonym to a bed (`device_offline:<device>`).
NEEDLES = [
    PATIENT.encode(),
    b"Grace Hopper",
    b"MRN-558211",
    b"38.73",
    b"+1 555 0100",
    b"mon-41",
]
ADMIT = (
    f"device_id=mon-41 patient_id={PATIENT} seq=1 hr=128 spo2=86% temp=38.73 rr=26"
    ' name="Grace Hopper" mrn=MRN-558211 phone="+1 555 0100"'
).encode()
# Reading ids as anyone could compute them without the keyring (device and seq guessed).
UNKEYED_READING_IDS = [reading_id_for("mon-41", seq, 0).encode() for seq in (1, 2, 3, 4)]
# Rejected (out of range): kept whole on the dead-letter topic, PHI included.
BAD = f'device_id=mon-41 patient_id={PATIENT} name="Grace Hopper" temp=38.73 hr=999'.encode()


def _string(client: Redis, key: bytes) -> list[bytes]:
    return [cast("bytes", client.get(key))]


def _hash(client: Redis, key: bytes) -> list[bytes]:
    items = cast("dict[bytes, bytes]", client.hgetall(key)).items()
    return [blob for field, value in items for blob in (field, value)]


def _zset(client: Redis, key: bytes) -> list[bytes]:
    return list(cast("list[bytes]", client.zrange(key, 0, -1)))


def _set(client: Redis, key: bytes) -> list[bytes]:
    return list(cast("set[bytes]", client.smembers(key)))


def _list(client: Redis, key: bytes) -> list[bytes]:
    return list(cast("list[bytes]", client.lrange(key, 0, -1)))


def _stream(client: Redis, key: bytes) -> list[bytes]:
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key))
    return [blob for _id, fields in entries for item in fields.items() for blob in item]


# What each Redis type holds, as bytes; a type not listed fails the scan.
_CONTENTS: dict[bytes, Callable[[Redis, bytes], list[bytes]]] = {
    b"string": _string,
    b"hash": _hash,
    b"zset": _zset,
    b"set": _set,
    b"list": _list,
    b"stream": _stream,
}


def redis_blobs(client: Redis, prefix: str) -> list[bytes]:
    """Every key name under the prefix and everything stored in it, as the raw client sees it."""
    blobs: list[bytes] = []
    for key in cast("list[bytes]", list(client.scan_iter(f"{prefix}:*"))):
        blobs.append(key)
        kind = cast("bytes", client.type(key))
        contents = _CONTENTS.get(kind)
        if contents is None:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        blobs += contents(client, key)
    return blobs


def topic_blobs(settings: Settings) -> dict[str, list[bytes]]:
    """Every message key and value of every topic, read up to the high watermarks."""
    consumer = make_consumer(settings.kafka, "at-rest-scan")
    found: dict[str, list[bytes]] = {}
    try:
        # Every end first: once the consumer fetches, each watermark query waits behind a
        # fetch the broker holds open (0.3-0.5 s each, 5 s a scan).
        topic_ends = {topic: _ends(consumer, topic, settings) for topic in settings.kafka.topics()}
        for topic, ends in topic_ends.items():
            blobs = found[topic] = []
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            done: set[int] = set()

            def drained(
                blobs: list[bytes] = blobs, ends: dict[int, int] = ends, done: set[int] = done
            ) -> bool:
                return _drain(consumer, blobs, ends, done)

            wait_for(drained, what=f"every message of {topic}")
    finally:
        consumer.close()
    return found


def _ends(consumer: Any, topic: str, settings: Settings) -> dict[int, int]:
    """The high watermark of each partition of `topic` that holds anything."""
    ends: dict[int, int] = {}
    for p in range(settings.kafka.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high > low:
            ends[p] = high
    return ends


def _drain(consumer: Any, blobs: list[bytes], ends: dict[int, int], done: set[int]) -> bool:
    for message in consumer.consume(500, 0.2):
        if message.error() is None:
            blobs += [message.key() or b"", message.value() or b""]
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
    return done >= set(ends)


def run_and_scan(
    settings: Settings, tmp_path: Path, headers: dict[str, str]
) -> tuple[list[bytes], dict[str, list[bytes]], list[dict[str, Any]]]:
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start()
    client = Redis.from_url(str(settings.redis.url))
    device = Device(settings.ingest.host, settings.ingest.port)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{settings.api.port}", timeout=10, headers=headers
    )
    t = int(time.time()) - 120
    try:
        # The same abnormal values 20 s apart open alerts; SpO2 normal for 35 s resolves one.
        assert device.send(ADMIT + f" ts={t}".encode()).startswith("OK ")
        assert device.send(ADMIT.replace(b"seq=1", b"seq=2") + f" ts={t + 20}".encode())
        assert device.send(BAD).startswith("ERR 422")
        for seq, at in ((3, 25), (4, 60)):
            line = f"device_id=mon-41 patient_id={PATIENT} seq={seq} ts={t + at} spo2=97"
            assert device.send(line.encode()).startswith("OK ")
        # The API still serves everything in clear to its users.
        alerts = wait_for(
            lambda: api.get("/v1/alerts", params={"status": "all"}).json()["alerts"],
            what="the alerts",
        )
        assert {a["patient_id"] for a in alerts} == {PATIENT}
        wait_for(
            lambda: api.get("/v1/alerts", params={"status": "resolved"}).json()["alerts"],
            what="the SpO2 alert to resolve",
        )
        [row] = api.get("/v1/patients").json()["patients"]
        assert row["patient_id"] == PATIENT and row["vitals"]["temp"]["value"] == 38.73
        assert row["news2"] is not None
        ack = api.post(f"/v1/alerts/{alerts[0]['alert_id']}/ack")
        assert ack.status_code == 200, ack.text
        patient = api.get(f"/fhir/Patient/{PATIENT}")
        assert patient.status_code == 200 and patient.json()["name"] == [{"text": "Grace Hopper"}]
        return redis_blobs(client, settings.redis.prefix), topic_blobs(settings), alerts
    finally:
        api.close()
        device.close()
        client.close()
        pipeline.stop()


@pytest.mark.slow
@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "clear"])
def test_no_phi_in_clear_in_redis_or_on_any_topic(
    broker: Service,
    redis_server: Service,
    tmp_path: Path,
    encrypted: bool,
    credentials: Credentials,
) -> None:
    settings = make_settings(broker, redis_server, crypto={"enabled": encrypted})
    in_redis, on_topics, alerts = run_and_scan(settings, tmp_path, credentials.headers())
    assert len(in_redis) > 30 and all(on_topics.values()), "the run stored and produced data"
    everything = [*in_redis, *(b for blobs in on_topics.values() for b in blobs)]
    found = {needle for needle in NEEDLES for blob in everything if needle in blob}
    guessed = {rid for rid in UNKEYED_READING_IDS for blob in everything if rid in blob}
    # An alert id recomputed from the patient id, kind and reading id, with no key.
    recomputed = [
        alert_id_for(PATIENT, a["kind"], a["reading_id"]) == a["alert_id"] for a in alerts
    ]
    if encrypted:
        assert guessed == set(), "reading ids recomputed without the key are stored"
        assert not any(recomputed), "alert ids recomputed without the key match"
        where = [blob[:120] for blob in everything if any(n in blob for n in NEEDLES)]
        assert found == set(), f"PHI in clear: {sorted(found)} in {where[:3]}"
    else:
        # Without encryption the same scan finds every identifier and vital.
        assert found == set(NEEDLES)
        assert guessed == set(UNKEYED_READING_IDS) and all(recomputed)
        assert any(PATIENT.encode() in key for key in on_topics[settings.kafka.vitals_topic])


def test_rotation_keeps_old_data_readable_until_its_key_is_retired(
    broker: Service,
    redis_server: Service,
    tmp_path: Path,
    private_keyring: Path,
    credentials: Credentials,
) -> None:
    keyring = private_keyring
    settings = make_settings(broker, redis_server, crypto={"keyring_file": str(keyring)})
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start()
    device = Device(settings.ingest.host, settings.ingest.port)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{settings.api.port}",
        timeout=10,
        headers=credentials.headers(),
    )

    def latest(patient: str) -> httpx.Response:
        return api.get(f"/v1/patients/{patient}/vitals/latest")

    try:
        assert device.send(b"device_id=mon-1 patient_id=P-OLD hr=71").startswith("OK ")
        wait_for(lambda: latest("P-OLD").status_code == 200, what="P-OLD under key k1")

        ring = Keyring.load(keyring)
        assert ring.rotate() == "k2"
        ring.save(keyring)
        for stage in ("ingest", "process", "api"):  # a restart picks the new key up
            pipeline.children[stage].stop()
            pipeline.start_child(stage)
        device.close()
        wait_for(lambda: _answers(settings), what="the restarted stages")
        device = Device(settings.ingest.host, settings.ingest.port)
        assert device.send(b"device_id=mon-2 patient_id=P-NEW hr=72").startswith("OK ")
        wait_for(lambda: latest("P-NEW").status_code == 200, timeout=60, what="P-NEW under k2")
        assert latest("P-OLD").json()["vitals"]["heart_rate"]["value"] == 71, "k1 still reads"

        ring = Keyring.load(keyring)
        ring.retire("k1")
        ring.save(keyring)
        pipeline.children["api"].stop()
        pipeline.start_child("api")
        wait_for(lambda: _answers(settings), what="the restarted API")
        old = latest("P-OLD")
        assert old.status_code == 500
        # The client learns that, not which key: key ids are for the operator's log.
        assert old.json()["error"]["message"] == "stored data cannot be decrypted"
        log_text = (pipeline.logs / "api.log").read_text()
        assert "key 'k1' was retired; its data is no longer readable" in log_text
        assert latest("P-NEW").json()["vitals"]["heart_rate"]["value"] == 72
    finally:
        api.close()
        device.close()
        pipeline.stop()


def _answers(settings: Settings) -> bool:
    try:
        ingest = Device(settings.ingest.host, settings.ingest.port)
        ingest.close()
        return httpx.get(f"http://127.0.0.1:{settings.api.port}/healthz").status_code == 200
    except (OSError, httpx.HTTPError):
        return False


def test_a_reading_sealed_with_another_keyring_is_dead_lettered_with_the_reason(
    pipeline: Pipeline, device: Device, api: httpx.Client, tmp_path: Path
) -> None:
    settings = pipeline.settings
    foreign = tmp_path / "foreign.json"
    Keyring.generate().save(foreign)
    stranger = Codec.from_settings(
        settings.model_copy(update={"crypto": CryptoSettings(keyring_file=foreign)})
    )
    key = Codec.from_settings(settings).message_key("P-W")
    value = stranger.seal_message(roles.VITALS, key, b'{"patient_id": "P-W"}')
    producer = make_producer(settings.kafka)
    producer.produce(settings.kafka.vitals_topic, value, key)
    assert producer.flush(10) == 0
    assert device.send(b"device_id=mon-6 patient_id=P-6 hr=75").startswith("OK ")
    wait_for(lambda: api.get("/v1/patients/P-6/vitals/latest").status_code == 200, what="P-6")
    [record] = read_topic(settings, settings.kafka.dlq_topic, 1)
    assert record["reason"] == "not_a_reading"
    assert record["detail"] == "cannot decrypt: authentication failed: wrong key or tampered data"
    assert api.get("/v1/patients/P-W/vitals/latest").status_code == 404
