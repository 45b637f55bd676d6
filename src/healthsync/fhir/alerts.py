"""Alerts as FHIR: a Communication to clinicians and a Flag for the patient banner."""

from __future__ import annotations

from typing import Any, Final

from healthsync.domain.alerts import Alert
from healthsync.domain.readings import VITALS, isoformat_ms
from healthsync.fhir.ids import (
    device_reference,
    news2_id,
    news2_reference,
    observation_reference,
    patient_reference,
)
from healthsync.fhir.terminology import ALERT_ID_SYSTEM, Resource, coding

_ALERT_CATEGORY: Final = [
    {
        "coding": [
            coding("http://terminology.hl7.org/CodeSystem/communication-category", "alert", "Alert")
        ]
    }
]
_FLAG_CATEGORY: Final = [
    {
        "coding": [
            coding("http://terminology.hl7.org/CodeSystem/flag-category", "clinical", "Clinical")
        ]
    }
]
_SAFETY_CATEGORY: Final = [
    {"coding": [coding("http://terminology.hl7.org/CodeSystem/flag-category", "safety", "Safety")]}
]
_PRIORITY: Final = {"critical": "stat", "warning": "urgent"}


def _normal_band(band: str, ucum: str) -> str:
    """Threshold.describe()'s "low..high" ("-" for no limit) in words."""
    low, _, high = band.partition("..")
    if high in ("-", ""):
        return f"at least {low} {ucum}"
    if low in ("-", ""):
        return f"at most {high} {ucum}"
    return f"{low}-{high} {ucum}"


# Kinds about one vital's band, and what their Flag says after the vital's name.
_BAND_KINDS: Final = {
    "threshold": " outside the normal band",
    "level": "'s level outside the normal band",
}
_KIND_TITLES: Final = {
    "level": "Level outside the normal band",
    "trend": "Trend",
    "baseline": "Change from this patient's baseline",
    "news2": "NEWS2",
    "device_offline": "Device offline",
}


def _alert_text(alert: Alert) -> str:
    family = alert.kind.partition(":")[0]
    if family == "threshold" and alert.vital in VITALS:
        vital = VITALS[alert.vital]
        normal = _normal_band(alert.band, vital.ucum)
        if alert.status == "resolved":
            return f"Resolved: {vital.display} {alert.value:g} {vital.ucum}, normal is {normal}"
        return (
            f"{vital.display} {alert.value:g} {vital.ucum} ({alert.severity}): normal is {normal}"
        )
    text = f"{_KIND_TITLES.get(family, family)} ({alert.severity}): {alert.rule}"
    return f"Resolved: {text}" if alert.status == "resolved" else text


def _about(alert: Alert, key: bytes | None) -> list[dict[str, Any]]:
    """What the alert is about: the Observation (or device) that fired it."""
    if alert.kind == "news2":
        return [news2_reference(news2_id(alert.patient_id, alert.opened_at, key))]
    if alert.device_id is not None and alert.vital is None:
        return [device_reference(alert.device_id, key)]
    if alert.vital in VITALS and alert.reading_id:
        return [observation_reference(alert.reading_id, alert.vital)]
    return []


def communication_for(alert: Alert, key: bytes | None = None) -> Resource:
    """The alert as sent to clinicians: in progress while open, completed once resolved.

    `key` keys the FHIR ids it refers to (see :func:`healthsync.fhir.ids.fhir_id`).
    """
    resource: Resource = {
        "resourceType": "Communication",
        "id": alert.alert_id,
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": alert.alert_id}],
        "status": "in-progress" if alert.status == "open" else "completed",
        "category": _ALERT_CATEGORY,
        "priority": _PRIORITY[alert.severity],
        "subject": patient_reference(alert.patient_id, key),
        "sent": isoformat_ms(alert.opened_at),
        "payload": [{"contentString": _alert_text(alert)}],
    }
    about = _about(alert, key)
    if about:
        resource["about"] = about
    return resource


def _flag_text(alert: Alert) -> str:
    family = alert.kind.partition(":")[0]
    if family in _BAND_KINDS and alert.vital in VITALS:
        return f"{VITALS[alert.vital].display}{_BAND_KINDS[family]} ({alert.severity})"
    return f"{_KIND_TITLES.get(family, family)} ({alert.severity})"


def flag_for(alert: Alert, key: bytes | None = None) -> Resource:
    """The alert as a FHIR Flag, the resource EHRs show as a patient banner."""
    flag: Resource = {
        "resourceType": "Flag",
        "id": alert.alert_id,
        "identifier": [{"system": ALERT_ID_SYSTEM, "value": alert.alert_id}],
        "status": "active" if alert.status == "open" else "inactive",
        "category": _FLAG_CATEGORY if alert.category == "clinical" else _SAFETY_CATEGORY,
        "code": {"text": _flag_text(alert)},
        "subject": patient_reference(alert.patient_id, key),
        "period": {"start": isoformat_ms(alert.opened_at)},
    }
    if alert.resolved_at is not None:
        flag["period"]["end"] = isoformat_ms(alert.resolved_at)
    return flag


def alert_resources(alert: Alert, key: bytes | None = None) -> tuple[Resource, Resource]:
    """The Communication and the Flag of an alert as it is now (`key`: see communication_for)."""
    return communication_for(alert, key), flag_for(alert, key)
