"""FHIR search over Redis and, for Observations older than its retention, the archive.

The live search is :class:`healthsync.store.fhir_queries.FhirReader`'s; when a
search names a patient and a date reaching past the retention,
:class:`healthsync.store.fhir_archive.ArchivedObservations` merges in what
the archive keeps (see there).
"""

from __future__ import annotations

from healthsync.api.canonical import canonical_patients
from healthsync.api.services import ApiServices
from healthsync.store.fhir_queries import Page, Search


async def search(services: ApiServices, query: Search) -> Page:
    page = await services.fhir.search(query)
    archived = services.fhir_archive
    if archived is None or query.patient is None or not archived.reaches(query):
        return page
    # The archive is keyed by the id devices sent; a digest FHIR id names it in its Patient.
    [patient_id] = await canonical_patients(services.fhir, [query.patient])
    return await archived.search(query, patient_id, page)
