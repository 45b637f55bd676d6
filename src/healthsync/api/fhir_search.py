"""FHIR search parameters: what each resource type accepts and how a query string parses.

The parameters each type accepts are declared once, in :data:`SEARCHES`; the
CapabilityStatement is generated from the same table, so it lists exactly what
the server does. Anything else (an unknown parameter, a modifier, a bad value)
is refused with a 400 OperationOutcome rather than silently ignored, because
a client that thinks it filtered must not get unfiltered data.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from healthsync.api.fhir import FHIR_ID, FhirError, invalid
from healthsync.api.fhir_dates import date_range, narrow
from healthsync.store.fhir_order import Position, Window
from healthsync.store.fhir_queries import Predicate, Resource, Search

_DEFAULT_COUNT = 50
_MAX_COUNT = 1000
_JSON_FORMATS = ("json", "application/json", "application/fhir+json")
_SPEC = "http://hl7.org/fhir/SearchParameter/"


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
            raise invalid(f"{name}: {text!r} names neither a system nor a code")
        if "|" in code:
            raise invalid(f"{name}: {text!r} has more than one '|'")
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
        raise invalid(f"{name}: {text!r} has an empty value in its list")
    return values


def _patient_id(name: str, text: str) -> str:
    if "," in text:
        raise invalid(f"{name}: one patient per search, got {text!r}")
    resource_id = text.removeprefix("Patient/")
    if "/" in resource_id:
        raise invalid(f"{name}: {text!r} is not a Patient reference (Patient/ID or ID)")
    if not FHIR_ID.fullmatch(resource_id):
        raise invalid(f"{name}: {resource_id!r} is not a FHIR id")
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
        raise invalid(f"date: {text!r} is a list; repeat the parameter to combine dates")
    criteria.window = narrow(criteria.window, *date_range(text))


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
SEARCHES: dict[str, dict[str, SearchParam]] = {
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
RESULT_DOC = (
    "Every search also takes _count (default 50, at most 1000) and _sort=-date (default, "
    "newest first) or _sort=date, and pages through `next` links. Unknown parameters, "
    "modifiers and chains are refused with 400."
)


@dataclass(frozen=True, slots=True)
class ParsedSearch:
    search: Search
    search_patients: frozenset[str]

    @property
    def conflicting_patients(self) -> bool:
        return len(self.search_patients) > 1


def parse_search(resource_type: str, params: list[tuple[str, str]]) -> ParsedSearch:
    accepted = SEARCHES[resource_type]
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
            newest_first = _newest_first(value)
        elif name == "_cursor":
            after = _decode_cursor(value)
        elif name == "_format":
            _check_format(value)
        else:
            raise _unknown(resource_type, name)
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
    return ParsedSearch(search, frozenset(criteria.patients))


def _newest_first(sort: str) -> bool:
    if sort not in ("-date", "date"):
        raise invalid(f"_sort: {sort!r} is not supported; use -date or date")
    return sort == "-date"


def _check_format(value: str) -> None:
    # A space is a `+` that was not URL-encoded, as in a hand-typed URL.
    if value.replace(" ", "+") not in _JSON_FORMATS:
        raise FhirError(406, "not-supported", f"_format {value!r}: only JSON is served")


def _unknown(resource_type: str, name: str) -> FhirError:
    accepted = SEARCHES[resource_type]
    supported = ", ".join([*accepted, "_count", "_sort"])
    base = re.split(r"[:.]", name, maxsplit=1)[0]
    if base != name and base in accepted:
        return invalid(f"{name!r}: modifiers and chained parameters are not supported")
    return invalid(f"unknown search parameter {name!r} for {resource_type}; supported: {supported}")


def _count(value: str) -> int:
    if not value.isdecimal() or not value.isascii():
        raise invalid(f"_count: {value!r} is not a whole number")
    # Python will not read an integer of thousands of digits; none of them is allowed anyway.
    count = int(value) if len(value) <= len(str(_MAX_COUNT)) else _MAX_COUNT + 1
    if count > _MAX_COUNT:
        shown = value if len(value) <= 20 else f"{value[:20]}... ({len(value)} digits)"
        raise invalid(f"_count: {shown} is more than the maximum of {_MAX_COUNT}")
    return count


def encode_cursor(position: Position) -> str:
    raw = orjson.dumps([position.time, position.resource_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(value: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        score, resource_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        score, resource_id = None, None
    if not isinstance(score, int | float) or not isinstance(resource_id, str):
        raise invalid("_cursor: not a cursor this server issued; follow the `next` link")
    if not FHIR_ID.fullmatch(resource_id):
        raise invalid("_cursor: not a cursor this server issued; follow the `next` link")
    return Position(float(score), resource_id)
