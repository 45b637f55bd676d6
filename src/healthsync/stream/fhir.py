"""FHIR R4 resources built from readings and alerts.

Observations follow the HL7 vital-signs profile shape (category, LOINC code,
UCUM quantity); blood pressure is one panel with systolic and diastolic
components. Ids are derived from the reading id, so a replayed reading maps to
the same resource.
"""

from __future__ import annotations

from typing import Any

from healthsync.readings import VITALS, Reading, isoformat_ms
from healthsync.stream.alerts import Alert

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
READING_ID_SYSTEM = "urn:healthsync:reading-id"
_VITAL_SIGNS_CATEGORY = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
                "display": "Vital Signs",
            }
        ]
    }
]
_PROFILE_BASE = "http://hl7.org/fhir/StructureDefinition/"
_PROFILES = {
    "heart_rate": "heartrate",
    "spo2": "oxygensat",
    "temp": "bodytemp",
    "resp_rate": "resprate",
    "bp": "bp",
}
_BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")


def _code(loinc: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display}


def _quantity(vital: str, value: float) -> dict[str, Any]:
    ucum = VITALS[vital].ucum
    return {"value": value, "unit": ucum, "system": UCUM, "code": ucum}


_CODES = {n: _code(v.loinc, v.display) for n, v in VITALS.items()}
_BP_CODE = _code(*_BP_PANEL)
_META = {name: {"profile": [_PROFILE_BASE + profile]} for name, profile in _PROFILES.items()}
_BP_PARTS = ("bp_sys", "bp_dia")


def _observation(
    reading: Reading, suffix: str, common: dict[str, Any], code: dict[str, Any]
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"{reading.reading_id}-{suffix}",
        "identifier": [{"system": READING_ID_SYSTEM, "value": f"{reading.reading_id}/{suffix}"}],
        **common,
        "code": code,
    }
    meta = _META.get(suffix)
    if meta is not None:
        resource["meta"] = meta
    return resource


def observations_for(reading: Reading) -> list[dict[str, Any]]:
    """One Observation per vital; systolic and diastolic together as the BP panel."""
    vitals = reading.vitals
    # What every Observation of this reading shares, built once (this is the processor's hot path).
    common = {
        "status": "final",
        "category": _VITAL_SIGNS_CATEGORY,
        "subject": {"reference": f"Patient/{reading.patient_id}"},
        "device": {"reference": f"Device/{reading.device_id}"},
        "effectiveDateTime": isoformat_ms(reading.ts),
    }
    panel = "bp_sys" in vitals and "bp_dia" in vitals
    resources = []
    for name, value in vitals.items():
        if panel and name in _BP_PARTS:
            continue
        resource = _observation(reading, name, common, _CODES[name])
        resource["valueQuantity"] = _quantity(name, value)
        resources.append(resource)
    if panel:
        resource = _observation(reading, "bp", common, _BP_CODE)
        resource["component"] = [
            {"code": _CODES[n], "valueQuantity": _quantity(n, vitals[n])} for n in _BP_PARTS
        ]
        resources.append(resource)
    return resources


def flag_for(alert: Alert) -> dict[str, Any]:
    """The alert as a FHIR Flag, the resource EHRs show as a patient banner."""
    flag: dict[str, Any] = {
        "resourceType": "Flag",
        "id": alert.alert_id,
        "status": "active" if alert.status == "open" else "inactive",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                        "code": "clinical",
                        "display": "Clinical",
                    }
                ]
            }
        ],
        "code": {"text": f"{VITALS[alert.vital].display} outside {alert.band} ({alert.severity})"},
        "subject": {"reference": f"Patient/{alert.patient_id}"},
        "period": {"start": isoformat_ms(alert.opened_at)},
    }
    if alert.resolved_at is not None:
        flag["period"]["end"] = isoformat_ms(alert.resolved_at)
    return flag


class FhirObservations:
    """A Step: adds the batch's Observations, keyed by patient, for the observations topic."""

    def reset(self) -> None:
        """Nothing to forget: each Observation depends on its reading alone."""

    def process(self, batch: Any) -> None:
        for reading in batch.readings:
            for resource in observations_for(reading):
                batch.observations.append((reading.patient_id, resource))
