"""The FHIR R4 read API: metadata, read by id, and search over the resources in Redis.

A subset of the FHIR RESTful API that standard clients can use unchanged. The
search parameters each type accepts are declared once, in ``_SEARCHES``; the
CapabilityStatement is generated from the same table, so it lists exactly what
the server does. Anything else (an unknown parameter, a modifier, a bad value)
is refused with a 400 OperationOutcome rather than silently ignored, because
a client that thinks it filtered must not get unfiltered data.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthsync import __version__
from healthsync.api import auth
from healthsync.api.auth import Access
from healthsync.api.canonical import canonical_patients
from healthsync.domain.readings import isoformat_ms
from healthsync.store.fhir_queries import (
    FhirReader,
    Page,
    Position,
    Predicate,
    Resource,
    Search,
    SearchTooCostly,
    Window,
)

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
PREFIX = "/fhir"
# The FHIR id datatype; checked before an id reaches a Redis key name.
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_READABLE = ("Observation", "Patient", "Device", "Communication", "Flag", "RiskAssessment")
_DEFAULT_COUNT = 50
_MAX_COUNT = 1000
_DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")
_FHIR_PREFIXES = ("ne", "sa", "eb", "ap")
_JSON_FORMATS = ("json", "application/json", "application/fhir+json")
_SPEC = "http://hl7.org/fhir/SearchParameter/"


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class FhirError(StarletteHTTPException):
    """A request the FHIR API refuses; answered as an OperationOutcome."""

    def __init__(self, status_code: int, issue_code: str, diagnostics: str) -> None:
        super().__init__(status_code, diagnostics)
        self.issue_code = issue_code


def _invalid(diagnostics: str) -> FhirError:
    return FhirError(400, "invalid", diagnostics)


def operation_outcome(issue_code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue_code, "diagnostics": diagnostics}],
    }


_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    422: "invalid",
    503: "transient",
}


def is_fhir_request(request: Request) -> bool:
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(status_code: int, diagnostics: str, exc: Exception | None = None) -> Response:
    """An error under /fhir as the OperationOutcome FHIR clients expect."""
    if isinstance(exc, FhirError):
        code = exc.issue_code
    else:
        code = _ISSUE_CODES.get(status_code, "exception" if status_code >= 500 else "processing")
    headers = exc.headers if isinstance(exc, StarletteHTTPException) else None
    return FhirResponse(
        operation_outcome(code, diagnostics), status_code=status_code, headers=headers
    )


# Dates ---------------------------------------------------------------------------------

_DATE = re.compile(
    r"(?P<prefix>[a-z]{2})?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>Z|[+\- ]\d{2}:\d{2})?)?)?)?"
)


def _date_range(text: str) -> tuple[str, float, float]:
    """A date search value as (prefix, start, end): the epoch range its precision covers.

    `2026-11-27` covers that whole day, `2026-11-27T10:00Z` that minute. Without
    a time zone the value is taken as UTC, the zone every resource here is in. A
    space before the zone is a `+` that was not URL-encoded, as in a hand-typed URL.
    """
    match = _DATE.fullmatch(text)
    if match is None:
        raise _invalid(
            f"date {text!r} is not a FHIR date: expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss[.fff]]"
            "[Z|+hh:mm]]]], e.g. ge2026-11-27 or lt2026-11-27T10:00:00Z"
        )
    part = match.groupdict()
    prefix = part["prefix"] or "eq"
    if prefix not in _DATE_PREFIXES:
        hint = "is not supported" if prefix in _FHIR_PREFIXES else "is not a FHIR prefix"
        raise _invalid(f"date prefix {prefix!r} {hint}; use one of {', '.join(_DATE_PREFIXES)}")
    try:
        start, end = _bounds(int(match["year"]), part)
    except ValueError as exc:
        raise _invalid(f"date {text!r} is not a valid date: {exc}") from None
    return prefix, start, end


def _bounds(year: int, part: Mapping[str, str | None]) -> tuple[float, float]:
    if part["month"] is None:
        first = date(year, 1, 1)
        return _epoch(first), _epoch(date(year + 1, 1, 1))
    month = int(part["month"])
    if part["day"] is None:
        first = date(year, month, 1)
        after = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
        return _epoch(first), _epoch(after)
    day = date(year, month, int(part["day"]))
    if part["hour"] is None:
        return _epoch(day), _epoch(day + timedelta(days=1))
    stamp = datetime(
        year, month, day.day, int(part["hour"]), int(part["minute"] or 0), int(part["second"] or 0)
    )
    seconds = Fraction(calendar.timegm(stamp.timetuple())) - _offset(part["zone"])
    if part["second"] is None:
        step = Fraction(60)
    elif part["fraction"] is None:
        step = Fraction(1)
    else:
        digits = part["fraction"]
        step = Fraction(1, 10 ** len(digits))
        seconds += int(digits) * step
    # Exact arithmetic, one rounding: `...17.825` is the same float a writer stores.
    return float(seconds), float(seconds + step)


def _epoch(day: date) -> float:
    return float(calendar.timegm(day.timetuple()))


def _offset(zone: str | None) -> int:
    if zone is None or zone == "Z":
        return 0
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"time zone {zone} out of range")
    sign = -1 if zone[0] == "-" else 1
    return sign * (hours * 3600 + minutes * 60)


def _narrow(window: Window, prefix: str, start: float, end: float) -> Window:
    """FHIR prefix semantics against a resource time `t` and the value's range [start, end)."""
    if prefix == "eq":
        return window.narrow(start, end)
    if prefix == "ge":
        return window.narrow(start=start)
    if prefix == "gt":
        return window.narrow(start=end)
    if prefix == "le":
        return window.narrow(end=end)
    return window.narrow(end=start)  # lt


# Tokens and references ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A token search value: `code`, `system|code`, `|code` (no system) or `system|`."""

    system: str | None
    code: str | None

    @classmethod
    def parse(cls, name: str, text: str) -> Token:
        if "|" not in text:
            return cls(None, text)
        system, code = text.split("|", 1)
        if not system and not code:
            raise _invalid(f"{name}: {text!r} names neither a system nor a code")
        if "|" in code:
            raise _invalid(f"{name}: {text!r} has more than one '|'")
        return cls(system, code or None)

    def matches(self, coding: Mapping[str, Any]) -> bool:
        if self.code is not None and coding.get("code") != self.code:
            return False
        if self.system is None:
            return True
        if self.system == "":
            return "system" not in coding
        return coding.get("system") == self.system


def _codings(element: Any) -> list[Mapping[str, Any]]:
    """The codings of a CodeableConcept or a list of them."""
    concepts = element if isinstance(element, list) else [element]
    return [
        coding
        for concept in concepts
        if isinstance(concept, dict)
        for coding in concept.get("coding", ())
        if isinstance(coding, dict)
    ]


def _values(name: str, text: str) -> list[str]:
    values = text.split(",")
    if any(not v for v in values):
        raise _invalid(f"{name}: {text!r} has an empty value in its list")
    return values


def _patient_id(name: str, text: str) -> str:
    if "," in text:
        raise _invalid(f"{name}: one patient per search, got {text!r}")
    resource_id = text.removeprefix("Patient/")
    if "/" in resource_id:
        raise _invalid(f"{name}: {text!r} is not a Patient reference (Patient/ID or ID)")
    if not _ID.fullmatch(resource_id):
        raise _invalid(f"{name}: {resource_id!r} is not a FHIR id")
    return resource_id


# Search parameters ----------------------------------------------------------------------


@dataclass
class _Criteria:
    patients: set[str] = field(default_factory=set)
    window: Window = field(default_factory=Window)
    filters: list[Predicate] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter: how it appears in the CapabilityStatement and what it does."""

    name: str
    type: str
    documentation: str
    apply: Callable[[_Criteria, str, str], None]
    definition: str | None = None

    def capability(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.definition:
            entry["definition"] = self.definition
        entry["documentation"] = self.documentation
        return entry


def _patient(criteria: _Criteria, name: str, text: str) -> None:
    criteria.patients.add(_patient_id(name, text))


def _date(criteria: _Criteria, _name: str, text: str) -> None:
    if "," in text:
        raise _invalid(f"date: {text!r} is a list; repeat the parameter to combine dates")
    criteria.window = _narrow(criteria.window, *_date_range(text))


def _token_on(element: str) -> Callable[[_Criteria, str, str], None]:
    def apply(criteria: _Criteria, name: str, text: str) -> None:
        tokens = [Token.parse(name, value) for value in _values(name, text)]

        def match(resource: Resource) -> bool:
            codings = _codings(resource.get(element))
            return any(token.matches(c) for token in tokens for c in codings)

        criteria.filters.append(match)

    return apply


def _status(criteria: _Criteria, name: str, text: str) -> None:
    wanted = set(_values(name, text))
    criteria.filters.append(lambda resource: resource.get("status") in wanted)


_PATIENT_DOC = "Patient/ID or ID; one patient per search"
_SEARCHES: dict[str, dict[str, SearchParam]] = {
    "Observation": {
        p.name: p
        for p in (
            SearchParam("patient", "reference", _PATIENT_DOC, _patient, _SPEC + "clinical-patient"),
            SearchParam(
                "subject", "reference", _PATIENT_DOC, _patient, _SPEC + "Observation-subject"
            ),
            SearchParam(
                "code",
                "token",
                "system|code, code, |code or system|; a comma-separated list matches any",
                _token_on("code"),
                _SPEC + "clinical-code",
            ),
            SearchParam(
                "category",
                "token",
                "system|code or code, e.g. vital-signs; a comma-separated list matches any",
                _token_on("category"),
                _SPEC + "Observation-category",
            ),
            SearchParam(
                "date",
                "date",
                "prefixes eq (default), ge, gt, le, lt; partial dates cover their whole "
                "period; repeat to combine, e.g. date=ge2026-11-27&date=lt2026-11-28",
                _date,
                _SPEC + "clinical-date",
            ),
        )
    },
    "Communication": {
        p.name: p
        for p in (
            SearchParam(
                "patient", "reference", _PATIENT_DOC, _patient, _SPEC + "Communication-patient"
            ),
            SearchParam(
                "status",
                "token",
                "e.g. in-progress (open alert) or completed; a comma-separated list matches any",
                _status,
                _SPEC + "Communication-status",
            ),
        )
    },
    "Flag": {
        p.name: p
        for p in (
            SearchParam("patient", "reference", _PATIENT_DOC, _patient, _SPEC + "clinical-patient"),
            SearchParam(
                "status",
                "token",
                "active or inactive (not a standard Flag parameter)",
                _status,
            ),
        )
    },
    "RiskAssessment": {
        "patient": SearchParam(
            "patient", "reference", _PATIENT_DOC, _patient, _SPEC + "clinical-patient"
        ),
    },
}
_RESULT_DOC = (
    "Every search also takes _count (default 50, at most 1000) and _sort=-date (default, "
    "newest first) or _sort=date, and pages through `next` links. Unknown parameters, "
    "modifiers and chains are refused with 400."
)


@dataclass(frozen=True, slots=True)
class _ParsedSearch:
    search: Search
    search_patients: frozenset[str]

    @property
    def conflicting_patients(self) -> bool:
        return len(self.search_patients) > 1


def _parse_search(resource_type: str, params: list[tuple[str, str]]) -> _ParsedSearch:
    accepted = _SEARCHES[resource_type]
    criteria = _Criteria()
    count = _DEFAULT_COUNT
    newest_first = True
    after: Position | None = None
    for name, value in params:
        if value == "":
            continue  # FHIR servers ignore parameters without a value
        if name in accepted:
            accepted[name].apply(criteria, name, value)
        elif name == "_count":
            count = _count(value)
        elif name == "_sort":
            if value not in ("-date", "date"):
                raise _invalid(f"_sort: {value!r} is not supported; use -date or date")
            newest_first = value == "-date"
        elif name == "_cursor":
            after = _decode_cursor(value)
        elif name == "_format":
            if value not in _JSON_FORMATS:
                raise FhirError(406, "not-supported", f"_format {value!r}: only JSON is served")
        else:
            supported = ", ".join([*accepted, "_count", "_sort"])
            base = re.split(r"[:.]", name, maxsplit=1)[0]
            if base != name and base in accepted:
                raise _invalid(f"{name!r}: modifiers and chained parameters are not supported")
            raise _invalid(
                f"unknown search parameter {name!r} for {resource_type}; supported: {supported}"
            )
    filters = criteria.filters
    search = Search(
        resource_type=resource_type,
        patient=next(iter(criteria.patients), None),
        window=criteria.window,
        newest_first=newest_first,
        count=count,
        after=after,
        match=(lambda r: all(f(r) for f in filters)) if filters else None,
    )
    return _ParsedSearch(search, frozenset(criteria.patients))


def _count(value: str) -> int:
    if not value.isdecimal() or not value.isascii():
        raise _invalid(f"_count: {value!r} is not a whole number")
    count = int(value)
    if count > _MAX_COUNT:
        raise _invalid(f"_count: {count} is more than the maximum of {_MAX_COUNT}")
    return count


def _encode_cursor(position: Position) -> str:
    raw = orjson.dumps([position.time, position.resource_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(value: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        score, resource_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        score, resource_id = None, None
    if not isinstance(score, int | float) or not isinstance(resource_id, str):
        raise _invalid("_cursor: not a cursor this server issued; follow the `next` link")
    if not _ID.fullmatch(resource_id):
        raise _invalid("_cursor: not a cursor this server issued; follow the `next` link")
    return Position(float(score), resource_id)


# Documents ------------------------------------------------------------------------------


def capability_statement(base_url: str, published: float) -> dict[str, Any]:
    resources = []
    for resource_type in _READABLE:
        searches = _SEARCHES.get(resource_type)
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
            entry["documentation"] = _RESULT_DOC
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
                "documentation": "Resources from the recent window kept in Redis. " + _RESULT_DOC,
                "resource": resources,
            }
        ],
    }


def _searchset(request: Request, resource_type: str, page: Page) -> dict[str, Any]:
    links = [{"relation": "self", "url": str(request.url)}]
    if page.next is not None:
        following = request.url.include_query_params(_cursor=_encode_cursor(page.next))
        links.append({"relation": "next", "url": str(following)})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": isoformat_ms(time.time()),
        "total": page.total,
        "link": links,
    }
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


def fhir_router(reader: FhirReader) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["fhir"], default_response_class=FhirResponse)
    published = time.time()

    @router.get("/metadata", name="fhir_metadata", summary="CapabilityStatement")
    async def metadata(
        request: Request, _access: Annotated[Access, Depends(auth.authenticated)]
    ) -> FhirResponse:
        base = str(request.url_for("fhir_metadata")).removesuffix("/metadata")
        return FhirResponse(capability_statement(base, published))

    @router.get("/{resource_type}", name="fhir_search", summary="Search (searchset Bundle)")
    async def search(
        request: Request, resource_type: str, access: Annotated[Access, Depends(auth.fhir_reads)]
    ) -> FhirResponse:
        _check_type(resource_type)
        if resource_type not in _SEARCHES:
            raise FhirError(
                405,
                "not-supported",
                f"{resource_type} cannot be searched here; read it by id: {resource_type}/{{id}}",
            )
        parsed = _parse_search(resource_type, request.query_params.multi_items())
        if parsed.conflicting_patients:
            page = Page(0, [], None)  # two different patients: nothing matches both
        else:
            try:
                page = await reader.search(parsed.search)
            except SearchTooCostly as exc:
                raise FhirError(400, "too-costly", str(exc)) from None
            except RedisError as exc:
                raise _unavailable(exc) from None
        patients = _patients_of(page.resources) + sorted(parsed.search_patients)
        patients = await canonical_patients(reader, patients)
        await access.record("search", patients, resource=resource_type)
        return FhirResponse(_searchset(request, resource_type, page))

    @router.get("/{resource_type}/{resource_id}", name="fhir_read", summary="Read by id")
    async def read(
        resource_type: str, resource_id: str, access: Annotated[Access, Depends(auth.fhir_reads)]
    ) -> FhirResponse:
        _check_type(resource_type)
        if not _ID.fullmatch(resource_id):
            raise _invalid(f"{resource_id!r} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")
        try:
            resource = await reader.read(resource_type, resource_id)
        except RedisError as exc:
            raise _unavailable(exc) from None
        if resource is None:
            raise FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known here")
        patients = await canonical_patients(reader, _patients_of([resource]))
        await access.record("read", patients, resource=resource_type)
        return FhirResponse(resource)

    return router
