"""FHIR code systems, profiles and the codings HealthSync uses, built once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

Resource = dict[str, Any]
# Reads stored resources back: (resource type, ids) -> {id: resource} for those that exist.
ResourceLoader = Callable[[str, list[str]], dict[str, Resource]]

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
SNOMED: Final = "http://snomed.info/sct"
READING_ID_SYSTEM: Final = "urn:healthsync:reading-id"
PATIENT_ID_SYSTEM: Final = "urn:healthsync:patient-id"
DEVICE_ID_SYSTEM: Final = "urn:healthsync:device-id"
ALERT_ID_SYSTEM: Final = "urn:healthsync:alert-id"
NEWS2_ID_SYSTEM: Final = "urn:healthsync:news2-id"
NEWS2_BAND_SYSTEM: Final = "urn:healthsync:news2-band"
PROFILE_BASE: Final = "http://hl7.org/fhir/StructureDefinition/"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
NEWS2_TOTAL: Final = "1104051000000101"

# Displays as LOINC names them; `text` is the plain name from readings.VITALS.
LOINC_DISPLAY: Final = {
    "8867-4": "Heart rate",
    "2708-6": "Oxygen saturation in Arterial blood",
    "59408-5": "Oxygen saturation in Arterial blood by Pulse oximetry",
    "8310-5": "Body temperature",
    "9279-1": "Respiratory rate",
    "8480-6": "Systolic blood pressure",
    "8462-4": "Diastolic blood pressure",
    "85354-9": "Blood pressure panel with all children optional",
}
INTERPRETATION_DISPLAY: Final = {
    "N": "Normal",
    "L": "Low",
    "H": "High",
    "LL": "Critical low",
    "HH": "Critical high",
}


def coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def loinc(code: str) -> dict[str, str]:
    display = LOINC_DISPLAY.get(code)
    return {"system": LOINC, "code": code} if display is None else coding(LOINC, code, display)


def category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [coding(OBSERVATION_CATEGORY, code, display)]}]


VITAL_SIGNS_CATEGORY: Final = category("vital-signs", "Vital Signs")
SURVEY_CATEGORY: Final = category("survey", "Survey")
NORMAL_RANGE: Final = {
    "coding": [
        coding(
            "http://terminology.hl7.org/CodeSystem/referencerange-meaning", "normal", "Normal Range"
        )
    ]
}
ABSENT: Final = {
    "coding": [
        coding("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown", "Unknown")
    ]
}


INTERPRETATIONS: Final = {
    code: {"coding": [coding(INTERPRETATION, code, display)], "text": display}
    for code, display in INTERPRETATION_DISPLAY.items()
}
INTERPRETATION_LISTS: Final = {code: [concept] for code, concept in INTERPRETATIONS.items()}


def quantity(ucum: str, value: float) -> dict[str, Any]:
    return {"value": value, "unit": ucum, "system": UCUM, "code": ucum}
