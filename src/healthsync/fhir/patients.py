"""Patient and Device resources, and the demographics a stored Patient carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from healthsync.domain.readings import isoformat_ms
from healthsync.fhir.ids import fhir_id
from healthsync.fhir.terminology import DEVICE_ID_SYSTEM, PATIENT_ID_SYSTEM, Resource, coding

MRN_TYPE: Final = {
    "coding": [
        coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number")
    ],
    "text": "MRN",
}


def patient_for(
    patient_id: str,
    demographics: Mapping[str, str],
    mrn_system: str,
    updated: float,
    key: bytes | None = None,
) -> Resource:
    """The Patient with the identifiers and demographics devices sent (readings.PATIENT_FIELDS).

    `key` keys its id when the patient id is no FHIR id (see :func:`fhir_id`).
    """
    identifiers: list[dict[str, Any]] = [{"system": PATIENT_ID_SYSTEM, "value": patient_id}]
    resource: Resource = {
        "resourceType": "Patient",
        "id": fhir_id(patient_id, key),
        "meta": {"lastUpdated": isoformat_ms(updated)},
        "identifier": identifiers,
    }
    mrn = demographics.get("mrn")
    if mrn:
        identifiers.append({"use": "usual", "type": MRN_TYPE, "system": mrn_system, "value": mrn})
    name = demographics.get("patient_name")
    if name:
        # Only the text: splitting "family" from "given" would be a guess.
        resource["name"] = [{"text": name}]
    phone = demographics.get("phone")
    if phone:
        resource["telecom"] = [{"system": "phone", "value": phone}]
    gender = demographics.get("gender")
    if gender:
        resource["gender"] = gender
    birth_date = demographics.get("birth_date")
    if birth_date:
        resource["birthDate"] = birth_date
    address = demographics.get("address")
    if address:
        resource["address"] = [{"text": address}]
    return resource


def demographics_of(patient: Mapping[str, Any]) -> dict[str, str]:
    """The inverse of :func:`patient_for`: the demographics a stored Patient carries."""
    found: dict[str, str] = {}
    for identifier in patient.get("identifier", []):
        if identifier.get("type") == MRN_TYPE:
            found["mrn"] = identifier["value"]
    if patient.get("name"):
        found["patient_name"] = patient["name"][0]["text"]
    if patient.get("telecom"):
        found["phone"] = patient["telecom"][0]["value"]
    if patient.get("gender"):
        found["gender"] = patient["gender"]
    if patient.get("birthDate"):
        found["birth_date"] = patient["birthDate"]
    if patient.get("address"):
        found["address"] = patient["address"][0]["text"]
    return found


def device_for(device_id: str, updated: float, key: bytes | None = None) -> Resource:
    return {
        "resourceType": "Device",
        "id": fhir_id(device_id, key),
        "meta": {"lastUpdated": isoformat_ms(updated)},
        "identifier": [{"system": DEVICE_ID_SYSTEM, "value": device_id}],
        "status": "active",
        "deviceName": [{"name": device_id, "type": "user-friendly-name"}],
    }
