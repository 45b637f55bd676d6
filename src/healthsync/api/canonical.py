"""The patient ids the audit log names: always the id devices sent, on both APIs.

FHIR ids may not hold ``:`` or ``_``, so such a patient is ``h-<digest>`` under
/fhir. Audited as that, one patient would be two in the log (``MRN:555`` on
/v1, ``h-67156b...`` on /fhir); the Patient resource's identifier gives the id
back.
"""

from __future__ import annotations

from collections.abc import Iterable

from healthsync.fhir.terminology import PATIENT_ID_SYSTEM
from healthsync.store.fhir_queries import FhirReader

_DIGEST_PREFIX = "h-"


async def canonical_patients(reader: FhirReader, fhir_ids: Iterable[str]) -> list[str]:
    """`fhir_ids` as the ids the devices sent (an unknown digest id stays as it is)."""
    found: dict[str, str] = {}
    for fhir_id in fhir_ids:
        if fhir_id in found:
            continue
        found[fhir_id] = fhir_id
        if fhir_id.startswith(_DIGEST_PREFIX):
            found[fhir_id] = await _patient_id(reader, fhir_id) or fhir_id
    return list(found.values())


async def _patient_id(reader: FhirReader, fhir_id: str) -> str | None:
    patient = await reader.read("Patient", fhir_id)
    for identifier in (patient or {}).get("identifier", []):
        if identifier.get("system") == PATIENT_ID_SYSTEM and isinstance(
            identifier.get("value"), str
        ):
            return str(identifier["value"])
    return None
