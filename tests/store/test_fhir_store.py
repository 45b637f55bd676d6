"""The FHIR store against a real redis-server: layout, expiry, idempotence, retention."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import cast

import orjson
from redis import ConnectionPool, Redis

from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.fhir.ids import fhir_id
from healthsync.fhir.step import FhirResources
from healthsync.security.codec import Codec
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.records import Records
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores

# The bench that measures the trim below builds its batches and counts round trips as
# these tests do.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fhir_trim
from fhir_trim import IMMEDIATE, CountingConnection, write

DEMOGRAPHICS = {"patient_name": "Ada Lovelace", "gender": "female", "mrn": "MRN-0042"}


def batch_of(*readings: Reading, step: FhirResources | None = None) -> Batch:
    """Alerts open and resolve on one sample: these tests are about the resources, not timing."""
    return fhir_trim.batch_of(list(readings), step)


def stored(redis: Redis, codec: Codec, key: str) -> dict[str, object] | None:
    raw = cast("bytes | None", redis.get(key))
    return orjson.loads(codec.open(raw, key)) if raw else None


def index(redis: Redis, key: str) -> list[tuple[str, float]]:
    rows = cast("list[tuple[bytes, float]]", redis.zrange(key, 0, -1, withscores=True))
    return [(member.decode(), score) for member, score in rows]


def test_resources_are_stored_and_indexed_by_type_patient_and_time(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    keys = codec.keys
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    now = time.time()
    first = Reading("r1", "mon-1", "P-1", now - 10, now, {"heart_rate": 72, "spo2": 84})
    write(sink, batch_of(replace(first, patient=DEMOGRAPHICS)))

    observation = stored(redis, codec, keys.fhir("Observation", "r1-spo2"))
    assert observation is not None and observation["valueQuantity"] == {
        "value": 84,
        "unit": "%",
        "system": "http://unitsofmeasure.org",
        "code": "%",
    }
    patient_index = index(redis, keys.fhir_index("Observation", "P-1"))
    ids = [member for member, _ in patient_index]
    assert sorted(ids) == sorted(["r1-heart-rate", "r1-spo2", *[i for i in ids if "news2" in i]])
    # Scored by the time the resource shows (effectiveDateTime, to the millisecond).
    for member, score in patient_index:
        if member.startswith("r1"):
            assert abs(score - (now - 10)) <= 0.0005
    assert set(index(redis, keys.fhir_index("Observation"))) == set(patient_index)

    [(communication_id, sent)] = index(redis, keys.fhir_index("Communication", "P-1"))
    assert index(redis, keys.fhir_index("Flag", "P-1")) == [(communication_id, sent)]
    assert [m for m, _ in index(redis, keys.fhir_index("RiskAssessment", "P-1"))] == [
        i for i in ids if i.startswith("news2-")
    ]
    assert [m for m, _ in index(redis, keys.fhir_index("Patient"))] == [
        keys.fhir_member("Patient", "P-1")
    ]
    # So is a Device: a device id in a key name would link the patient to a bed.
    assert [m for m, _ in index(redis, keys.fhir_index("Device"))] == [
        keys.fhir_member("Device", "mon-1")
    ]
    patient = stored(redis, codec, keys.fhir("Patient", "P-1"))
    assert patient is not None and patient["name"] == [{"text": "Ada Lovelace"}]

    # Patient and Device, and the open alert's resources, never expire; the rest does.
    retention = settings.redis.history_retention_s
    assert redis.ttl(keys.fhir("Patient", "P-1")) == -1
    assert redis.ttl(keys.fhir("Device", "mon-1")) == -1
    assert redis.ttl(keys.fhir("Flag", communication_id)) == -1
    assert redis.ttl(keys.fhir("Communication", communication_id)) == -1
    assert 0 < redis.ttl(keys.fhir("Observation", "r1-spo2")) <= retention
    [assessment] = [i for i in ids if i.startswith("news2-")]
    assert 0 < redis.ttl(keys.fhir("RiskAssessment", assessment)) <= retention


def test_a_resolved_alert_expires(settings: Settings, redis: Redis, codec: Codec) -> None:
    keys = codec.keys
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    now = time.time()
    rules, scores, step = (
        AnomalyEngine(IMMEDIATE),
        News2Scores(lambda p: {}, 900),
        FhirResources("urn:x"),
    )
    for n, spo2 in enumerate((84, 97)):
        batch = Batch([Reading(f"r{n}", "mon-1", "P-1", now - 10 + n, now, {"spo2": spo2})])
        for s in (rules, scores, step):
            s.process(batch)
        write(sink, batch)
    [(alert_id, _)] = index(redis, keys.fhir_index("Flag", "P-1"))
    flag = stored(redis, codec, keys.fhir("Flag", alert_id))
    communication = stored(redis, codec, keys.fhir("Communication", alert_id))
    assert flag is not None and flag["status"] == "inactive"
    assert communication is not None and communication["status"] == "completed"
    assert redis.ttl(keys.fhir("Flag", alert_id)) > 0
    assert redis.ttl(keys.fhir("Communication", alert_id)) > 0


def test_a_replayed_batch_changes_nothing(settings: Settings, redis: Redis, codec: Codec) -> None:
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    now = time.time()
    reading = Reading("r1", "mon-1", "P-1", now, now, {"heart_rate": 150, "bp_sys": 120})
    write(sink, batch_of(reading))
    before = {key: redis.dump(key) for key in redis.scan_iter(f"{settings.redis.prefix}:fhir:*")}
    write(sink, batch_of(reading))  # a fresh processor after a crash: the same resources
    after = {key: redis.dump(key) for key in redis.scan_iter(f"{settings.redis.prefix}:fhir:*")}
    assert after == before
    assert len(before) > 8


def test_indexes_are_trimmed_to_the_retention_but_open_alerts_stay(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    settings.redis.history_retention_s = 60
    keys = codec.keys
    now = time.time()
    old = Reading("old", "mon-1", "P-1", now - 3600, now, {"heart_rate": 150})
    write(RedisFhirSink(redis, settings.redis, Records(codec)), batch_of(old))
    [(alert_id, _)] = index(redis, keys.fhir_index("Flag", "P-1"))

    # A new sink (as after a restart) trims on its first batch.
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    write(sink, batch_of(Reading("new", "mon-1", "P-1", now, now, {"heart_rate": 150})))
    observations = [m for m, _ in index(redis, keys.fhir_index("Observation", "P-1"))]
    assert "old-heart-rate" not in observations and "new-heart-rate" in observations
    assert "old-heart-rate" not in [m for m, _ in index(redis, keys.fhir_index("Observation"))]
    # The alert opened an hour ago and is still open: its banner stays findable.
    assert alert_id in [m for m, _ in index(redis, keys.fhir_index("Flag", "P-1"))]

    # Once its stored resources are gone, the index entry goes too.
    redis.delete(keys.fhir("Flag", alert_id))
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    write(sink, batch_of(Reading("later", "mon-1", "P-1", now, now, {"heart_rate": 150})))
    assert alert_id not in [m for m, _ in index(redis, keys.fhir_index("Flag", "P-1"))]


def test_a_whole_wards_alert_indexes_are_trimmed_in_a_few_round_trips(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    """A batch that changes a whole ward's alerts (monitors offline together after a
    network fault) finds every patient's alert indexes due; a read per index held that
    batch up for most of a second with 1,000 patients."""
    settings.redis.history_retention_s = 60
    keys = codec.keys
    now, patients = time.time(), [f"P-{i}" for i in range(60)]
    opened = [
        Reading(f"old-{p}", f"mon-{p}", p, now - 3600, now, {"heart_rate": 150}) for p in patients
    ]
    write(RedisFhirSink(redis, settings.redis, Records(codec)), batch_of(*opened))
    flags = {p: index(redis, keys.fhir_index("Flag", p))[0][0] for p in patients}
    # Half the alerts' resources have expired meanwhile; the others are still open.
    over = set(patients[::2])
    for patient in over:
        redis.delete(keys.fhir("Flag", flags[patient]))

    assert settings.redis.url
    pool = ConnectionPool.from_url(settings.redis.url, connection_class=CountingConnection)
    counted = Redis(connection_pool=pool)
    sink = RedisFhirSink(counted, settings.redis, Records(codec))
    counted.ping()  # connected: the handshake is not the batch's
    later = batch_of(
        *[Reading(f"new-{p}", f"mon-{p}", p, now, now, {"heart_rate": 150}) for p in patients]
    )
    CountingConnection.sends = 0
    write(sink, later)
    # The reads of every due index, their resources' checks and the transaction: three,
    # whatever the number of patients (before: two per index).
    assert CountingConnection.sends == 3
    for patient in patients:
        remaining = [m for m, _ in index(redis, keys.fhir_index("Flag", patient))]
        assert (flags[patient] in remaining) is (patient not in over), patient
    counted.close()


def test_load_returns_the_stored_resources_the_step_asks_for(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    sink = RedisFhirSink(redis, settings.redis, Records(codec))
    now = time.time()
    patient = "ward:7"  # not a FHIR id: stored under its digest
    reading = Reading("r1", "mon-1", patient, now, now, {"heart_rate": 70}, patient=DEMOGRAPHICS)
    write(sink, batch_of(reading))
    found = sink.load("Patient", [fhir_id(patient), "P-none"])
    assert list(found) == [fhir_id(patient)]
    assert found[fhir_id(patient)]["identifier"][0]["value"] == "ward:7"

    # A restarted processor finds the patient stored and does not emit a poorer one.
    restarted = FhirResources("urn:mrn", sink.load)
    batch = batch_of(replace(reading, reading_id="r2", patient={}), step=restarted)
    kinds = [r["resourceType"] for _, r in batch.observations]
    assert "Patient" not in kinds and "Device" not in kinds and "Observation" in kinds
