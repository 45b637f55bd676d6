"""Every resource HealthSync emits validates; each profile check rejects what it should."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from healthsync.cli import main
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.fhir.observations import observations_for, unbundled
from healthsync.fhir.profiles import (
    FhirValidationError,
    check,
    read_resources,
    validate,
)
from healthsync.fhir.step import FhirResources
from healthsync.fhir.terminology import Resource
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from tests.fhir.test_resources import DEMOGRAPHICS, TS

# Alerts open and resolve on one sample here: these tests are about the resources, not timing.
IMMEDIATE = AnomalySettings(persist_s=0, persist_readings=1, resolve_hold_s=0, max_jump={})


def emitted() -> list[Resource]:
    """What the processor's steps make of a few readings: every resource type it emits."""
    readings = [
        Reading(
            "r1",
            "mon_1",  # not a FHIR id: replaced by a digest
            "P-1",
            TS,
            TS,
            {
                "heart_rate": 78,
                "spo2": 84,
                "temp": 36.9,
                "resp_rate": 18,
                "bp_sys": 120,
                "bp_dia": 80,
            },
            1,
            False,
            "A",
            DEMOGRAPHICS,
        ),
        Reading("r2", "mon_1", "P-1", TS + 5, TS + 5, {"spo2": 97, "bp_sys": 85}),
        Reading("r3", "nurse-1", "ward:7", TS + 6, TS + 6, {"heart_rate": 150}, None, True, "V"),
    ]
    batch = Batch(readings)
    for step in (
        AnomalyEngine(IMMEDIATE),
        News2Scores(lambda patients: {}, 900),
        FhirResources("urn:oid:2.16.840.1.113883.19.5"),
    ):
        step.process(batch)
    bundles = [orjson.loads(bundle.json) for bundle in batch.bundles]
    return [*(resource for _, resource in batch.resources), *bundles]


def test_every_emitted_resource_validates() -> None:
    resources = emitted()
    assert {r["resourceType"] for r in resources} == {
        "Patient",
        "Device",
        "Bundle",  # each reading's vital-sign Observations
        "Observation",  # NEWS2
        "RiskAssessment",
        "Communication",
        "Flag",
    }
    assert {r["resourceType"] for r in unbundled(resources)} >= {"Observation"}
    for resource in resources:
        validate(resource)  # raises, listing the problems, if not
    for resource in unbundled(resources):
        validate(resource)
    statuses = {(r["resourceType"], r["status"]) for r in resources if "status" in r}
    assert {("Communication", "completed"), ("Flag", "inactive"), ("Flag", "active")} <= statuses


def observation(**vitals: float) -> Resource:
    [resource] = observations_for(Reading("r", "d", "P", TS, TS, vitals))
    return copy.deepcopy(resource)


Breaker = Callable[[Resource], None]


def _drop(*path: str | int) -> Breaker:
    def apply(resource: Resource) -> None:
        target: Any = resource
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


def _set(value: Any, *path: str | int) -> Breaker:
    def apply(resource: Resource) -> None:
        target: Any = resource
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


BP: dict[str, float] = {"bp_sys": 120, "bp_dia": 80}
HR: dict[str, float] = {"heart_rate": 70}

# rule -> (vitals of a valid Observation, how to break it, what check() must say)
BROKEN: dict[str, tuple[dict[str, float], Breaker, str]] = {
    "category slice": (HR, _set([{"text": "vitals"}], "category"), "no vital-signs coding"),
    "LOINC code of the profile": (HR, _set("9279-1", "code", "coding", 0, "code"), "LOINC 8867-4"),
    "SpO2 needs 2708-6": (
        {"spo2": 95},
        _set([{"system": "http://loinc.org", "code": "59408-5"}], "code", "coding"),
        "LOINC 2708-6",
    ),
    "profile declared for the code": (HR, _set({"profile": []}, "meta"), "calls for"),
    "UCUM system": (HR, _set("http://example.org/units", "valueQuantity", "system"), "(UCUM)"),
    "UCUM code of the profile": (
        {"temp": 37},
        _set("K", "valueQuantity", "code"),
        "not the profile's UCUM code",
    ),
    "BP component UCUM code": (
        BP,
        _set("cm[Hg]", "component", 0, "valueQuantity", "code"),
        "component[0].valueQuantity.code",
    ),
    "vs-1 day precision": (HR, _set("2026-11", "effectiveDateTime"), "vs-1"),
    "effective time zone": (HR, _set("2026-11-27T13:45:17", "effectiveDateTime"), "time zone"),
    "effective required": (HR, _drop("effectiveDateTime"), "effective[x]: required"),
    "vs-2 value or absent reason": (HR, _drop("valueQuantity"), "vs-2"),
    "vs-3 component value or absent reason": (BP, _drop("component", 1, "valueQuantity"), "vs-3"),
    "BP components 2..*": (BP, lambda r: r["component"].pop(), "2..* components"),
    "BP needs a systolic": (
        BP,
        _set("8462-4", "component", 0, "code", "coding", 0, "code"),
        "no systolic component",
    ),
    "BP has no valueQuantity": (
        BP,
        _set(
            {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org"}, "valueQuantity"
        ),
        "allows no value",
    ),
    "subject is a Patient": (HR, _set({"reference": "Group/g1"}, "subject"), "reference a Patient"),
    "status code": (HR, _set("done", "status"), "Observation.status"),
    "FHIR id": (HR, _set("r_1-heart_rate", "id"), "not a FHIR id"),
}


@pytest.mark.parametrize("rule", list(BROKEN))
def test_each_check_rejects_a_broken_resource(rule: str) -> None:
    vitals, breaker, expected = BROKEN[rule]
    resource = observation(**vitals)
    assert check(resource) == [], "the unbroken resource passes"
    breaker(resource)
    problems = check(resource)
    assert any(expected in p for p in problems), problems
    with pytest.raises(FhirValidationError):
        validate(resource)


def by_type(kind: str) -> Resource:
    return copy.deepcopy(next(r for r in emitted() if r["resourceType"] == kind))


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("Communication", "status", "sent"),
        ("Communication", "priority", "high"),
        ("Flag", "status", "open"),
        ("RiskAssessment", "status", "done"),
        ("Patient", "gender", "f"),
        ("Device", "status", "on"),
    ],
)
def test_codes_the_parser_lets_through_are_rejected(kind: str, field: str, value: str) -> None:
    resource = by_type(kind)
    resource[field] = value
    [problem] = check(resource)
    assert problem.startswith(f"{kind}.{field}: '{value}' is not one of")


def test_validate_reports_the_parsers_problems_and_the_checks_together() -> None:
    resource = observation(heart_rate=70)
    resource["valueQuantity"]["value"] = "fast"  # the R4B model rejects this
    resource["status"] = "done"  # only the project's check rejects this
    with pytest.raises(FhirValidationError) as failure:
        validate(resource)
    assert failure.value.reference == "Observation/r-heart-rate"
    assert any(p.startswith("Observation.status") for p in failure.value.problems)
    assert any("valueQuantity.value" in p for p in failure.value.problems)
    with pytest.raises(FhirValidationError, match="not an R4B resource type"):
        validate({"resourceType": "Gadget", "id": "g"})


def test_read_resources_takes_an_object_an_array_json_lines_or_a_bundle() -> None:
    a, b = {"resourceType": "Patient", "id": "a"}, {"resourceType": "Patient", "id": "b"}
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": b}]}
    assert read_resources(orjson.dumps(a).decode()) == [a]
    assert read_resources(orjson.dumps([a, b]).decode()) == [a, b]
    assert read_resources(f"{orjson.dumps(a).decode()}\n\n{orjson.dumps(b).decode()}\n") == [a, b]
    assert read_resources(orjson.dumps(bundle).decode()) == [b]
    with pytest.raises(ValueError, match="line 2"):
        read_resources('{"resourceType": "Patient", "id": "a"}\n{oops\n')


def test_fhir_validate_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.ndjson"
    good.write_bytes(b"\n".join(orjson.dumps(r) for r in emitted()))
    assert main(["fhir-validate", str(good)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # A Bundle stands for its entries (read_resources): one line per resource inside.
    resources = list(unbundled(emitted()))
    assert len(lines) == len(resources) and all(line.startswith("ok ") for line in lines)
    assert "ok Observation/r1-heart-rate" in lines

    broken = observation(heart_rate=70)
    broken["category"] = []
    monkeypatch.setattr("sys.stdin", io.StringIO(orjson.dumps([broken]).decode()))
    assert main(["fhir-validate", "-"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("fail Observation/r-heart-rate\n  Observation.category: no vital-signs")

    assert main(["fhir-validate", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err


def test_a_reading_with_demographics_has_a_valid_patient() -> None:
    [patient] = [r for r in emitted() if r["resourceType"] == "Patient" and r["id"] == "P-1"]
    validate(patient)
    patient_only_id = replace(
        Reading("x", "d", "P-2", TS, TS, {"heart_rate": 70}), patient={"gender": "unknown"}
    )
    batch = Batch([patient_only_id])
    FhirResources("urn:x").process(batch)
    for _, resource in batch.resources:
        validate(resource)
