"""The transaction Bundle the EHR push sends, and how its references find their targets.

A resource that carries an identifier is a conditional update on it (`PUT
Type?identifier=system|value`): the EHR creates it the first time, with an id
of its own, and replaces it after, so a retried or replayed batch creates
nothing twice and a resource that changed (an alert escalated or resolved, a
patient's details) reaches the EHR; a resource without one is a PUT of its own
id, idempotent too.

References follow whatever id the EHR assigns (:func:`_reference`): between
entries of one Bundle they are rewritten to the entries' `urn:uuid` fullUrls;
to a Patient or a Device in another Bundle they become conditional references
on its identifier (`Patient?identifier=system|value`), which the EHR resolves;
to anything else in another Bundle they keep the identifier the reference
carries alone (a logical reference).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from healthsync.errors import HealthSyncError
from healthsync.fhir.terminology import READING_ID_SYSTEM

# fullUrls are uuid5 of "<type>/<id>" in this namespace: the same resource gets
# the same fullUrl in every Bundle, whichever batch or process sends it.
_FULL_URL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:healthsync:fhir")
# Resources pushed before whatever refers to them (see _reference).
WRITTEN_FIRST = ("Patient", "Device")
# "Patient/<id>" -> the (system, value) identifier of that Patient (or Device).
Identifiers = Mapping[str, tuple[str, str]]


class EhrPushError(HealthSyncError):
    """The EHR's FHIR server did not accept a transaction Bundle.

    The message carries the HTTP status and the server's OperationOutcome
    diagnostics, never the resources sent.
    """

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


def full_url(resource: dict[str, Any]) -> str:
    """The Bundle fullUrl of a resource: `urn:uuid:` derived from its type and id."""
    return f"urn:uuid:{uuid.uuid5(_FULL_URL_NAMESPACE, resource_key(resource))}"


def resource_key(resource: dict[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if not rtype:
        raise EhrPushError("a resource without resourceType cannot be pushed")
    rid = resource.get("id")
    if rid:
        return f"{rtype}/{rid}"
    identifier = identifier_of(resource)
    if identifier is None:
        raise EhrPushError(f"a {rtype} with neither id nor identifier cannot be pushed")
    return f"{rtype}?identifier={identifier[0]}|{identifier[1]}"


def identifier_of(resource: dict[str, Any]) -> tuple[str, str] | None:
    """The identifier to match on: the reading id if the resource has one, else the first."""
    candidates = [
        (i["system"], i["value"])
        for i in resource.get("identifier") or []
        if i.get("system") and i.get("value")
    ]
    for system, value in candidates:
        if system == READING_ID_SYSTEM:
            return system, value
    return candidates[0] if candidates else None


def _token(system: str, value: str) -> str:
    """A FHIR token search value, escaped for the search syntax and then for a URL query."""
    for char in "\\|,$":
        value = value.replace(char, "\\" + char)
    return quote(f"{system}|{value}", safe=":/|")


def _with_references(value: Any, full_urls: dict[str, str], known: Identifiers) -> Any:
    """A copy of `value` whose references find their targets in the EHR, which assigned
    the ids of what it created: see :func:`_reference`."""
    if isinstance(value, dict):
        copy = {k: _with_references(v, full_urls, known) for k, v in value.items()}
        ref = value.get("reference")
        if isinstance(ref, str):
            found = _reference(ref, value.get("identifier"), full_urls, known)
            if found is None:
                del copy["reference"]
            else:
                copy["reference"] = found
        return copy
    if isinstance(value, list):
        return [_with_references(v, full_urls, known) for v in value]
    return value


def _reference(
    ref: str, identifier: Any, full_urls: dict[str, str], known: Identifiers
) -> str | None:
    """Where a reference points in the EHR; None to leave the target's identifier alone.

    A target in the same Bundle: its fullUrl. A Patient or Device in another Bundle: a
    conditional reference on its identifier (`known`), which the EHR resolves; they
    are pushed before what refers to them (fhir/step.py, and :meth:`EhrPushSink.flush`).
    Any other target in another Bundle (an alert's Observation, which comes on another
    topic, maybe later) is referred to by the identifier the reference carries alone,
    a logical reference, which cannot dangle.
    """
    found = full_urls.get(ref)
    if found is not None:
        return found
    rtype = ref.partition("/")[0]
    if rtype in WRITTEN_FIRST:
        target = known.get(ref)
        return ref if target is None else f"{rtype}?identifier={_token(*target)}"
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        return None
    return ref


def references(value: Any) -> Iterator[str]:
    """Every literal reference in `value`."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            yield ref
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def transaction_bundle(
    resources: Sequence[dict[str, Any]], known: Identifiers | None = None
) -> dict[str, Any]:
    """A FHIR transaction Bundle that stores `resources` as they are now, without duplicating
    any on a resend; `known` holds the identifiers of Patients and Devices they refer to."""
    full_urls = {f"{r['resourceType']}/{r['id']}": full_url(r) for r in resources if r.get("id")}
    entries = []
    for resource in resources:
        rtype = resource["resourceType"]
        body = _with_references(resource, full_urls, known or {})
        identifier = identifier_of(resource)
        if identifier is not None:
            # The EHR assigns the id of a created resource; ours is only the fullUrl's seed.
            body.pop("id", None)
            request = {"method": "PUT", "url": f"{rtype}?identifier={_token(*identifier)}"}
        else:
            request = {"method": "PUT", "url": f"{rtype}/{resource['id']}"}
        entries.append({"fullUrl": full_url(resource), "resource": body, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
