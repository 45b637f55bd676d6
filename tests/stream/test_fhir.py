"""The basic FHIR Observations built for every reading."""

from __future__ import annotations

from healthsync.readings import Reading
from healthsync.stream.fhir import observations_for


def test_one_observation_per_vital_and_one_blood_pressure_panel() -> None:
    reading = Reading(
        reading_id="abc",
        device_id="mon-1",
        patient_id="P-1",
        ts=1_795_787_117.825,
        received_at=1_795_787_117.9,
        vitals={"heart_rate": 78, "spo2": 95, "bp_sys": 120, "bp_dia": 80},
    )
    by_id = {o["id"]: o for o in observations_for(reading)}
    assert sorted(by_id) == ["abc-bp", "abc-heart_rate", "abc-spo2"]

    hr = by_id["abc-heart_rate"]
    assert hr["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "8867-4",
        "display": "Heart rate",
    }
    assert hr["valueQuantity"] == {
        "value": 78,
        "unit": "/min",
        "system": "http://unitsofmeasure.org",
        "code": "/min",
    }
    assert hr["subject"] == {"reference": "Patient/P-1"}
    assert hr["device"] == {"reference": "Device/mon-1"}
    assert hr["effectiveDateTime"] == "2026-11-27T13:45:17.825Z"
    assert hr["category"][0]["coding"][0]["code"] == "vital-signs"

    bp = by_id["abc-bp"]
    assert bp["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in bp
    assert [
        (c["code"]["coding"][0]["code"], c["valueQuantity"]["value"]) for c in bp["component"]
    ] == [
        ("8480-6", 120),
        ("8462-4", 80),
    ]
    assert bp["component"][0]["valueQuantity"]["code"] == "mm[Hg]"


def test_lone_systolic_is_its_own_observation() -> None:
    reading = Reading("x", "d", "P", 1.7e9, 1.7e9, {"bp_sys": 118})
    [only] = observations_for(reading)
    assert only["code"]["coding"][0]["code"] == "8480-6"
    assert only["valueQuantity"]["value"] == 118
