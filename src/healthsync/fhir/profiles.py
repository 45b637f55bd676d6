"""Checks that the FHIR resources HealthSync emits are what the profiles promise.

`fhir.resources` parses R4B structure (types, cardinality of the base spec,
id and dateTime formats) but enforces neither required code sets (a status
of "bogus" passes) nor profiles. :func:`check` adds both for what HealthSync
emits: the R4 (4.0.1) vital-signs profile invariants, and the required code
sets of the other resource types. :func:`validate` runs both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from healthsync.errors import HealthSyncError
from healthsync.fhir.terminology import LOINC, OBSERVATION_CATEGORY, PROFILE_BASE, UCUM

# Each vital-signs profile: the LOINC code it fixes, and the UCUM codes its valueQuantity
# may carry (None: the profile has no value, only components).
_VITAL_PROFILES: Final[dict[str, tuple[str, frozenset[str] | None]]] = {
    PROFILE_BASE + "heartrate": ("8867-4", frozenset({"/min"})),
    PROFILE_BASE + "oxygensat": ("2708-6", frozenset({"%"})),
    PROFILE_BASE + "bodytemp": ("8310-5", frozenset({"Cel", "[degF]"})),
    PROFILE_BASE + "resprate": ("9279-1", frozenset({"/min"})),
    PROFILE_BASE + "bp": ("85354-9", None),
}
VITAL_SIGNS_PROFILE: Final = PROFILE_BASE + "vitalsigns"
_BP_COMPONENTS: Final = {"8480-6": "systolic", "8462-4": "diastolic"}
_BP_UNIT: Final = "mm[Hg]"

_OBSERVATION_STATUS: Final = frozenset(
    {
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
_EVENT_STATUS: Final = frozenset(
    {
        "preparation",
        "in-progress",
        "not-done",
        "on-hold",
        "stopped",
        "completed",
        "entered-in-error",
        "unknown",
    }
)
# Required bindings the parser does not enforce: type -> (field, allowed codes, field required).
_CODED: Final[dict[str, tuple[tuple[str, frozenset[str], bool], ...]]] = {
    "Observation": (("status", _OBSERVATION_STATUS, True),),
    "RiskAssessment": (("status", _OBSERVATION_STATUS, True),),
    "Communication": (
        ("status", _EVENT_STATUS, True),
        ("priority", frozenset({"routine", "urgent", "asap", "stat"}), False),
    ),
    "Flag": (("status", frozenset({"active", "inactive", "entered-in-error"}), True),),
    "Device": (
        ("status", frozenset({"active", "inactive", "entered-in-error", "unknown"}), False),
    ),
    "Patient": (("gender", frozenset({"male", "female", "other", "unknown"}), False),),
}
_NEEDS_SUBJECT: Final = frozenset({"RiskAssessment", "Flag"})
_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DAY: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ZONE: Final = re.compile(r".*T.*(Z|[+-][0-9]{2}:[0-9]{2})")
_VALUE_KEYS: Final = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)


class FhirValidationError(HealthSyncError):
    """A resource failed validation; `problems` lists every reason."""

    def __init__(self, reference: str, problems: list[str]) -> None:
        super().__init__(f"{reference} is not valid FHIR: " + "; ".join(problems))
        self.reference = reference
        self.problems = problems


def reference_of(resource: Mapping[str, Any]) -> str:
    """``Type/id`` of a resource, with ``?`` for what is missing."""
    return f"{resource.get('resourceType', '?')}/{resource.get('id', '?')}"


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    codings = concept.get("coding")
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _has_code(concept: Any, system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code for c in _codings(concept))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _has_value(element: Mapping[str, Any]) -> bool:
    return any(key in element for key in _VALUE_KEYS)


def _check_quantity(
    where: str, element: Mapping[str, Any], units: Iterable[str], problems: list[str]
) -> None:
    quantity = element.get("valueQuantity")
    if not isinstance(quantity, dict):
        return
    if quantity.get("value") is None:
        problems.append(f"{where}.valueQuantity.value: required by the vital-signs profile")
    if quantity.get("system") != UCUM:
        problems.append(f"{where}.valueQuantity.system: must be {UCUM} (UCUM)")
    allowed = sorted(units)
    if quantity.get("code") not in allowed:
        problems.append(
            f"{where}.valueQuantity.code: {quantity.get('code')!r} is not the profile's UCUM code "
            + " or ".join(repr(u) for u in allowed)
        )


def _check_effective(resource: Mapping[str, Any], problems: list[str]) -> None:
    stamp = resource.get("effectiveDateTime")
    if stamp is None:
        period = resource.get("effectivePeriod")
        stamp = period.get("start") if isinstance(period, dict) else None
    if stamp is None:
        problems.append("Observation.effective[x]: required by the vital-signs profile")
        return
    if not isinstance(stamp, str) or not _DAY.match(stamp):
        problems.append(f"vs-1: effective time {stamp!r} is not precise to the day")
    elif "T" in stamp and not _ZONE.fullmatch(stamp):
        problems.append(f"Observation.effective[x]: {stamp!r} has a time but no time zone")


def _check_vital_signs(
    resource: Mapping[str, Any], profiles: list[str], problems: list[str]
) -> None:
    categories = _list(resource.get("category"))
    if not any(_has_code(c, OBSERVATION_CATEGORY, "vital-signs") for c in categories):
        problems.append(
            "Observation.category: no vital-signs coding "
            f"({OBSERVATION_CATEGORY}#vital-signs), required by the VSCat slice"
        )
    subject = resource.get("subject")
    reference = subject.get("reference", "") if isinstance(subject, dict) else ""
    if not str(reference).startswith("Patient/"):
        problems.append("Observation.subject: must reference a Patient")
    _check_effective(resource, problems)
    components = _list(resource.get("component"))
    _check_values(resource, components, problems)
    _check_vital_profiles(resource, profiles, components, problems)


def _check_values(resource: Mapping[str, Any], components: list[Any], problems: list[str]) -> None:
    """vs-2 and vs-3: a value, or the reason it is absent, on the resource and each component."""
    absent = not _has_value(resource) and "dataAbsentReason" not in resource
    if absent and not components and not resource.get("hasMember"):
        problems.append("vs-2: no value[x] and no dataAbsentReason")
    for n, component in enumerate(components):
        if not isinstance(component, dict):
            continue
        if not _has_value(component) and "dataAbsentReason" not in component:
            problems.append(f"vs-3: component[{n}] has no value[x] and no dataAbsentReason")


def _check_vital_profiles(
    resource: Mapping[str, Any], profiles: list[str], components: list[Any], problems: list[str]
) -> None:
    """The per-vital profiles the resource declares, or its LOINC code calls for."""
    code = resource.get("code")
    declared = [p for p in profiles if p in _VITAL_PROFILES]
    # A LOINC code with its own profile must declare it; HealthSync always does.
    implied = [p for p, (loinc, _) in _VITAL_PROFILES.items() if _has_code(code, LOINC, loinc)]
    for profile in implied:
        if profile not in declared:
            problems.append(f"Observation.meta.profile: its code calls for {profile}")
    for profile in dict.fromkeys(declared + implied):
        loinc, units = _VITAL_PROFILES[profile]
        name = profile.rsplit("/", 1)[1]
        if not _has_code(code, LOINC, loinc):
            problems.append(f"Observation.code: no LOINC {loinc} coding (the {name} profile)")
        if units is not None:
            if "valueQuantity" not in resource and "dataAbsentReason" not in resource:
                problems.append(f"Observation.valueQuantity: required by the {name} profile")
            _check_quantity("Observation", resource, units, problems)
        else:
            _check_blood_pressure(resource, components, problems)


def _check_blood_pressure(
    resource: Mapping[str, Any], components: list[Any], problems: list[str]
) -> None:
    present = [key for key in _VALUE_KEYS if key in resource]
    if present:
        problems.append(
            f"Observation.{present[0]}: the bp profile allows no value, only components"
        )
    if len(components) < 2:
        problems.append(f"Observation.component: bp needs 2..* components, has {len(components)}")
    for loinc, name in _BP_COMPONENTS.items():
        matching = [
            (n, c)
            for n, c in enumerate(components)
            if isinstance(c, dict) and _has_code(c.get("code"), LOINC, loinc)
        ]
        if not matching:
            problems.append(f"Observation.component: no {name} component (LOINC {loinc})")
        for n, component in matching:
            _check_quantity(f"Observation.component[{n}]", component, (_BP_UNIT,), problems)


def check(resource: Mapping[str, Any]) -> list[str]:
    """What is wrong with `resource` by the project's rules; empty if nothing is."""
    problems: list[str] = []
    kind = resource.get("resourceType")
    if not isinstance(kind, str):
        return ["resourceType: missing"]
    rid = resource.get("id")
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        problems.append(f"{kind}.id: {rid!r} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")
    _check_coded(kind, resource, problems)
    if kind in _NEEDS_SUBJECT and not isinstance(resource.get("subject"), dict):
        problems.append(f"{kind}.subject: required")
    if kind == "Observation":
        meta = resource.get("meta")
        profiles = [str(p) for p in _list(meta.get("profile"))] if isinstance(meta, dict) else []
        vital = any(p in _VITAL_PROFILES or p == VITAL_SIGNS_PROFILE for p in profiles)
        categories = _list(resource.get("category"))
        if vital or any(_has_code(c, OBSERVATION_CATEGORY, "vital-signs") for c in categories):
            _check_vital_signs(resource, profiles, problems)
    if kind == "Bundle":
        # A reading's Observations travel as one Bundle: each must hold on its own.
        for n, entry in enumerate(_list(resource.get("entry"))):
            inner = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(inner, dict):
                problems.append(f"Bundle.entry[{n}].resource: required")
                continue
            problems.extend(f"Bundle.entry[{n}]: {problem}" for problem in check(inner))
    return problems


def _check_coded(kind: str, resource: Mapping[str, Any], problems: list[str]) -> None:
    """Elements whose codes come from a fixed set: present when required, and from the set."""
    for name, allowed, required in _CODED.get(kind, ()):
        value = resource.get(name)
        if (value is not None or required) and value not in allowed:
            problems.append(f"{kind}.{name}: {value!r} is not one of {', '.join(sorted(allowed))}")


def _parse_problems(resource: Mapping[str, Any]) -> list[str]:
    """What `fhir.resources` (R4B models) finds wrong with `resource`."""
    # Imported here: the models take a while to load and only validation needs them.
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    kind = str(resource.get("resourceType"))
    try:
        model = get_fhir_model_class(kind)
    except ValueError:
        return [f"resourceType: {kind!r} is not an R4B resource type"]
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        return [
            f"{kind}.{'.'.join(str(p) for p in error['loc']) or '(resource)'}: {error['msg']}"
            for error in exc.errors()
        ]
    return []


def validate(resource: Mapping[str, Any]) -> None:
    """Parse `resource` with the R4B models and run :func:`check`; raise listing every problem."""
    problems = check(resource)
    if "resourceType: missing" not in problems:
        problems.extend(_parse_problems(resource))
    if problems:
        raise FhirValidationError(reference_of(resource), problems)


def read_resources(text: str) -> list[dict[str, Any]]:
    """Resources in `text`: one JSON object, an array of them, or JSON lines.

    A Bundle stands for its entries' resources. Raises ValueError on text that
    is none of these.
    """
    try:
        documents: list[Any] = [orjson.loads(text)]
    except orjson.JSONDecodeError:
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    documents.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise ValueError(f"line {number}: not JSON ({exc})") from None
    resources: list[dict[str, Any]] = []
    pending = list(reversed(documents))
    while pending:
        document = pending.pop()
        if isinstance(document, list):
            pending.extend(reversed(document))
        elif isinstance(document, dict) and document.get("resourceType") == "Bundle":
            entries = [
                e.get("resource") for e in _list(document.get("entry")) if isinstance(e, dict)
            ]
            pending.extend(reversed([e for e in entries if e is not None]))
        elif isinstance(document, dict):
            resources.append(document)
        else:
            raise ValueError(f"expected a JSON object or array, found {type(document).__name__}")
    return resources
