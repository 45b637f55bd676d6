"""The FHIR R4 read API: metadata, read by id, and search over the resources in Redis.

A subset of the FHIR RESTful API that standard clients can use unchanged, served
by the FHIR sub-application (:mod:`healthsync.api.fhir_app`) mounted at ``/fhir``:
``/fhir/metadata`` (a CapabilityStatement generated from the search table in
:mod:`healthsync.api.fhir_search`), ``/fhir/{type}/{id}`` and
``/fhir/{type}?...`` (a searchset Bundle with ``next`` links). Every answer
with patient data is audited before it is sent.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from redis.exceptions import RedisError

from healthsync import __version__
from healthsync.api import auth, fhir_history
from healthsync.api.auth import Access
from healthsync.api.canonical import canonical_patients
from healthsync.api.fhir import (
    FHIR_ID,
    FHIR_JSON,
    FHIR_VERSION,
    FhirError,
    FhirResponse,
    invalid,
)
from healthsync.api.fhir_search import RESULT_DOC, SEARCHES, encode_cursor, parse_search
from healthsync.api.services import Services
from healthsync.domain.readings import isoformat_ms
from healthsync.store.fhir_archive import ArchiveTooCostly
from healthsync.store.fhir_queries import Page, Resource

_READABLE = ("Observation", "Patient", "Device", "Communication", "Flag", "RiskAssessment")

# Paths relative to the sub-application, mounted at /fhir by api/fhir_app.py.
router = APIRouter(tags=["fhir"], default_response_class=FhirResponse)


# Documents ------------------------------------------------------------------------------


def capability_statement(base_url: str, published: float) -> dict[str, Any]:
    resources = []
    for resource_type in _READABLE:
        searches = SEARCHES.get(resource_type)
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": "read"}],
            "versioning": "no-version",
            "readHistory": False,
            "updateCreate": False,
        }
        if searches is not None:
            entry["interaction"].append({"code": "search-type"})
            entry["searchParam"] = [param.capability() for param in searches.values()]
            entry["documentation"] = RESULT_DOC
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": isoformat_ms(published),
        "publisher": "HealthSync",
        "kind": "instance",
        "software": {"name": "HealthSync", "version": __version__},
        "implementation": {
            "description": "HealthSync live vitals: a read-only FHIR R4 server subset",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Resources from the recent window kept in Redis; vital-sign "
                "Observations of a patient also from the archive for older dates. " + RESULT_DOC,
                "resource": resources,
            }
        ],
    }


def _searchset(request: Request, resource_type: str, page: Page) -> dict[str, Any]:
    links = [{"relation": "self", "url": str(request.url)}]
    if page.next is not None:
        following = request.url.include_query_params(_cursor=encode_cursor(page.next))
        links.append({"relation": "next", "url": str(following)})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": isoformat_ms(time.time()),
        "link": links,
    }
    if page.total is not None:  # None: a filtered search too wide to count in one page
        bundle["total"] = page.total
    if page.resources:  # FHIR JSON has no empty arrays
        bundle["entry"] = [
            {
                "fullUrl": str(
                    request.url_for("fhir_read", resource_type=resource_type, resource_id=r["id"])
                ),
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in page.resources
        ]
    return bundle


def _unavailable(exc: RedisError) -> FhirError:
    # "transient" tells a FHIR client that the same request may succeed later.
    return FhirError(503, "transient", f"the resource store is unavailable: {type(exc).__name__}")


def _check_type(resource_type: str) -> None:
    if resource_type not in _READABLE:
        raise FhirError(
            404,
            "not-supported",
            f"resource type {resource_type!r} is not served here; "
            f"supported: {', '.join(_READABLE)}",
        )


# Routes ---------------------------------------------------------------------------------


def _patients_of(resources: list[Resource]) -> list[str]:
    """The patients whose data these resources are, for the audit log."""
    patients = []
    for resource in resources:
        if resource.get("resourceType") == "Patient":
            patients.append(str(resource.get("id")))
            continue
        subject = resource.get("subject")
        reference = subject.get("reference") if isinstance(subject, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            patients.append(reference.removeprefix("Patient/"))
    return patients


@router.get("/metadata", name="fhir_metadata", summary="CapabilityStatement")
async def metadata(
    request: Request, services: Services, _access: Annotated[Access, Depends(auth.authenticated)]
) -> FhirResponse:
    base = str(request.url_for("fhir_metadata")).removesuffix("/metadata")
    return FhirResponse(capability_statement(base, services.started))


@router.get("/{resource_type}", name="fhir_search", summary="Search (searchset Bundle)")
async def search(
    request: Request,
    resource_type: str,
    services: Services,
    access: Annotated[Access, Depends(auth.fhir_reads)],
) -> FhirResponse:
    _check_type(resource_type)
    if resource_type not in SEARCHES:
        raise FhirError(
            405,
            "not-supported",
            f"{resource_type} cannot be searched here; read it by id: {resource_type}/{{id}}",
        )
    parsed = parse_search(resource_type, request.query_params.multi_items())
    if parsed.conflicting_patients:
        page = Page(0, [], None)  # two different patients: nothing matches both
    else:
        try:
            page = await fhir_history.search(services, parsed.search)
        except ArchiveTooCostly as exc:
            raise FhirError(400, "too-costly", str(exc)) from None
        except RedisError as exc:
            raise _unavailable(exc) from None
    patients = _patients_of(page.resources) + sorted(parsed.search_patients)
    patients = await canonical_patients(services.fhir, patients)
    await access.record("search", patients, resource=resource_type)
    return FhirResponse(_searchset(request, resource_type, page))


@router.get("/{resource_type}/{resource_id}", name="fhir_read", summary="Read by id")
async def read(
    resource_type: str,
    resource_id: str,
    services: Services,
    access: Annotated[Access, Depends(auth.fhir_reads)],
) -> FhirResponse:
    _check_type(resource_type)
    if not FHIR_ID.fullmatch(resource_id):
        raise invalid(f"{resource_id!r} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")
    try:
        resource = await services.fhir.read(resource_type, resource_id)
    except RedisError as exc:
        raise _unavailable(exc) from None
    if resource is None:
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known here")
    patients = await canonical_patients(services.fhir, _patients_of([resource]))
    await access.record("read", patients, resource=resource_type)
    return FhirResponse(resource)
