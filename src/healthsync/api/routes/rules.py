"""A patient's alert bands and NEWS2 SpO2 scale: read, set, and back to the defaults."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.models import PatientId, RulesView
from healthsync.api.services import Services
from healthsync.domain.alerts import thresholds_for
from healthsync.domain.bands import PatientRules

router = APIRouter(tags=["patients"])


async def _rules_view(services: Services, patient_id: str) -> dict[str, Any]:
    stored = await services.reader.stored_rules(patient_id)
    configured = services.settings.anomaly.patients.get(patient_id)
    rules = stored or configured or PatientRules()
    source = "api" if stored else "config" if configured else "default"
    bands = {
        vital: {k: v for k, v in asdict(band).items() if k != "vital"}
        for vital, band in thresholds_for(rules).items()
    }
    return {
        "patient_id": patient_id,
        "source": source,
        "rules": rules.model_dump(),
        "bands": bands,
    }


@router.get("/v1/patients/{patient_id}/rules", response_model=RulesView)
async def get_rules(
    services: Services,
    access: Annotated[Access, Depends(auth.reads("Flag"))],
    patient_id: PatientId,
) -> dict[str, Any]:
    """The alert bands and NEWS2 SpO2 scale in force for a patient."""
    view = await _rules_view(services, patient_id)
    await access.record("read", [patient_id], resource="rules")
    return view


# Changing when a patient's alarms sound is a clinical act, like acknowledging one:
# the same right (clinician, admin, or a SMART write scope on alerts) and audited.
@router.put("/v1/patients/{patient_id}/rules", response_model=RulesView)
async def put_rules(
    services: Services,
    access: Annotated[Access, Depends(auth.acknowledges)],
    patient_id: PatientId,
    rules: PatientRules,
) -> dict[str, Any]:
    """Set a patient's bands (per vital) and SpO2 scale; in force within seconds."""
    await access.record("update", [patient_id], resource="rules")
    await services.reader.set_rules(patient_id, rules)
    return await _rules_view(services, patient_id)


@router.delete("/v1/patients/{patient_id}/rules", response_model=RulesView)
async def delete_rules(
    services: Services, access: Annotated[Access, Depends(auth.acknowledges)], patient_id: PatientId
) -> dict[str, Any]:
    """Back to the configured (or default) rules."""
    await access.record("delete", [patient_id], resource="rules")
    await services.reader.set_rules(patient_id, None)
    return await _rules_view(services, patient_id)
