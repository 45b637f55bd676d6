"""End to end: readings over TCP come out as valid FHIR on both topics and in Redis."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
from redis import Redis

from healthsync.config import Settings
from healthsync.fhir.ids import fhir_id, observation_reference
from healthsync.fhir.profiles import validate
from healthsync.security.codec import Codec
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, Device, wait_for
from tests.test_pipeline import read_topic

ADMIT = (
    b"device_id=mon-1 patient_id=P-100 seq=1 hr=72 spo2=97 temp=36.8 rr=16 bp=120/80"
    b' on_o2=no consciousness=A name="Ada Lovelace" dob=1815-12-10 sex=F mrn=MRN-42'
    b' phone="+44 20 7946 0000" address="12 St James Square, London"'
)


def test_readings_become_valid_fhir_on_the_topics_and_in_redis(
    pipeline: Pipeline, device: Device, redis: Redis, tmp_path: Path, credentials: Credentials
) -> None:
    settings = pipeline.settings
    codec = Codec.from_settings(settings)
    keys = codec.keys
    # A critical SpO2 that stands for 15 s (a sudden fall the heart rate does not share
    # is held that long as a possible probe dip) opens an alert: the critical value is
    # confirmed by its first and third samples, 10 s apart. It resolves once SpO2 has
    # been normal for 30 s (measurement times as the monitor sent them).
    t = int(time.time()) - 120
    replies = [device.send(ADMIT + f" ts={t}".encode())]
    samples = (
        (2, 5, 84),
        (3, 10, 84),
        (4, 15, 84),
        (5, 20, 84),
        (6, 25, 96),
        (7, 30, 96),
        (8, 60, 97),
    )
    for seq, at, spo2 in samples:
        line = f"device_id=mon-1 patient_id=P-100 seq={seq} ts={t + at} spo2={spo2}"
        replies.append(device.send(line.encode()))
    assert all(reply.startswith("OK ") for reply in replies), replies
    admitted, first, second, low, *after = (reply.split()[1] for reply in replies)
    later = [first, second, *after]

    def resolved_flag() -> dict[str, Any] | None:
        ids = cast("list[bytes]", redis.zrange(keys.fhir_index("Flag", "P-100"), 0, -1))
        key = keys.fhir("Flag", ids[0].decode()) if ids else ""
        raw = cast("bytes | None", redis.get(key)) if ids else None
        flag: dict[str, Any] | None = orjson.loads(codec.open(raw, key)) if raw else None
        return flag if flag and flag["status"] == "inactive" else None

    flag = wait_for(resolved_flag, what="the SpO2 alert's Flag, resolved, in Redis")
    assert flag["subject"] == {"reference": "Patient/P-100"}

    in_redis = _served(settings, codec, redis, credentials)
    vitals = {rid for kind, rid in in_redis if kind == "Observation" and "news2" not in rid}
    assert vitals == {
        f"{admitted}-heart-rate",
        f"{admitted}-spo2",
        f"{admitted}-temp",
        f"{admitted}-resp-rate",
        f"{admitted}-bp",
        f"{low}-spo2",
        *(f"{rid}-spo2" for rid in later),
    }

    # The observations topic carries the same resources; the alerts topic the alert's events.
    on_topic = [r for r in in_redis.values() if r["resourceType"] not in ("Communication", "Flag")]
    # Each reading's vital-sign Observations travel as one Bundle: read what they carry.
    topic = settings.kafka.observations_topic
    observations = read_topic(settings, topic, len(on_topic), unbundle=True)
    assert {(r["resourceType"], r["id"]) for r in observations} == {
        (r["resourceType"], r["id"]) for r in on_topic
    }
    for emitted_resource in observations:
        key = (emitted_resource["resourceType"], emitted_resource["id"])
        if key[0] == "Observation":
            assert in_redis[key] == emitted_resource, "served differs from what was emitted"
    events = read_topic(settings, settings.kafka.alerts_topic, 2)
    _check_alert_events(events, low)

    _check_clinical_view(in_redis, settings, low)

    # Everything emitted validates, here and with the command a user would run.
    emitted = [*observations, *(r for e in events for r in (e["communication"], e["flag"]))]
    _check_valid(emitted, list(in_redis.values()), tmp_path)


def test_a_patient_id_fhir_cannot_hold_gets_a_keyed_id_that_still_reads_back(
    pipeline: Pipeline, device: Device, credentials: Credentials
) -> None:
    """``MRN:555`` is no FHIR id: its FHIR id is a keyed digest, usable like any other."""
    reply = device.send(b"device_id=mon_7 patient_id=MRN:555 seq=1 hr=72 mrn=MRN-555")
    assert reply.startswith("OK "), reply
    cfg = pipeline.settings.api
    api = httpx.Client(
        base_url=f"http://{cfg.host}:{cfg.port}/fhir", headers=credentials.headers(), timeout=10
    )

    def observation() -> dict[str, Any] | None:
        bundle = api.get("/Observation", params={"code": "8867-4"}).json()
        entries = bundle.get("entry", [])
        return cast("dict[str, Any]", entries[0]["resource"]) if entries else None

    with api:
        subject = wait_for(observation, what="the heart rate Observation")["subject"]
        patient_id = subject["reference"].removeprefix("Patient/")
        assert patient_id.startswith("h-")
        # Without the keyring's key, trying patient ids against the digest finds nothing.
        unkeyed = hashlib.blake2b(b"MRN:555", digest_size=12).hexdigest()
        assert patient_id not in (f"h-{unkeyed}", fhir_id("MRN:555"))
        assert api.get(f"/Patient/{fhir_id('MRN:555')}").status_code == 404
        patient = api.get(f"/Patient/{patient_id}")
        assert patient.status_code == 200, patient.text
        assert {"system": "urn:healthsync:patient-id", "value": "MRN:555"} in patient.json()[
            "identifier"
        ]
        found = [
            e["resource"] for e in api.get(f"/Observation?patient={patient_id}").json()["entry"]
        ]
        assert {r["subject"]["reference"] for r in found} == {f"Patient/{patient_id}"}
        assert [r["valueQuantity"]["value"] for r in found if "valueQuantity" in r] == [72]


Served = dict[tuple[str, str], dict[str, Any]]


def _served(settings: Settings, codec: Codec, redis: Redis, credentials: Credentials) -> Served:
    """Every resource the indexes name, as the FHIR API serves it.

    Vital-sign Observations are rebuilt from their reading, the rest are stored.
    A reading is indexed once for all of its Observations, so the Observations'
    ids come from the search, which must find each of them once.
    """
    keys = codec.keys
    in_redis: Served = {}
    api = f"http://{settings.api.host}:{settings.api.port}/fhir"
    # A Patient and a Device are indexed under their pseudonyms: their ids are not stored
    # in clear.
    clear_ids = {
        "Patient": {keys.fhir_member("Patient", "P-100"): "P-100"},
        "Device": {keys.fhir_member("Device", "mon-1"): "mon-1"},
    }
    for kind in ("Observation", "RiskAssessment", "Patient", "Device", "Communication", "Flag"):
        if kind == "Observation":
            ids = _searched(f"{api}/Observation?_count=7", credentials)
        else:
            members = cast("list[bytes]", redis.zrange(keys.fhir_index(kind), 0, -1))
            ids = [clear_ids.get(kind, {}).get(m.decode(), m.decode()) for m in members]
        for rid in ids:
            response = httpx.get(f"{api}/{kind}/{rid}", headers=credentials.headers())
            assert response.status_code == 200, (kind, rid, response.text)
            in_redis[(kind, rid)] = response.json()
    return in_redis


def _searched(url: str, credentials: Credentials) -> list[str]:
    """The ids a search finds, page after page, checked against its total."""
    found: list[str] = []
    total: set[int] = set()
    while True:
        bundle = httpx.get(url, headers=credentials.headers()).json()
        found += [e["resource"]["id"] for e in bundle.get("entry", [])]
        total.add(bundle["total"])
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            break
        url = links["next"]
    assert total == {len(found)} and len(set(found)) == len(found), (total, found)
    return found


def _check_alert_events(events: list[dict[str, Any]], low: str) -> None:
    """The SpO2 alert opened and resolved on the alerts topic, with its FHIR resources."""
    assert [e["event"] for e in sorted(events, key=lambda e: e["alert"]["updated_at"])] == [
        "opened",
        "resolved",
    ]
    opened = next(e for e in events if e["event"] == "opened")
    assert opened["communication"]["status"] == "in-progress"
    assert opened["communication"]["priority"] == "stat"
    assert opened["communication"]["about"] == [observation_reference(low, "spo2")]
    assert opened["flag"]["status"] == "active"


def _check_clinical_view(in_redis: Served, settings: Settings, low: str) -> None:
    """What a clinician's system would look at."""
    low_spo2 = in_redis[("Observation", f"{low}-spo2")]
    assert low_spo2["interpretation"][0]["coding"][0]["code"] == "LL"
    assert low_spo2["identifier"] == [
        {"system": "urn:healthsync:reading-id", "value": f"{low}/spo2"}
    ]
    patient = in_redis[("Patient", "P-100")]
    assert {"system": settings.fhir.mrn_system, "value": "MRN-42"}.items() <= next(
        i for i in patient["identifier"] if i["system"] == settings.fhir.mrn_system
    ).items()
    assert (patient["name"], patient["gender"]) == ([{"text": "Ada Lovelace"}], "female")
    assessments = [r for (kind, _), r in in_redis.items() if kind == "RiskAssessment"]
    assert assessments, "NEWS2 is assessed"
    for assessment in assessments:
        for basis in assessment["basis"]:
            if "reference" in basis:
                kind, _, rid = basis["reference"].partition("/")
                assert (kind, rid) in in_redis, f"{basis} points at nothing stored"


def _check_valid(
    emitted: list[dict[str, Any]], stored: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Every resource validates, here and with the command a user would run."""
    for resource in [*emitted, *stored]:
        validate(resource)
    dump = tmp_path / "emitted.ndjson"
    dump.write_bytes(b"\n".join(orjson.dumps(r) for r in emitted))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    result = subprocess.run(
        [sys.executable, "-m", "healthsync", "fhir-validate", str(dump)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(emitted) and all(line.startswith("ok ") for line in lines)
