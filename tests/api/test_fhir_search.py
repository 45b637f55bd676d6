"""FHIR searches by patient, code, category, date and status, served by a real
API process over a real redis-server seeded as in tests/api/fhir_seed.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.api.fhir_seed import (
    BP,
    CATEGORY,
    HR,
    LOINC,
    RR,
    SPO2,
    TEMP,
    Served,
    assert_outcome,
    at,
    served,
)

__all__ = ["served"]  # a fixture, used by name


# Observation search ---------------------------------------------------------------------


def test_patient_search_returns_that_patients_observations_newest_first(served: Served) -> None:
    body = served.bundle("/fhir/Observation", patient="P-B", _count=1000)
    Bundle.model_validate(body)
    expected = served.seed.expected("Observation", lambda s: s.patient == "P-B")
    assert len(expected) == 40
    assert [e["resource"]["id"] for e in body["entry"]] == expected
    assert body["total"] == 40
    for entry in body["entry"]:
        assert entry["fullUrl"] == f"{served.base}/fhir/Observation/{entry['resource']['id']}"
        assert entry["search"] == {"mode": "match"}
        assert entry["resource"]["subject"] == {"reference": "Patient/P-B"}
    [self_link] = body["link"]
    assert self_link["relation"] == "self"
    assert self_link["url"].startswith(served.base + "/fhir/Observation?")
    assert "patient=P-B" in self_link["url"]


def test_subject_and_patient_accept_a_reference_or_an_id(served: Served) -> None:
    expected = served.seed.expected("Observation", lambda s: s.patient == "P-A")
    for params in (
        {"patient": "P-A"},
        {"patient": "Patient/P-A"},
        {"subject": "P-A"},
        {"subject": "Patient/P-A"},
        {"subject": "Patient/P-A", "patient": "P-A"},
    ):
        assert served.ids("/fhir/Observation", _count=1000, **params) == expected, params
    # Two different patients at once: nothing matches both.
    assert served.bundle("/fhir/Observation", patient="P-A", subject="P-B")["total"] == 0
    assert served.bundle("/fhir/Observation", patient="P-NOBODY")["total"] == 0


def test_without_a_patient_every_patients_observations_are_searched(served: Served) -> None:
    ids, pages = served.every_page("/fhir/Observation", _count=1000)
    assert ids == served.seed.expected("Observation")
    assert pages[0]["total"] == served.seed.count("Observation") == 30 * 4 + 1 + 20 * 2


@pytest.mark.parametrize(
    ("code", "wanted"),
    [
        (HR, {(LOINC, HR)}),
        (f"{LOINC}|{HR}", {(LOINC, HR)}),
        (f"{HR},{SPO2}", {(LOINC, HR), (LOINC, SPO2)}),
        (f"{LOINC}|{BP},{LOINC}|{RR}", {(LOINC, BP), (LOINC, RR)}),
        (f"{LOINC}|", {(LOINC, c) for c in (HR, SPO2, TEMP, RR, BP)}),
        (f"|{HR}", set()),  # the code without a system: these all have one
        (f"http://snomed.info/sct|{HR}", set()),
        ("8480-6", set()),  # systolic is a component of the panel, not its code
    ],
)
def test_code_token_search(served: Served, code: str, wanted: set[tuple[str, str]]) -> None:
    expected = served.seed.expected("Observation", lambda s: bool(s.codes() & wanted))
    assert served.ids("/fhir/Observation", code=code, _count=1000) == expected
    with_patient = served.seed.expected(
        "Observation", lambda s: bool(s.codes() & wanted) and s.patient == "P-A"
    )
    assert served.ids("/fhir/Observation", code=code, patient="P-A", _count=1000) == with_patient


def test_repeated_code_parameters_must_all_match(served: Served) -> None:
    assert served.ids("/fhir/Observation", code=[HR, f"{LOINC}|{HR}"], patient="P-B") == (
        served.seed.expected(
            "Observation", lambda s: s.patient == "P-B" and (LOINC, HR) in s.codes()
        )
    )
    assert served.bundle("/fhir/Observation", code=[HR, SPO2])["total"] == 0


@pytest.mark.parametrize(
    ("category", "matches"),
    [
        ("vital-signs", True),
        (f"{CATEGORY}|vital-signs", True),
        ("laboratory,vital-signs", True),
        ("laboratory", False),
        ("http://example.org/other|vital-signs", False),
    ],
)
def test_category_token_search(served: Served, category: str, matches: bool) -> None:
    body = served.bundle("/fhir/Observation", category=category, patient="P-B", _count=1000)
    assert body["total"] == (40 if matches else 0)


def test_the_news2_score_is_the_survey_observation(served: Served) -> None:
    [score] = served.bundle("/fhir/Observation", category="survey")["entry"]
    assert score["resource"]["code"]["coding"][0]["code"] == "1104051000000101"
    assert served.ids("/fhir/Observation", code="http://snomed.info/sct|1104051000000101") == [
        score["resource"]["id"]
    ]
    vital_signs = served.bundle("/fhir/Observation", category="vital-signs", _count=0)["total"]
    assert vital_signs == served.seed.count("Observation") - 1


@pytest.mark.parametrize(
    ("dates", "keep"),
    [
        # Partial dates cover their whole period.
        (["2026-11-27"], lambda t: at("2026-11-27T00:00Z") <= t < at("2026-11-28T00:00Z")),
        (["eq2026-11-28"], lambda t: at("2026-11-28T00:00Z") <= t < at("2026-11-29T00:00Z")),
        (["2026-11"], lambda t: at("2026-11-01T00:00Z") <= t < at("2026-12-01T00:00Z")),
        (["2026"], lambda t: True),
        (["2025"], lambda t: False),
        (["ge2026-11-28"], lambda t: t >= at("2026-11-28T00:00Z")),
        (["gt2026-11-27"], lambda t: t >= at("2026-11-28T00:00Z")),
        (["lt2026-11-28"], lambda t: t < at("2026-11-28T00:00Z")),
        (["le2026-11-27"], lambda t: t < at("2026-11-28T00:00Z")),
        # Instants: the value's precision is its range.
        (["eq2026-11-27T22:05:00.250Z"], lambda t: t == at("2026-11-27T22:05:00.250Z")),
        (["2026-11-27T22:05:00Z"], lambda t: t == at("2026-11-27T22:05:00.250Z")),
        (["2026-11-27T22:05Z"], lambda t: t == at("2026-11-27T22:05:00.250Z")),
        (["gt2026-11-27T22:05:00.250Z"], lambda t: t > at("2026-11-27T22:05:00.250Z")),
        (["ge2026-11-27T22:05:00.250Z"], lambda t: t >= at("2026-11-27T22:05:00.250Z")),
        (["lt2026-11-27T22:05:00.250Z"], lambda t: t < at("2026-11-27T22:05:00.250Z")),
        (["le2026-11-27T22:05:00.250Z"], lambda t: t <= at("2026-11-27T22:05:00.250Z")),
        (["gt2026-11-27T22:05:00Z"], lambda t: t >= at("2026-11-27T22:05:01Z")),
        # Up to nine digits, as FHIR allows: finer than a float of epoch seconds holds.
        (["eq2026-11-27T22:05:00.250000000Z"], lambda t: t == at("2026-11-27T22:05:00.250Z")),
        (["le2026-11-27T22:05:00.250000000Z"], lambda t: t <= at("2026-11-27T22:05:00.250Z")),
        (["gt2026-11-27T22:05:00.250000000Z"], lambda t: t > at("2026-11-27T22:05:00.250Z")),
        (["lt2026-11-27T22:05:00.2500004Z"], lambda t: t <= at("2026-11-27T22:05:00.250Z")),
        (["ge2026-11-27T22:05:00.2500004Z"], lambda t: t > at("2026-11-27T22:05:00.250Z")),
        (["lt2026-11-28T00:00:00Z"], lambda t: t < at("2026-11-28T00:00Z")),
        (["ge2026-11-28T00:00:00.000Z"], lambda t: t >= at("2026-11-28T00:00Z")),
        # A time zone moves the instant; no zone means UTC.
        (["ge2026-11-28T01:00:00+01:00"], lambda t: t >= at("2026-11-28T00:00Z")),
        (["lt2026-11-27T20:00:00-02:30"], lambda t: t < at("2026-11-27T22:30Z")),
        (["ge2026-11-28T00:00:00"], lambda t: t >= at("2026-11-28T00:00Z")),
        # Repeated: all must hold.
        (
            ["ge2026-11-27T23:00Z", "lt2026-11-28T00:01Z"],
            lambda t: at("2026-11-27T23:00Z") <= t < at("2026-11-28T00:01Z"),
        ),
        (["ge2026-11-28", "lt2026-11-28"], lambda t: False),
    ],
)
def test_date_search_with_prefixes(
    served: Served, dates: list[str], keep: Callable[[float], bool]
) -> None:
    expected = served.seed.expected("Observation", lambda s: keep(s.time))
    ids, pages = served.every_page("/fhir/Observation", date=dates, _count=1000)
    assert ids == expected
    assert pages[0]["total"] == len(expected)
    for_patient = served.seed.expected("Observation", lambda s: keep(s.time) and s.patient == "P-A")
    assert served.ids("/fhir/Observation", date=dates, patient="P-A", _count=1000) == for_patient


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("name=Ada", "unknown search parameter 'name'"),
        ("_id=a01-bp", "unknown search parameter '_id'"),
        ("_include=Observation:subject", "unknown search parameter '_include'"),
        ("code:text=heart", "modifiers and chained parameters are not supported"),
        ("subject.name=Ada", "modifiers and chained parameters are not supported"),
        ("date=yesterday", "is not a FHIR date"),
        ("date=2026-13-01", "is not a valid date"),
        ("date=2026-02-30", "is not a valid date"),
        ("date=2026-11-27T25:00Z", "is not a valid date"),
        ("date=2026-11-27T10:00+15:00", "is not a valid date"),
        ("date=26-11-27", "is not a FHIR date"),
        ("date=ne2026-11-27", "date prefix 'ne' is not supported"),
        ("date=ap2026-11-27", "date prefix 'ap' is not supported"),
        ("date=xx2026-11-27", "date prefix 'xx' is not a FHIR prefix"),
        ("date=>2026-11-27", "is not a FHIR date"),
        ("date=ge2026-11-27,lt2026-11-28", "repeat the parameter"),
        ("_count=abc", "_count: 'abc' is not a whole number"),
        ("_count=-1", "_count: '-1' is not a whole number"),
        ("_count=1001", "more than the maximum of 1000"),
        ("_sort=-_lastUpdated", "_sort: '-_lastUpdated' is not supported"),
        ("_cursor=not-a-cursor", "follow the `next` link"),
        ("patient=P-A,P-B", "one patient per search"),
        ("subject=Device/mon-A", "not a Patient reference"),
        ("patient=P_A", "is not a FHIR id"),
        ("code=a|b|c", "more than one '|'"),
        ("code=|", "names neither a system nor a code"),
        ("category=vital-signs,", "empty value"),
    ],
)
def test_bad_search_requests_are_400_with_the_reason(
    served: Served, query: str, reason: str
) -> None:
    assert_outcome(served.http.get(f"/fhir/Observation?{query}"), 400, "invalid", reason)


def test_a_zone_offset_whose_plus_was_not_url_encoded_still_counts(served: Served) -> None:
    typed = served.http.get("/fhir/Observation?date=ge2026-11-28T01:00:00+01:00&_count=0")
    encoded = served.bundle("/fhir/Observation", date="ge2026-11-28T01:00:00+01:00", _count=0)
    assert (
        typed.json()["total"]
        == encoded["total"]
        == served.seed.count("Observation", lambda s: s.time >= at("2026-11-28T00:00Z"))
    )


def test_json_formats_are_served_typed_or_encoded_and_others_are_406(served: Served) -> None:
    for typed in ("json", "application/json", "application/fhir+json", "application/fhir%2Bjson"):
        answer = served.http.get(f"/fhir/Observation?_format={typed}&_count=0")
        assert answer.status_code == 200, (typed, answer.text)
        assert answer.json()["total"] == 161
    for other in ("xml", "application/fhir+xml", "turtle"):
        assert_outcome(
            served.http.get(f"/fhir/Observation?_format={other}"),
            406,
            "not-supported",
            "only JSON is served",
        )


def test_parameters_without_a_value_are_ignored(served: Served) -> None:
    assert served.bundle("/fhir/Observation", code="", _count=0)["total"] == 161


# Other searches -------------------------------------------------------------------------


def test_communication_search_by_patient_and_status(served: Served) -> None:
    seed = served.seed
    assert served.ids("/fhir/Communication", patient="P-A") == ["al0", "al1"]
    assert served.ids("/fhir/Communication", patient="Patient/P-A", status="in-progress") == ["al0"]
    assert served.ids("/fhir/Communication", status="in-progress") == ["al2", "al0"]
    assert served.ids("/fhir/Communication", status="completed,in-progress", _sort="date") == (
        seed.expected("Communication", newest_first=False)
    )
    assert served.ids("/fhir/Communication", patient="P-B", status="completed") == []
    assert_outcome(served.get("/fhir/Communication", code=HR), 400, "invalid", "'code'")
    body = served.bundle("/fhir/Communication", patient="P-B")
    assert body["entry"][0]["fullUrl"] == f"{served.base}/fhir/Communication/al2"


def test_flag_search_by_patient_and_status(served: Served) -> None:
    assert served.ids("/fhir/Flag", patient="P-A") == ["al0", "al1"]
    assert served.ids("/fhir/Flag", patient="P-A", status="active") == ["al0"]
    assert served.ids("/fhir/Flag", status="inactive") == ["al1"]
    ids, pages = served.every_page("/fhir/Flag", _count=1)
    assert ids == served.seed.expected("Flag") and len(pages) == 3


def test_risk_assessment_search_by_patient(served: Served) -> None:
    assert served.ids("/fhir/RiskAssessment", patient="P-A") == served.seed.expected(
        "RiskAssessment"
    )
    assert len(served.seed.expected("RiskAssessment")) == 1
    assert served.ids("/fhir/RiskAssessment", patient="P-B") == []
    assert_outcome(served.get("/fhir/RiskAssessment", date="2026"), 400, "invalid", "'date'")
