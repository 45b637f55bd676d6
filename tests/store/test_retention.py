"""A patient who stops sending leaves the live cache with the retention (real redis-server).

A patient's readings are trimmed to the retention by score when the patient's
keys are written. A patient who stops sending (discharged, or the monitor moved
to another bed) is never written again, so without an expiry their keys would
keep their last day of readings, sealed but still patient data, for good.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.fhir.ids import fhir_id, observation_count
from healthsync.security.codec import Codec
from healthsync.store import retention
from healthsync.store.records import Records

# The steps and sinks as the processor wires them: bench/churn.py runs them too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from churn import Stages

VITALS = {"heart_rate": 72.0, "spo2": 97.0, "resp_rate": 15.0, "temp": 36.8, "bp_sys": 121.0}


def reading(n: int, patient: str, at: float) -> Reading:
    """A reading measured and received at `at` (the engine ticks on the receive clock).

    Reading ids are 24 hex digits, as ingest makes them."""
    return Reading(f"{n:024x}", f"mon-{patient}", patient, at, at, dict(VITALS))


def reading_keys(codec: Codec, patient: str) -> list[str]:
    """The keys that hold a patient's readings, one entry per reading."""
    keys, count = codec.keys, observation_count(VITALS)
    return [
        keys.history(patient),
        keys.seen(patient),
        keys.fhir_reading_index(count, fhir_id(patient, codec.id_key)),
    ]


def test_a_patients_reading_keys_expire_a_retention_after_they_were_last_trimmed(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    settings.redis.history_retention_s = 3600
    Stages(settings, redis, codec).run([reading(1, "P-1", time.time())])

    for key in [*reading_keys(codec, "P-1"), codec.keys.fhir_reading_index(5)]:
        # The retention, plus the minute between two trims of a key and the five minutes
        # a reading may be dated ahead of its arrival: no entry goes before its retention.
        assert 3600 <= redis.ttl(key) <= 3600 + 60 + 300, key


def test_a_patient_who_stops_sending_leaves_with_the_retention_and_others_stay(
    settings: Settings, redis: Redis, codec: Codec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seconds instead of a day, a minute and five minutes, so that Redis expires the keys
    # while the test watches: a 3 s retention makes a 4 s expiry.
    settings.redis.history_retention_s = 3
    monkeypatch.setattr(retention, "TRIM_INTERVAL_S", 0.5)
    monkeypatch.setattr(retention, "DATED_AHEAD_S", 0.0)
    stages = Stages(settings, redis, codec)
    start = time.time()
    stages.run([reading(1, "P-left", start), reading(2, "P-stays", start)])
    left, stays = reading_keys(codec, "P-left"), reading_keys(codec, "P-stays")
    time.sleep(2)
    assert all(redis.exists(key) for key in left), "gone before the retention ended"
    # P-stays sends on; P-left's monitor went quiet.
    stages.run([reading(3, "P-stays", time.time())])

    deadline = start + 5.5  # P-stays's keys, trimmed at about 2 s, expire at about 6 s
    while any(redis.exists(key) for key in left) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(redis.exists(key) for key in left), "a quiet patient's readings stayed"
    assert all(redis.exists(key) for key in stays), "a patient still sending lost readings"


def test_the_trim_clock_forgets_patients_who_left() -> None:
    clock = retention.TrimClock()
    now = 1_000_000.0
    assert all(clock.due(f"history:{n}", now) for n in range(1000))
    assert not clock.due("history:1", now + 1), "trimmed again within the interval"
    later = now + retention.TRIM_INTERVAL_S + 1
    assert clock.due("history:1", later) and clock.due("history:2", later + 1)
    assert len(clock) == 2, "it remembers only what it trimmed within the interval"


def test_a_patient_quiet_for_an_hour_leaves_the_live_cache_and_comes_back_afresh(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    # A patient quiet for an hour has left; their readings stay for the three hours kept.
    settings.redis.history_retention_s = 3 * 3600
    keys, now = codec.keys, time.time()
    settings.anomaly.forget_after_s = 3600
    processor = Stages(settings, redis, codec)
    # P-left's monitor sent for a while two hours ago; P-stays's sends on.
    for n, at in enumerate((now - 7210, now - 7205, now - 7200)):
        processor.run([reading(n, "P-left", at)])
    processor.run([reading(10, "P-stays", now - 5)])

    def live_records(patient: str) -> dict[str, bool]:
        group, tag = keys.group_of(patient), keys.patient(patient)
        return {
            "latest values": bool(redis.exists(keys.latest(patient))),
            "on the patient list": redis.zscore(keys.patients(group), tag) is not None,
            "id": bool(redis.hexists(keys.patient_ids(group), tag)),
            "NEWS2": bool(redis.hexists(keys.news2(group), tag)),
            "engine state": bool(redis.hexists(keys.engine(group), tag)),
        }

    assert all(live_records("P-left").values())
    # As a version that set no expiry on them left them.
    for key in reading_keys(codec, "P-left"):
        assert redis.persist(key), key
    tick = processor.run(now=now)
    assert tick.departed == ["P-left"]
    [offline] = [e.alert for e in tick.alert_events if e.alert.patient_id == "P-left"]
    assert not any(live_records("P-left").values()), live_records("P-left")
    for key in reading_keys(codec, "P-left"):
        assert 0 < redis.ttl(key) <= 3 * 3600 + 60 + 300, f"{key} does not expire"
    assert redis.zcard(keys.history("P-left")) == 3, "readings within the retention went"
    assert all(live_records("P-stays").values()), live_records("P-stays")
    assert redis.hexists(keys.open_alerts, keys.open_slot("P-left", offline.kind)), (
        "an alert left open is a clinician's to see, patient gone or not"
    )

    # A restarted processor does not bring the patient back.
    processor = Stages(settings, redis, codec)
    assert processor.run(now=now + 61).departed == []
    assert not any(live_records("P-left").values())

    # The monitor sends again: the patient is back, their offline alert resolves.
    back = processor.run([reading(20, "P-left", now + 62)])
    assert all(live_records("P-left").values())
    assert [(e.type, e.alert.alert_id) for e in back.alert_events] == [
        ("resolved", offline.alert_id)
    ]


def test_a_departed_patients_demographics_leave_the_live_cache_with_them(
    settings: Settings, redis: Redis, codec: Codec
) -> None:
    settings.redis.history_retention_s = 3 * 3600
    settings.anomaly.forget_after_s = 3600
    keys, now = codec.keys, time.time()
    stages = Stages(settings, redis, codec)
    named = reading(1, "P-left", now - 7200)
    named.patient.update({"patient_name": "Ada Lovelace", "mrn": "MRN-0001"})
    stages.run([named])
    stages.run([reading(2, "P-stays", now - 5)])

    def patient_resource(patient: str) -> dict[str, Any] | None:
        """The FHIR Patient the FHIR API serves, as the live cache holds it."""
        fid = fhir_id(patient, codec.id_key)
        in_index = redis.zscore(keys.fhir_index("Patient"), keys.fhir_member("Patient", fid))
        stored = cast("bytes | None", redis.get(keys.fhir("Patient", fid)))
        assert (stored is None) == (in_index is None), "the Patient index disagrees"
        if stored is None:
            return None
        return Records(codec).decode_resource(keys.fhir("Patient", fid), stored)

    before = patient_resource("P-left")
    assert before is not None and before["name"][0]["text"] == "Ada Lovelace"
    assert stages.run(now=now).departed == ["P-left"]

    assert patient_resource("P-left") is None, "a departed patient's name and MRN stayed"
    assert not redis.exists(keys.fhir_index("Patient", fhir_id("P-left", codec.id_key)))
    assert patient_resource("P-stays") is not None, "a patient still sending lost theirs"
    # Back, the patient is written again, with what their readings now say.
    stages.run([reading(3, "P-left", now + 62)])
    back = patient_resource("P-left")
    assert back is not None and "name" not in back
