"""NEWS2 as FHIR: the total score as an Observation, and a RiskAssessment based on it."""

from __future__ import annotations

from typing import Any, Final

from healthsync.domain.news2 import News2
from healthsync.domain.readings import isoformat_ms
from healthsync.fhir.ids import (
    SUFFIXES,
    news2_id,
    news2_reference,
    observation_id,
    observation_reference,
    patient_reference,
)
from healthsync.fhir.terminology import (
    NEWS2_BAND_SYSTEM,
    NEWS2_ID_SYSTEM,
    NEWS2_TOTAL,
    READING_ID_SYSTEM,
    SNOMED,
    SURVEY_CATEGORY,
    Resource,
    coding,
)

_NEWS2_CODE: Final = {
    "coding": [
        coding(
            SNOMED,
            NEWS2_TOTAL,
            "Royal College of Physicians National Early Warning Score 2 total score",
        )
    ],
    "text": "NEWS2 total score",
}
# NEWS2 bands as the risk-probability code system grades likelihood. Low-medium (one
# parameter scored 3) already calls for an urgent ward review, so it counts as moderate.
_RISK: Final = {
    "low": ("low", "Low likelihood"),
    "low-medium": ("moderate", "Moderate likelihood"),
    "medium": ("moderate", "Moderate likelihood"),
    "high": ("high", "High likelihood"),
}
_PARAMETER_NAMES: Final = {
    "on_oxygen": "Air or supplemental oxygen",
    "consciousness": "Level of consciousness (ACVPU)",
}


def _news2_basis(score: News2) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """References to what fed the score: (Observations, everything incl. non-Observation inputs)."""
    observations: list[dict[str, Any]] = []
    seen: set[str] = set()
    others: list[dict[str, Any]] = []
    for parameter, reading_id in score.sources.items():
        if parameter in SUFFIXES:
            oid = observation_id(reading_id, parameter)
            if oid not in seen:
                seen.add(oid)
                observations.append(observation_reference(reading_id, parameter))
        else:
            # Oxygen and consciousness are no vital-signs Observation: point at the reading.
            others.append(
                {
                    "identifier": {"system": READING_ID_SYSTEM, "value": reading_id},
                    "display": _PARAMETER_NAMES.get(parameter, parameter),
                }
            )
    return observations, observations + others


def news2_resources(
    patient_id: str, score: News2, key: bytes | None = None
) -> tuple[Resource, Resource]:
    """The NEWS2 total as an Observation, and a RiskAssessment based on it and its inputs.

    `key` keys its FHIR ids (see :func:`healthsync.fhir.ids.fhir_id`).
    """
    rid = news2_id(patient_id, score.ts, key)
    subject = patient_reference(patient_id, key)
    status = "final" if score.complete else "preliminary"
    when = isoformat_ms(score.ts)
    identifier = [{"system": NEWS2_ID_SYSTEM, "value": rid}]
    inputs, basis = _news2_basis(score)
    observation: Resource = {
        "resourceType": "Observation",
        "id": rid,
        "identifier": identifier,
        "status": status,
        "category": SURVEY_CATEGORY,
        "code": _NEWS2_CODE,
        "subject": subject,
        "effectiveDateTime": when,
        "valueInteger": score.total,
    }
    if inputs:
        observation["derivedFrom"] = inputs
    risk_code, risk_display = _RISK[score.band]
    assessment: Resource = {
        "resourceType": "RiskAssessment",
        "id": rid,
        "identifier": identifier,
        "status": status,
        "method": _NEWS2_CODE,
        "subject": subject,
        "occurrenceDateTime": when,
        "basis": [news2_reference(rid), *basis],
        "prediction": [
            {
                "outcome": {"text": "Clinical deterioration"},
                "qualitativeRisk": {
                    "coding": [
                        coding(
                            "http://terminology.hl7.org/CodeSystem/risk-probability",
                            risk_code,
                            risk_display,
                        ),
                        coding(NEWS2_BAND_SYSTEM, score.band, f"NEWS2 {score.band} risk"),
                    ],
                    "text": f"NEWS2 {score.total}: {score.band} clinical risk",
                },
            }
        ],
    }
    if score.missing:
        note = [{"text": "Incomplete NEWS2, no fresh value for: " + ", ".join(score.missing)}]
        observation["note"] = note
        assessment["note"] = note
    return observation, assessment
