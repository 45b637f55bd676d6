"""The EHR push sink against a FHIR endpoint served over real HTTP (`FakeEhr`,
tests/fhir/fake_ehr.py): the transaction Bundles it sends, how replays,
updates and references land in the EHR, its headers and its logs.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from redis import Redis

from healthsync.config import FhirSettings, Settings
from healthsync.domain.batch import Batch, ReadingBundle
from healthsync.domain.readings import isoformat_ms
from healthsync.errors import ConfigError
from healthsync.fhir.alerts import alert_resources
from healthsync.fhir.bundle_json import BundleEncoder
from healthsync.fhir.ehr_bundle import full_url, transaction_bundle
from healthsync.fhir.ehr_push import EhrPushSink
from healthsync.fhir.observations import ObservationBuilder, observations_for
from healthsync.fhir.patients import device_for, patient_for
from healthsync.fhir.terminology import READING_ID_SYSTEM
from healthsync.security.codec import Codec
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.records import Records
from healthsync.stream.contracts import Sink
from tests.fhir.fake_ehr import FakeEhr, SinkFactory, batch_of, ehr, make_sink, outcome, reading
from tests.fhir.test_resources import TS, alert

__all__ = ["ehr", "make_sink"]  # fixtures, used by name


def test_sends_transaction_bundles_of_at_most_the_configured_size(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    sink: Sink = make_sink(ehr_batch_size=4)  # what the processor sees
    batch = batch_of(*(reading(n) for n in range(5)))  # 10 Observations
    sink.write(batch)
    assert ehr.received == []  # write only collects
    sink.flush()

    assert [len(r.bundle["entry"]) for r in ehr.received] == [4, 4, 2]
    assert {r.bundle["type"] for r in ehr.received} == {"transaction"}
    entry = ehr.received[0].bundle["entry"][0]
    assert entry["request"] == {
        "method": "PUT",
        "url": f"Observation?identifier={READING_ID_SYSTEM}|r0000/heart_rate",
    }
    assert entry["fullUrl"].startswith("urn:uuid:")
    assert entry["fullUrl"] == full_url(batch.observations[0][1])
    assert entry["resource"]["valueQuantity"]["value"] == 78
    assert len(ehr.by_identifier("Observation")) == 10


def test_a_readings_bundle_is_pushed_as_its_observations(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    # As the FHIR step leaves it: the reading's Bundle already JSON, beside the resources.
    batch = Batch([reading(1)])
    encoded = BundleEncoder(ObservationBuilder()).encode(reading(1))
    assert encoded is not None
    batch.bundles.append(ReadingBundle("P-1001", reading(1).reading_id, encoded))
    sink = make_sink()
    sink.write(batch)
    sink.flush()
    [request] = ehr.received
    assert [e["resource"]["resourceType"] for e in request.bundle["entry"]] == ["Observation"] * 2
    assert len(ehr.by_identifier("Observation")) == 2


def test_full_urls_are_deterministic_and_distinct() -> None:
    resources = [o for n in range(3) for o in observations_for(reading(n))]
    first = [e["fullUrl"] for e in transaction_bundle(resources)["entry"]]
    again = [e["fullUrl"] for e in transaction_bundle(resources)["entry"]]
    assert first == again
    assert len(set(first)) == len(resources)


def test_a_replayed_batch_creates_nothing_twice(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    batch = batch_of(reading(1), reading(2))
    sink = make_sink()
    sink.write(batch)
    sink.write(batch)  # the processor retried write: still one copy of each
    sink.flush()
    assert len(ehr.received[0].bundle["entry"]) == 4
    # After a crash another processor replays the same batch.
    replay = make_sink()
    replay.write(batch)
    replay.flush()

    assert len(ehr.resources) == 4
    replayed = ehr.answered[1].body
    assert replayed is not None
    assert [e["response"]["status"] for e in replayed["entry"]] == ["200 OK"] * 4


def test_resources_without_an_identifier_are_put_by_id_so_changes_reach_the_ehr(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    flag = {
        "resourceType": "Flag",
        "id": "a1",
        "status": "active",
        "code": {"text": "Heart rate outside high (warning)"},
        "subject": {"reference": "Patient/P-1001"},
    }
    sink = make_sink()
    sink.add([flag])
    sink.flush()
    sink.add([{**flag, "status": "inactive"}])
    sink.flush()
    assert ehr.received[0].bundle["entry"][0]["request"] == {"method": "PUT", "url": "Flag/a1"}
    assert list(ehr.resources) == ["Flag/a1"]
    assert ehr.resources["Flag/a1"]["status"] == "inactive"


def test_an_alert_resolved_after_it_was_pushed_is_resolved_in_the_ehr(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    """An alert's Communication and Flag carry its id as an identifier. Pushed as
    conditional creates, their resolved versions found the open ones there and were
    ignored: the EHR's banner stayed active for good, at the priority it opened with."""
    opened = alert(alert_id="al-1", patient_id="P-1001", kind="threshold:heart_rate")
    opened = replace(opened, vital="heart_rate", severity="warning", value=131, band="..120")
    escalated = replace(opened, severity="critical", value=150, updated_at=opened.opened_at + 20)
    resolved = replace(escalated, status="resolved", resolved_at=opened.opened_at + 600)
    sink = make_sink()
    for version in (opened, escalated, resolved):
        sink.add(alert_resources(version))
        sink.flush()
    [communication] = ehr.by_identifier("Communication").values()
    [flag] = ehr.by_identifier("Flag").values()
    assert flag["status"] == "inactive"
    assert flag["code"]["text"] == "Heart rate outside the normal band (critical)"
    assert flag["period"]["end"] == isoformat_ms(opened.opened_at + 600)  # resolved_at
    assert (communication["status"], communication["priority"]) == ("completed", "stat")
    assert len(ehr.resources) == 2


def test_references_within_a_bundle_follow_the_ids_the_ehr_assigns(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    ehr.check_references = True
    patient = {
        "resourceType": "Patient",
        "id": "P-1001",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-7"}],
    }
    device = {"resourceType": "Device", "id": "mon-0001"}
    sink = make_sink()
    sink.add([patient, device, *observations_for(reading(1))])
    sink.flush()

    (stored_patient,) = ehr.by_identifier("Patient").values()
    assert stored_patient["id"] != "P-1001"  # the EHR chose the id of the created Patient
    observations = ehr.by_identifier("Observation").values()
    assert len(observations) == 2
    for observation in observations:
        assert observation["subject"]["reference"] == f"Patient/{stored_patient['id']}"
        assert observation["device"]["reference"] == "Device/mon-0001"


def test_references_to_what_an_earlier_bundle_created_find_it(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    # The Patient and the Device go to the EHR once, with the first reading, and the EHR
    # assigns their ids. Later readings' Observations referred to them by HealthSync's
    # ids, which the EHR does not know: one that checks references refused every one.
    ehr.check_references = True
    sink = make_sink()
    patient = patient_for("P-1001", {"mrn": "MRN-7"}, "urn:oid:2.16.840.1.113883.19.5", TS)
    sink.add([patient, device_for("mon-0001", TS), *observations_for(reading(1))])
    sink.flush()
    sink.add(observations_for(reading(2)))
    sink.flush()

    assert sink.take_refused() == []
    [patient_id] = {r["id"] for r in ehr.by_identifier("Patient").values()}
    [device_id] = {r["id"] for r in ehr.by_identifier("Device").values()}
    assert (patient_id, device_id) != ("P-1001", "mon-0001")  # the EHR's own ids
    observations = ehr.by_identifier("Observation")
    assert sorted(observations) == [
        f"r000{n}/{vital}" for n in (1, 2) for vital in ("heart_rate", "spo2")
    ]
    for observation in observations.values():
        assert observation["subject"]["reference"] == f"Patient/{patient_id}"
        assert observation["device"]["reference"] == f"Device/{device_id}"


def test_a_restarted_push_finds_what_an_earlier_one_created_through_the_fhir_store(
    ehr: FakeEhr, make_sink: SinkFactory, settings: Settings, redis: Redis
) -> None:
    # A push that restarted never saw the Patient and Device it pushed before: it reads
    # their identifiers from the FHIR store, where the processor stored them.
    ehr.check_references = True
    patient = patient_for("P-1001", {}, "urn:oid:2.16.840.1.113883.19.5", TS)
    device = device_for("mon-0001", TS)
    store = RedisFhirSink(redis, settings.redis, Records(Codec.from_settings(settings)))
    stored = Batch([])
    stored.observations += [("P-1001", patient), ("P-1001", device)]
    store.write(stored)
    store.flush()
    first = make_sink()
    first.add([patient, device])
    first.flush()

    restarted = make_sink(load=store.load)
    restarted.add(observations_for(reading(1)))
    restarted.flush()

    assert restarted.take_refused() == []
    [patient_id] = {r["id"] for r in ehr.by_identifier("Patient").values()}
    [device_id] = {r["id"] for r in ehr.by_identifier("Device").values()}
    for observation in ehr.by_identifier("Observation").values():
        assert observation["subject"]["reference"] == f"Patient/{patient_id}"
        assert observation["device"]["reference"] == f"Device/{device_id}"


def test_an_alerts_observation_in_another_bundle_is_referred_to_by_its_identifier(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    # The alert comes on another topic than its Observation, maybe first: its reference
    # keeps the Observation's identifier alone (a logical reference), which cannot dangle.
    ehr.check_references = True
    sink = make_sink()
    sink.add([patient_for("P-1", {}, "urn:oid:2.16.840.1.113883.19.5", TS)])
    sink.flush()
    sink.add(alert_resources(alert()))
    sink.flush()

    assert sink.take_refused() == []
    [patient_id] = {r["id"] for r in ehr.by_identifier("Patient").values()}
    [communication] = ehr.by_identifier("Communication").values()
    assert communication["about"] == [
        {"identifier": {"system": READING_ID_SYSTEM, "value": "abc/spo2"}}
    ]
    assert communication["subject"]["reference"] == f"Patient/{patient_id}"
    [flag] = ehr.by_identifier("Flag").values()
    assert flag["subject"]["reference"] == f"Patient/{patient_id}"


def test_sends_the_configured_headers(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    sink = make_sink(ehr_headers={"Authorization": "Bearer s3cret"})
    sink.write(batch_of(reading(1)))
    sink.flush()
    headers = {k.lower(): v for k, v in ehr.received[0].headers.items()}
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["content-type"] == "application/fhir+json"
    assert headers["accept"] == "application/fhir+json"


def test_logs_counts_only(
    ehr: FakeEhr, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ehr.fail(503, body=outcome("busy", "transient"))
    sink = make_sink()
    sink.write(batch_of(reading(1, patient_id="P-SECRET")))
    with caplog.at_level(logging.INFO, logger="healthsync.fhir.ehr_push"):
        sink.flush()
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1
    counts = vars(info[0])
    assert (counts["bundles"], counts["resources_created"], counts["resources_existing"]) == (
        1,
        2,
        0,
    )
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        assert "P-SECRET" not in text and "r0001" not in text


def test_an_empty_flush_sends_nothing(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.write(Batch([]))
    sink.flush()
    assert ehr.received == []


def test_off_without_a_base_url() -> None:
    assert FhirSettings().ehr_base_url is None
    with pytest.raises(ConfigError, match="FHIR base URL"):
        EhrPushSink(FhirSettings())
