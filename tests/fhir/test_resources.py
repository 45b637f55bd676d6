"""The FHIR resources built for readings, patients, devices, alerts and NEWS2."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import orjson
import pytest

from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.fhir.alerts import alert_resources
from healthsync.fhir.ids import fhir_id, observation_id, observation_reference
from healthsync.fhir.news2 import news2_resources
from healthsync.fhir.observations import observations_for, unbundled
from healthsync.fhir.step import FhirResources
from healthsync.fhir.terminology import READING_ID_SYSTEM, Resource
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores

TS = 1_795_787_117.825
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
DEMOGRAPHICS = {
    "patient_name": "Ada Lovelace",
    "birth_date": "1815-12-10",
    "gender": "female",
    "mrn": "MRN-0042",
    "address": "12 St James's Square, London",
    "phone": "+44 20 7946 0000",
}

# Alerts open and resolve on one sample here: these tests are about the resources, not timing.
IMMEDIATE = AnomalySettings(persist_s=0, persist_readings=1, resolve_hold_s=0, max_jump={})


def reading(rid: str = "abc", ts: float = TS, patient: str = "P-1", **vitals: float) -> Reading:
    return Reading(rid, "mon-1", patient, ts, ts + 0.1, vitals)


def interpretation(resource: dict[str, Any]) -> list[str]:
    return [c["coding"][0]["code"] for c in resource.get("interpretation", [])]


def test_one_observation_per_vital_and_one_blood_pressure_panel() -> None:
    by_id = {
        o["id"]: o for o in observations_for(reading(heart_rate=78, spo2=95, bp_sys=120, bp_dia=80))
    }
    assert sorted(by_id) == ["abc-bp", "abc-heart-rate", "abc-spo2"]

    hr = by_id["abc-heart-rate"]
    assert hr["meta"] == {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]}
    assert hr["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
    ]
    assert hr["valueQuantity"] == {
        "value": 78,
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }
    assert hr["status"] == "final"
    assert hr["subject"] == {"reference": "Patient/P-1"}
    assert hr["device"] == {"reference": "Device/mon-1"}
    assert hr["effectiveDateTime"] == "2026-11-27T13:45:17.825Z"
    assert hr["category"][0]["coding"][0]["code"] == "vital-signs"
    assert hr["identifier"] == [{"system": "urn:healthsync:reading-id", "value": "abc/heart_rate"}]

    spo2 = by_id["abc-spo2"]
    assert spo2["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/oxygensat"]
    assert [c["code"] for c in spo2["code"]["coding"]] == ["2708-6", "59408-5"]

    bp = by_id["abc-bp"]
    assert bp["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/bp"]
    assert bp["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in bp
    assert [
        (c["code"]["coding"][0]["code"], c["valueQuantity"]["value"]) for c in bp["component"]
    ] == [("8480-6", 120), ("8462-4", 80)]
    assert {c["valueQuantity"]["code"] for c in bp["component"]} == {"mm[Hg]"}


def test_a_resent_reading_maps_to_the_same_resources() -> None:
    assert observations_for(reading(heart_rate=70)) == observations_for(reading(heart_rate=70))


def test_a_lone_systolic_is_a_panel_with_the_diastolic_marked_absent() -> None:
    [only] = observations_for(reading("x", bp_sys=118))
    assert only["id"] == "x-bp" == observation_id("x", "bp_sys")
    systolic, diastolic = only["component"]
    assert systolic["valueQuantity"]["value"] == 118
    assert diastolic["code"]["coding"][0]["code"] == "8462-4"
    assert diastolic["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert "valueQuantity" not in diastolic


@pytest.mark.parametrize(
    ("vital", "value", "code"),
    [
        ("spo2", 97, "N"),
        ("spo2", 90, "N"),  # the band's edge is inside it
        ("spo2", 89, "L"),
        ("spo2", 84, "LL"),
        ("heart_rate", 44, "L"),
        ("heart_rate", 39, "LL"),
        ("heart_rate", 121, "H"),
        ("heart_rate", 141, "HH"),
        ("temp", 38.6, "H"),
        ("resp_rate", 31, "HH"),
    ],
)
def test_interpretation_follows_the_threshold_bands(vital: str, value: float, code: str) -> None:
    [observation] = observations_for(Reading("abc", "mon-1", "P-1", TS, TS, {vital: value}))
    assert interpretation(observation) == [code]


def test_reference_range_is_the_normal_band_in_ucum() -> None:
    [hr] = observations_for(reading(heart_rate=80))
    [band] = hr["referenceRange"]
    assert (band["low"]["value"], band["high"]["value"]) == (45, 120)
    assert band["low"]["code"] == band["high"]["code"] == "/min"
    assert band["type"]["coding"][0]["code"] == "normal"
    [spo2] = observations_for(reading(spo2=95))
    assert "high" not in spo2["referenceRange"][0], "SpO2 has no upper limit"


def test_blood_pressure_is_interpreted_per_component_and_summed_up() -> None:
    [bp] = observations_for(reading(bp_sys=210, bp_dia=80))
    assert [interpretation(c) for c in bp["component"]] == [["H"], ["N"]]
    assert interpretation(bp) == ["H"]
    [normal] = observations_for(reading(bp_sys=120, bp_dia=80))
    assert interpretation(normal) == ["N"]


def test_ids_outside_the_fhir_alphabet_are_replaced_by_a_stable_digest() -> None:
    assert fhir_id("P-1001.a") == "P-1001.a"
    assert fhir_id("ward_3:bed_7") == fhir_id("ward_3:bed_7") != fhir_id("ward_3:bed_8")
    assert fhir_id("ward_3:bed_7").startswith("h-")
    [observation] = observations_for(
        Reading("r", "dev_1", "ward_3:bed_7", TS, TS, {"heart_rate": 70})
    )
    assert observation["subject"]["reference"] == f"Patient/{fhir_id('ward_3:bed_7')}"
    assert observation["device"]["reference"] == f"Device/{fhir_id('dev_1')}"


def test_digest_ids_are_keyed_so_guessed_patient_ids_do_not_recover_them() -> None:
    key, other = b"k" * 32, b"o" * 32
    keyed = fhir_id("MRN:555", key)
    assert keyed.startswith("h-") and keyed == fhir_id("MRN:555", key)
    # Whoever lacks the key cannot try patient ids against it: no unkeyed digest matches.
    assert keyed != fhir_id("MRN:555")
    assert keyed.removeprefix("h-") != hashlib.blake2b(b"MRN:555", digest_size=12).hexdigest()
    assert keyed != fhir_id("MRN:555", other)
    assert fhir_id("P-1001.a", key) == "P-1001.a"  # a valid FHIR id stays as it is
    reading = Reading("r", "dev_1", "MRN:555", TS, TS, {"heart_rate": 70})
    [observation] = observations_for(reading, key)
    assert observation["subject"]["reference"] == f"Patient/{keyed}"
    assert observation["device"]["reference"] == f"Device/{fhir_id('dev_1', key)}"
    batch = Batch([reading])
    FhirResources(MRN_SYSTEM, id_key=key).process(batch)
    kinds = {r["resourceType"]: r for _, r in batch.observations}
    assert kinds["Patient"]["id"] == keyed
    assert kinds["Device"]["id"] == fhir_id("dev_1", key)


def alert(**changes: Any) -> Alert:
    base = Alert(
        alert_id="a1",
        patient_id="P-1",
        kind="threshold:spo2",
        vital="spo2",
        severity="critical",
        status="open",
        opened_at=TS,
        updated_at=TS,
        value=84,
        band="90..-",
        reading_id="abc",
    )
    return replace(base, **changes)


def test_an_open_alert_is_a_communication_in_progress_and_an_active_flag() -> None:
    communication, flag = alert_resources(alert())
    assert communication["resourceType"] == "Communication"
    assert (communication["status"], communication["priority"]) == ("in-progress", "stat")
    assert communication["about"] == [
        {
            "reference": "Observation/abc-spo2",
            "identifier": {"system": READING_ID_SYSTEM, "value": "abc/spo2"},
        }
    ]
    assert communication["subject"] == {"reference": "Patient/P-1"}
    assert communication["sent"] == "2026-11-27T13:45:17.825Z"
    assert "84 %" in communication["payload"][0]["contentString"]
    assert (flag["resourceType"], flag["status"]) == ("Flag", "active")
    assert flag["period"] == {"start": "2026-11-27T13:45:17.825Z"}

    warning, _ = alert_resources(alert(severity="warning"))
    assert warning["priority"] == "urgent"


def test_a_flag_names_the_vital_of_a_threshold_or_a_level_alert() -> None:
    _, flag = alert_resources(alert())
    assert flag["code"]["text"] == "Oxygen saturation outside the normal band (critical)"
    level = alert(kind="level:resp_rate", vital="resp_rate", severity="warning", value=9)
    communication, flag = alert_resources(level)
    assert flag["code"]["text"] == "Respiratory rate's level outside the normal band (warning)"
    assert communication["payload"][0]["contentString"].startswith("Level outside")


def test_a_resolved_alert_completes_the_communication_and_deactivates_the_flag() -> None:
    communication, flag = alert_resources(
        alert(status="resolved", value=96, resolved_at=TS + 60, updated_at=TS + 60)
    )
    assert communication["status"] == "completed"
    assert communication["payload"][0]["contentString"].startswith("Resolved")
    assert flag["status"] == "inactive"
    assert flag["period"]["end"] == "2026-11-27T13:46:17.825Z"


def test_news2_is_an_observation_and_a_risk_assessment_based_on_its_inputs() -> None:
    observed: dict[str, Any] = {"resp_rate": 22, "spo2": 95, "bp_sys": 105, "heart_rate": 95}
    observed |= {"temp": 38.4, "on_oxygen": False, "consciousness": "V"}
    sources = {name: "r1" for name in observed} | {"consciousness": "n1"}
    score = news2(observed, TS, sources=sources)
    observation, assessment = news2_resources("P-1", score)

    assert observation["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "1104051000000101",
        "display": "Royal College of Physicians National Early Warning Score 2 total score",
    }
    assert observation["valueInteger"] == 9
    assert observation["status"] == "final"
    vitals = {
        "Observation/r1-resp-rate",
        "Observation/r1-spo2",
        "Observation/r1-bp",
        "Observation/r1-heart-rate",
        "Observation/r1-temp",
    }
    assert {r["reference"] for r in observation["derivedFrom"]} == vitals

    assert assessment["resourceType"] == "RiskAssessment"
    assert assessment["id"] == observation["id"]
    references = [b["reference"] for b in assessment["basis"] if "reference" in b]
    assert references[0] == f"Observation/{observation['id']}"
    assert set(references[1:]) == vitals
    by_reading = {b["identifier"]["value"]: b["display"] for b in assessment["basis"][6:]}
    assert by_reading == {
        "r1": "Air or supplemental oxygen",
        "n1": "Level of consciousness (ACVPU)",
    }
    risk = assessment["prediction"][0]["qualitativeRisk"]
    assert [c["code"] for c in risk["coding"]] == ["high", "high"]


def test_an_incomplete_news2_is_preliminary_and_says_what_is_missing() -> None:
    score = news2({"heart_rate": 135}, TS, sources={"heart_rate": "r9"})
    observation, assessment = news2_resources("P-1", score)
    assert observation["status"] == assessment["status"] == "preliminary"
    assert "consciousness" in observation["note"][0]["text"]
    assert assessment["prediction"][0]["qualitativeRisk"]["coding"][1]["code"] == "low-medium"


class Store:
    """What the FHIR step reads back: the resources a previous processor stored."""

    def __init__(self, *resources: Resource) -> None:
        self.resources = {(r["resourceType"], r["id"]): r for r in resources}
        self.asked: list[tuple[str, list[str]]] = []

    def load(self, resource_type: str, ids: list[str]) -> dict[str, Resource]:
        self.asked.append((resource_type, ids))
        return {
            i: self.resources[(resource_type, i)]
            for i in ids
            if (resource_type, i) in self.resources
        }


def run(step: FhirResources, *readings: Reading) -> Batch:
    batch = Batch(list(readings))
    step.process(batch)
    return batch


def types(batch: Batch) -> list[str]:
    """The resource types of a batch, a reading's Bundle standing for its Observations."""
    bundles = [orjson.loads(bundle.json) for bundle in batch.bundles]
    return [r["resourceType"] for r in unbundled([*(r for _, r in batch.resources), *bundles])]


def test_patient_carries_the_demographics_and_the_mrn_with_its_system() -> None:
    step = FhirResources(MRN_SYSTEM)
    first = replace(reading(heart_rate=70), patient=DEMOGRAPHICS)
    batch = run(step, first)
    [patient] = [r for _, r in batch.resources if r["resourceType"] == "Patient"]
    assert patient["id"] == "P-1"
    assert patient["name"] == [{"text": "Ada Lovelace"}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1815-12-10")
    assert patient["address"] == [{"text": "12 St James's Square, London"}]
    assert patient["telecom"] == [{"system": "phone", "value": "+44 20 7946 0000"}]
    identifiers = {i["system"]: i for i in patient["identifier"]}
    assert identifiers["urn:healthsync:patient-id"]["value"] == "P-1"
    mrn = identifiers[MRN_SYSTEM]
    assert mrn["value"] == "MRN-0042"
    assert mrn["type"]["coding"][0]["code"] == "MR"
    [device] = [r for _, r in batch.resources if r["resourceType"] == "Device"]
    assert device["identifier"] == [{"system": "urn:healthsync:device-id", "value": "mon-1"}]
    assert all(key == "P-1" for key, _ in batch.resources)


def test_patient_and_device_are_emitted_only_when_new_or_changed() -> None:
    step = FhirResources(MRN_SYSTEM)
    with_demographics = replace(reading("r1", heart_rate=70), patient=DEMOGRAPHICS)
    assert types(run(step, with_demographics)) == ["Patient", "Device", "Observation"]
    # The same demographics again, or none at all: nothing new to say about the patient.
    again = replace(reading("r2", heart_rate=71), patient=DEMOGRAPHICS)
    assert types(run(step, again, reading("r3", heart_rate=72))) == ["Observation"] * 2
    moved = replace(reading("r4", heart_rate=73), patient={"address": "1 Hospital Road"})
    [patient] = [r for _, r in run(step, moved).resources if r["resourceType"] == "Patient"]
    assert patient["address"] == [{"text": "1 Hospital Road"}]
    assert patient["name"] == [{"text": "Ada Lovelace"}], "what was not resent is kept"
    assert patient["meta"]["lastUpdated"] == "2026-11-27T13:45:17.825Z"


def test_each_reading_travels_as_one_bundle_of_its_observations() -> None:
    step = FhirResources(MRN_SYSTEM)
    vitals = reading("r1", heart_rate=70, spo2=97, bp_sys=120, bp_dia=80)
    nurse = replace(reading("r2"), vitals={}, consciousness="A")
    batch = run(step, vitals, nurse)
    [bundle] = [orjson.loads(encoded.json) for encoded in batch.bundles]
    assert not [r for _, r in batch.observations if r["resourceType"] == "Bundle"]
    assert (bundle["id"], bundle["type"]) == ("r1", "collection")
    inside = [entry["resource"]["id"] for entry in bundle["entry"]]
    assert inside == ["r1-heart-rate", "r1-spo2", "r1-bp"]
    assert bundle["timestamp"] == bundle["entry"][0]["resource"]["effectiveDateTime"]


def test_after_a_restart_the_stored_patient_is_not_overwritten_with_less() -> None:
    before = FhirResources(MRN_SYSTEM)
    stored = [
        r
        for _, r in run(
            before, replace(reading("r1", heart_rate=70), patient=DEMOGRAPHICS)
        ).resources
        if r["resourceType"] in ("Patient", "Device")
    ]
    store = Store(*stored)
    after = FhirResources(MRN_SYSTEM, store.load)
    assert types(run(after, reading("r2", heart_rate=71))) == ["Observation"]
    assert store.asked == [("Patient", ["P-1"]), ("Device", ["mon-1"])]
    run(after, reading("r3", heart_rate=72))
    assert len(store.asked) == 2, "known patients and devices are not looked up again"

    after.on_assign({0})  # partitions moved: what was known may be stale
    changed = replace(reading("r4", heart_rate=73), patient={"phone": "+44 1"})
    [patient] = [r for _, r in run(after, changed).resources if r["resourceType"] == "Patient"]
    assert patient["telecom"][0]["value"] == "+44 1"
    assert patient["name"] == [{"text": "Ada Lovelace"}]


def test_news2_resources_are_emitted_when_the_score_changes() -> None:
    scores = News2Scores(lambda patients: {}, freshness_s=900)
    step = FhirResources(MRN_SYSTEM)

    def news2_types(*readings: Reading) -> list[str]:
        batch = Batch(list(readings))
        scores.process(batch)
        step.process(batch)
        return [r["resourceType"] for _, r in batch.resources if r["id"].startswith("news2-")]

    assert news2_types(reading("r1", heart_rate=70)) == ["Observation", "RiskAssessment"]
    assert news2_types(reading("r2", TS + 1, heart_rate=72)) == [], "same score: nothing new"
    assert news2_types(reading("r3", TS + 2, heart_rate=135)) == ["Observation", "RiskAssessment"]


def test_alert_events_bring_their_communication_and_flag() -> None:
    rules = AnomalyEngine(IMMEDIATE)
    step = FhirResources(MRN_SYSTEM)
    batch = Batch([reading("r1", spo2=84), reading("r2", TS + 5, spo2=97)])
    rules.process(batch)
    step.process(batch)
    assert [e.type for e in batch.alert_events] == ["opened", "resolved"]
    alerting = [(r["resourceType"], r["status"]) for _, r in batch.alert_resources]
    assert alerting == [
        ("Communication", "in-progress"),
        ("Flag", "active"),
        ("Communication", "completed"),
        ("Flag", "inactive"),
    ]
    assert all(r["resourceType"] not in ("Communication", "Flag") for _, r in batch.observations)
    assert batch.resources == batch.observations + batch.alert_resources


def test_an_escalated_alert_is_about_the_observation_that_escalated_it() -> None:
    event = AlertEvent("escalated", alert(severity="critical", reading_id="later"))
    communication, _ = alert_resources(event.alert)
    assert communication["about"] == [observation_reference("later", "spo2")]
