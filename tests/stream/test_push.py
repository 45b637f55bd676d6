"""`healthsync push`: the pipeline's FHIR resources reach an EHR, and an EHR outage
delays only the push, never the live pipeline.

`FakeEhr` stands in for the EHR's FHIR server (a real one cannot run here; see
tests/fhir/fake_ehr.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from healthsync.config import Settings
from healthsync.kafka import make_producer
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.stream.push import resources_in
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, Device, make_settings, wait_for
from tests.fhir.fake_ehr import Canned, FakeEhr
from tests.test_pipeline import read_topic


@pytest.fixture
def ehr() -> Iterator[FakeEhr]:
    server = FakeEhr().start()
    yield server
    server.stop()


@contextmanager
def pushing(
    broker: Service, redis_server: Service, tmp_path: Path, ehr: FakeEhr, credentials: Credentials
) -> Iterator[tuple[Settings, httpx.Client, Device]]:
    """The pipeline with its push to `ehr`, the API's client and a device, until the block
    ends."""
    settings = make_settings(broker, redis_server, fhir={"ehr_base_url": ehr.base_url})
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start(stages=("ingest", "process", "api", "push"))
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{settings.api.port}", timeout=10, headers=credentials.headers()
    )
    device = Device(settings.ingest.host, settings.ingest.port)
    try:
        yield settings, api, device
    finally:
        device.close()
        api.close()
        pipeline.stop()


def test_resources_in_finds_resources_at_any_depth() -> None:
    observation = {"resourceType": "Observation", "id": "o1"}
    flag = {"resourceType": "Flag", "id": "f1"}
    event = {"event": "opened", "alert": {"alert_id": "a"}, "resources": [flag], "x": observation}
    assert list(resources_in(observation)) == [observation]
    assert list(resources_in(event)) == [flag, observation]
    assert list(resources_in({"alert": {"status": "open"}})) == []

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation}]}
    assert list(resources_in(bundle)) == [observation], "a reading's Bundle is its Observations"


def test_pushed_to_the_ehr_and_an_outage_does_not_stop_the_live_pipeline(
    broker: Service, redis_server: Service, tmp_path: Path, ehr: FakeEhr, credentials: Credentials
) -> None:
    # An EHR that refuses references to what it does not hold: the second reading's
    # Observations refer to the Patient and Device that an earlier Bundle created.
    ehr.check_references = True
    with pushing(broker, redis_server, tmp_path, ehr, credentials) as (_, api, device):
        assert device.send(b"device_id=mon-1 patient_id=P-1 seq=1 hr=72 spo2=97").startswith("OK")

        def pushed_observations() -> list[dict[str, Any]]:
            return [r for r in ehr.resources.values() if r["resourceType"] == "Observation"]

        first = wait_for(pushed_observations, what="Observations in the EHR")
        assert {o["code"]["coding"][0]["code"] for o in first} >= {"8867-4", "2708-6"}

        # The EHR goes down: the live pipeline carries on regardless.
        ehr.canned = [Canned(503)] * 1000
        assert device.send(b"device_id=mon-1 patient_id=P-1 seq=2 hr=99").startswith("OK")

        def live_heart_rate() -> float | None:
            body = api.get("/v1/patients/P-1/vitals/latest").json()
            value = body["vitals"]["heart_rate"]["value"]
            return float(value) if value == 99 else None

        wait_for(live_heart_rate, what="the new reading in the live API during the outage")
        before = len(pushed_observations())

        # The EHR is back: what it missed arrives, once.
        ehr.canned = []
        wait_for(
            lambda: len(pushed_observations()) > before, timeout=90, what="the push to catch up"
        )
        identifiers = [o["identifier"][0]["value"] for o in pushed_observations()]
        assert len(identifiers) == len(set(identifiers)), "a resource was created twice"


def test_a_value_holding_no_resources_it_can_read_is_skipped_and_the_push_goes_on(
    broker: Service, redis_server: Service, tmp_path: Path, ehr: FakeEhr
) -> None:
    # Sealed and keyed as the processor writes them, on the patient's partition: a Bundle
    # whose entry is not an object, and a value nested deeper than the interpreter's
    # recursion limit. Each raised out of the pusher's batch, so its process died on
    # them, again after every restart, and nothing after them reached the EHR.
    settings = make_settings(broker, redis_server, fhir={"ehr_base_url": ehr.base_url})
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start(stages=("ingest", "process", "push"))
    device = Device(settings.ingest.host, settings.ingest.port)
    try:
        codec = Codec.from_settings(settings)
        key = codec.message_key("P-2")
        producer = make_producer(settings.kafka)
        bad_bundle = {"resourceType": "Bundle", "type": "collection", "entry": [1]}
        for value in (orjson.dumps(bad_bundle), b"[" * 1000 + b"]" * 1000):
            sealed = codec.seal_message(roles.OBSERVATIONS, key, value)
            producer.produce(settings.kafka.observations_topic, sealed, key)
        assert producer.flush(10) == 0
        assert device.send(b"device_id=mon-2 patient_id=P-2 seq=1 hr=72").startswith("OK")
        wait_for(
            lambda: [r for r in ehr.resources.values() if r["resourceType"] == "Observation"],
            timeout=60,
            what="the reading's Observation in the EHR",
        )
    finally:
        device.close()
        pipeline.stop()


def test_a_resource_the_ehr_refuses_is_set_aside_and_counted_and_the_push_goes_on(
    broker: Service, redis_server: Service, tmp_path: Path, ehr: FakeEhr, credentials: Credentials
) -> None:
    # An EHR that holds resources to a profile of its own refuses a whole transaction over
    # one of them (422). The push sent that same Bundle again for good: nothing after it
    # ever reached the EHR, and nothing counted why.
    ehr.refuse = lambda r: "not allowed" if b"P-REFUSED" in orjson.dumps(r) else None
    with pushing(broker, redis_server, tmp_path, ehr, credentials) as (settings, api, device):
        for line in (
            b"device_id=mon-1 patient_id=P-REFUSED seq=1 hr=72 spo2=97",
            b"device_id=mon-2 patient_id=P-2 seq=1 hr=72 spo2=97",
        ):
            assert device.send(line).startswith("OK")

        def observations_of_p2() -> list[dict[str, Any]]:
            # The EHR's id of the Patient, where the Patient came in the same Bundle.
            patients = {"Patient/P-2"} | {
                f"Patient/{r['id']}"
                for r in ehr.resources.values()
                if r["resourceType"] == "Patient" and r["identifier"][0]["value"] == "P-2"
            }
            found = [
                r
                for r in ehr.resources.values()
                if r["resourceType"] == "Observation" and r["subject"]["reference"] in patients
            ]
            codes = {o["code"]["coding"][0]["code"] for o in found}
            return found if codes >= {"8867-4", "2708-6"} else []

        wait_for(observations_of_p2, timeout=60, what="P-2's Observations")
        assert not [r for r in ehr.resources.values() if b"P-REFUSED" in orjson.dumps(r)]

        def refused_count() -> int | None:
            for line in api.get("/metrics").text.splitlines():
                if line.startswith("healthsync_ehr_refused_total "):
                    return int(float(line.rsplit(" ", 1)[1])) or None
            return None

        refused = wait_for(refused_count, what="the refusals in /metrics")

        # What the EHR refused is kept, sealed, on the dead-letter topic, with the reason.
        dead = read_topic(settings, settings.kafka.dlq_topic, refused)
        assert len(dead) == refused
        assert {d["reason"] for d in dead} == {"ehr_refused"}
        assert all(d["status"] == 422 and "not allowed" in d["detail"] for d in dead)
        assert all(b"P-REFUSED" in orjson.dumps(d["resource"]) for d in dead)
        kinds = {
            (
                d["resource"]["resourceType"],
                d["resource"].get("code", {}).get("coding", [{}])[0].get("code"),
            )
            for d in dead
        }
        assert {("Patient", None), ("Observation", "8867-4"), ("Observation", "2708-6")} <= kinds
