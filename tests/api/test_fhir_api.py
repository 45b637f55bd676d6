"""The FHIR read API, served by a real API process over a real redis-server.

Redis is seeded with resources from the project's builders, written in the
layout of :class:`healthsync.names.RedisKeys`; expected results are computed
from the seed in the test, not by the code under test. The last test runs the
whole pipeline and reads back, with the `fhirclient` library, what a device
sent over TCP.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.device import Device as DeviceResource
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment
from fhirclient.client import FHIRClient
from fhirclient.models.capabilitystatement import CapabilityStatement as ClientCapability
from fhirclient.models.observation import Observation as ClientObservation
from redis import Redis

from healthsync.api.app import create_app
from healthsync.domain.alerts import Alert
from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading, isoformat_ms
from healthsync.fhir.alerts import communication_for, flag_for
from healthsync.fhir.news2 import news2_resources
from healthsync.fhir.observations import observations_for
from healthsync.fhir.patients import device_for, patient_for
from healthsync.names import RedisKeys
from healthsync.security.codec import Codec
from healthsync.stack import Service, free_port
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, Device, clear_prefix, make_settings, wait_for

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
HR, SPO2, TEMP, RR, BP = "8867-4", "2708-6", "8310-5", "9279-1", "85354-9"


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# P-A: a reading every 5 minutes across midnight; P-B: every 90.5 s from midnight on.
A_START = at("2026-11-27T22:00:00.250Z")
B_START = at("2026-11-28T00:00:00Z")


@dataclass(frozen=True)
class Stored:
    resource: dict[str, Any]
    time: float
    patient: str | None

    @property
    def id(self) -> str:
        return cast("str", self.resource["id"])

    def codes(self) -> set[tuple[str, str]]:
        return {(c.get("system", ""), c["code"]) for c in self.resource["code"]["coding"]}


@dataclass
class Seed:
    """Resources written in the layout of RedisKeys, and what was written, to compare with."""

    codec: Codec
    client: Redis
    by_type: dict[str, list[Stored]] = field(default_factory=dict)

    def put(self, resource: dict[str, Any], time: float, patient: str | None) -> None:
        """`time` is the resource's own time; `patient` the Patient its subject names."""
        kind, rid = resource["resourceType"], resource["id"]
        key = self.keys.fhir(kind, rid)
        self.client.set(key, self.codec.seal(orjson.dumps(resource), key))
        self.client.zadd(self.keys.fhir_index(kind), {rid: time})
        if patient is not None:
            assert resource["subject"] == {"reference": f"Patient/{patient}"}
            self.client.zadd(self.keys.fhir_index(kind, patient), {rid: time})
        self.by_type.setdefault(kind, []).append(Stored(resource, time, patient))

    @property
    def keys(self) -> RedisKeys:
        return self.codec.keys

    def remove(self, resource: dict[str, Any], patient: str) -> None:
        kind = resource["resourceType"]
        self.client.delete(self.keys.fhir(kind, resource["id"]))
        self.client.zrem(self.keys.fhir_index(kind), resource["id"])
        self.client.zrem(self.keys.fhir_index(kind, patient), resource["id"])

    def expected(
        self,
        kind: str,
        keep: Callable[[Stored], bool] = lambda s: True,
        newest_first: bool = True,
    ) -> list[str]:
        rows = [s for s in self.by_type[kind] if keep(s)]
        rows.sort(key=lambda s: (s.time, s.id), reverse=newest_first)
        return [s.id for s in rows]

    def count(self, kind: str, keep: Callable[[Stored], bool] = lambda s: True) -> int:
        return len(self.expected(kind, keep))


def seed_resources(seed: Seed) -> None:
    """Two patients' resources, from the processor's own builders."""
    for k in range(30):
        vitals = {"heart_rate": 60 + k, "spo2": 90 + k % 10, "temp": 36.5, "bp_sys": 120}
        vitals["bp_dia"] = 80
        reading = Reading(f"a{k:02d}", "mon-A", "P-A", A_START + 300 * k, 0, vitals)
        for resource in observations_for(reading):
            seed.put(resource, reading.ts, "P-A")
    # P-B: two devices measure at the same instants, so resources tie on time.
    for k in range(20):
        ts = B_START + 90.5 * k
        pulse = Reading(f"b{k:02d}", "mon-B", "P-B", ts, 0, {"heart_rate": 80})
        breaths = Reading(f"c{k:02d}", "mon-C", "P-B", ts, 0, {"resp_rate": 16})
        for resource in observations_for(pulse) + observations_for(breaths):
            seed.put(resource, ts, "P-B")

    score_at = A_START + 1500
    observed: dict[str, Any] = {"resp_rate": 22, "spo2": 95, "on_oxygen": False, "bp_sys": 105}
    observed |= {"heart_rate": 95, "consciousness": "A", "temp": 38.4}
    score = news2(observed, score_at, sources={"heart_rate": "a05", "spo2": "a05"})
    for resource in news2_resources("P-A", score):
        seed.put(resource, score_at, "P-A")

    for patient, mrn in (("P-A", "MRN-1"), ("P-B", "MRN-2")):
        demographics = {"mrn": mrn, "patient_name": "Ada Example", "gender": "female"}
        seed.put(
            patient_for(patient, demographics, "urn:oid:2.16.840.1.113883.19.5", A_START),
            A_START,
            None,
        )
    seed.put(device_for("mon-A", A_START), A_START, None)

    for n, (patient, is_open, opened) in enumerate(
        (("P-A", True, A_START + 600), ("P-A", False, A_START), ("P-B", True, B_START))
    ):
        alert = Alert(
            alert_id=f"al{n}",
            patient_id=patient,
            kind="spo2_low",
            vital="spo2",
            severity="critical",
            status="open" if is_open else "resolved",
            opened_at=opened,
            updated_at=opened,
            value=85,
            band="92-100",
            reading_id="a02",
            resolved_at=None if is_open else opened + 60,
        )
        seed.put(communication_for(alert), opened, patient)
        seed.put(flag_for(alert), opened, patient)


@dataclass
class Served:
    http: httpx.Client
    seed: Seed
    base: str
    redis_url: str

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(path, params=params)

    def bundle(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fhir+json"
        body: dict[str, Any] = response.json()
        assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
        return body

    def ids(self, path: str, **params: Any) -> list[str]:
        """Ids of one page, checking the total matches when it is the only page."""
        body = self.bundle(path, **params)
        ids = [e["resource"]["id"] for e in body.get("entry", [])]
        if not any(link["relation"] == "next" for link in body["link"]):
            assert body["total"] == len(ids)
        return ids

    def every_page(self, path: str, **params: Any) -> tuple[list[str], list[dict[str, Any]]]:
        """Follows `next` links to the end; returns all ids and the pages."""
        pages = [self.bundle(path, **params)]
        while True:
            links = {link["relation"]: link["url"] for link in pages[-1]["link"]}
            if "next" not in links:
                break
            assert len(pages) < 1000, "paging does not end"
            response = self.http.get(links["next"])
            assert response.status_code == 200, response.text
            pages.append(response.json())
        ids = [e["resource"]["id"] for page in pages for e in page.get("entry", [])]
        return ids, pages


@pytest.fixture(scope="module")
def served(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    settings = make_settings(broker, redis_server)
    client = Redis.from_url(str(settings.redis.url))
    seed = Seed(Codec.from_settings(settings), client)
    seed_resources(seed)
    pipeline = Pipeline(settings, tmp_path_factory.mktemp("fhir-api"))
    pipeline.start(stages=("api",))
    base = f"http://{settings.api.host}:{settings.api.port}"
    try:
        with httpx.Client(base_url=base, timeout=10, headers=credentials.headers()) as http:
            yield Served(http, seed, base, str(settings.redis.url))
    finally:
        pipeline.stop()
        clear_prefix(client, settings.redis.prefix)
        client.close()


def assert_outcome(response: httpx.Response, status: int, code: str, *reasons: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    body = response.json()
    OperationOutcome.model_validate(body)
    [issue] = body["issue"]
    assert (issue["severity"], issue["code"]) == ("error", code)
    for reason in reasons:
        assert reason in issue["diagnostics"], issue["diagnostics"]


# Metadata and reads ---------------------------------------------------------------------


def test_metadata_lists_exactly_what_is_served(served: Served) -> None:
    response = served.get("/fhir/metadata")
    assert response.headers["content-type"] == "application/fhir+json"
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["implementation"]["url"] == served.base + "/fhir"
    [rest] = statement["rest"]
    assert rest["mode"] == "server"
    served_types = {
        r["type"]: (
            [i["code"] for i in r["interaction"]],
            [(p["name"], p["type"]) for p in r.get("searchParam", [])],
        )
        for r in rest["resource"]
    }
    assert served_types == {
        "Observation": (
            ["read", "search-type"],
            [
                ("patient", "reference"),
                ("subject", "reference"),
                ("code", "token"),
                ("category", "token"),
                ("date", "date"),
            ],
        ),
        "Patient": (["read"], []),
        "Device": (["read"], []),
        "Communication": (["read", "search-type"], [("patient", "reference"), ("status", "token")]),
        "Flag": (["read", "search-type"], [("patient", "reference"), ("status", "token")]),
        "RiskAssessment": (["read", "search-type"], [("patient", "reference")]),
    }


@pytest.mark.parametrize(
    "kind", ["Observation", "Patient", "Device", "Communication", "Flag", "RiskAssessment"]
)
def test_read_by_id_returns_the_stored_resource(served: Served, kind: str) -> None:
    for stored in served.seed.by_type[kind]:
        response = served.get(f"/fhir/{kind}/{stored.id}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fhir+json"
        assert response.json() == stored.resource


def test_read_of_an_unknown_id_is_404(served: Served) -> None:
    assert_outcome(
        served.get("/fhir/Observation/zz-nothing"),
        404,
        "not-found",
        "Observation/zz-nothing",
    )
    assert_outcome(served.get("/fhir/Patient/P-NOBODY"), 404, "not-found", "Patient/P-NOBODY")
    # An id of another type is not found under this one.
    assert_outcome(served.get("/fhir/Device/P-A"), 404, "not-found")


@pytest.mark.parametrize("bad_id", ["a_b", "x" * 65, "P:A", "a%20b", "%2A"])
def test_an_id_outside_the_fhir_id_pattern_is_400(served: Served, bad_id: str) -> None:
    assert_outcome(served.get(f"/fhir/Observation/{bad_id}"), 400, "invalid", "not a FHIR id")


def test_unknown_resource_types_and_routes_answer_with_operation_outcomes(served: Served) -> None:
    assert_outcome(served.get("/fhir/Encounter/e1"), 404, "not-supported", "'Encounter'")
    assert_outcome(served.get("/fhir/Encounter"), 404, "not-supported", "'Encounter'")
    assert_outcome(served.get("/fhir/Patient"), 405, "not-supported", "read it by id")
    assert_outcome(served.get("/fhir/Device"), 405, "not-supported")
    some_id = served.seed.by_type["Observation"][0].id
    assert_outcome(served.get(f"/fhir/Observation/{some_id}/_history"), 404, "not-found")
    assert_outcome(served.http.post("/fhir/Observation", json={}), 405, "not-supported")
    assert_outcome(served.http.delete(f"/fhir/Observation/{some_id}"), 405, "not-supported")
    # The rest of the API keeps its own error shape.
    assert served.get("/v1/patients/P-A/vitals/latest").json()["error"]["status"] == 404


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


@pytest.mark.parametrize("count", [1, 7, 50])
@pytest.mark.parametrize("sort", ["-date", "date"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"patient": "P-A"}, {"code": HR}, {"patient": "P-B", "date": "ge2026-11-28T00:10Z"}],
)
def test_paging_follows_next_links_until_the_total_is_read(
    served: Served, count: int, sort: str, filters: dict[str, str]
) -> None:
    ids, pages = served.every_page("/fhir/Observation", _count=count, _sort=sort, **filters)
    everything = served.ids("/fhir/Observation", _count=1000, _sort=sort, **filters)
    assert ids == everything, "pages together are the one-page result, in order"
    assert len(set(ids)) == len(ids)
    assert {page["total"] for page in pages} == {len(ids)}
    assert all(len(page.get("entry", [])) == count for page in pages[:-1])
    assert 1 <= len(pages[-1].get("entry", [])) <= count
    assert len(pages) == math.ceil(len(ids) / count)
    for page in pages[1:]:
        [self_link] = [link for link in page["link"] if link["relation"] == "self"]
        assert self_link["url"].startswith(served.base + "/fhir/Observation?")


def test_default_page_is_50_newest_first(served: Served) -> None:
    body = served.bundle("/fhir/Observation")
    assert len(body["entry"]) == 50
    assert [e["resource"]["id"] for e in body["entry"]] == served.seed.expected("Observation")[:50]
    assert [link["relation"] for link in body["link"]] == ["self", "next"]


def test_sort_by_date_ascending(served: Served) -> None:
    assert served.ids("/fhir/Observation", _sort="date", patient="P-A", _count=1000) == (
        served.seed.expected("Observation", lambda s: s.patient == "P-A", newest_first=False)
    )


def test_count_zero_gives_the_total_only(served: Served) -> None:
    body = served.bundle("/fhir/Observation", _count=0, patient="P-A")
    assert body["total"] == served.seed.count("Observation", lambda s: s.patient == "P-A") == 121
    assert "entry" not in body
    assert [link["relation"] for link in body["link"]] == ["self"]
    assert served.bundle("/fhir/Observation", _count=0, code=HR)["total"] == 50


def test_pages_neither_repeat_nor_skip_when_resources_arrive_between_them(
    served: Served,
) -> None:
    seed = served.seed
    expected = seed.expected("Observation", lambda s: s.patient == "P-B")
    first = served.bundle("/fhir/Observation", patient="P-B", _count=10)
    assert [e["resource"]["id"] for e in first["entry"]] == expected[:10]
    boundary = next(s for s in seed.by_type["Observation"] if s.id == expected[9])
    template = seed.by_type["Observation"][-1].resource
    # Newer than everything; and at the first page's last time, ordered before it.
    late = [
        ({**template, "id": "zz-newest"}, B_START + 10_000),
        ({**template, "id": "zz-tied"}, boundary.time),
    ]
    for resource, stamp in late:
        seed.client.set(seed.keys.fhir("Observation", resource["id"]), orjson.dumps(resource))
        for patient in (None, "P-B"):
            seed.client.zadd(seed.keys.fhir_index("Observation", patient), {resource["id"]: stamp})
    try:
        links = {link["relation"]: link["url"] for link in first["link"]}
        second = served.http.get(links["next"]).json()
        assert [e["resource"]["id"] for e in second["entry"]] == expected[10:20]
        assert second["total"] == len(expected) + 2, "the total counts what is there now"
    finally:
        for resource, _stamp in late:
            seed.remove(resource, "P-B")


def test_a_resource_that_expired_from_its_index_is_skipped(served: Served) -> None:
    seed = served.seed
    ghost = {"resourceType": "Observation", "id": "ghost-hr"}
    for index in (seed.keys.fhir_index("Observation"), seed.keys.fhir_index("Observation", "P-B")):
        seed.client.zadd(index, {"ghost-hr": B_START + 20_000})
    try:
        ids = served.every_page("/fhir/Observation", patient="P-B", _count=3)[0]
        assert ids == seed.expected("Observation", lambda s: s.patient == "P-B")
        assert (
            served.ids("/fhir/Observation", patient="P-B", code=HR, _count=3)[:1]
            == (
                seed.expected(
                    "Observation", lambda s: s.patient == "P-B" and (LOINC, HR) in s.codes()
                )[:1]
            )
        )
    finally:
        seed.remove(ghost, "P-B")


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


# A real FHIR client against the whole pipeline --------------------------------------------


@pytest.mark.slow
def test_fhirclient_reads_back_the_readings_sent_over_tcp(
    pipeline: Pipeline, device: Device, credentials: Credentials
) -> None:
    patient = f"P-{uuid.uuid4().hex[:6]}"
    # Whole minutes within the last hour: inside any recent window the store keeps.
    start = float(int(time.time() // 60 * 60) - 3600)
    sent: dict[tuple[float, str], float] = {}
    for seq in range(6):
        ts = start + 60 * seq
        hr, spo2, temp = 70 + seq, 94 + seq % 5, round(36.6 + seq / 10, 1)
        line = (
            f"device_id=mon-fc patient_id={patient} seq={seq} ts={isoformat_ms(ts)} "
            f"hr={hr} spo2={spo2}% temp={temp} bp={118 + seq}/{76 + seq}"
        )
        reply = device.send(line.encode())
        assert reply.startswith("OK "), reply
        sent |= {(ts, HR): hr, (ts, SPO2): spo2, (ts, TEMP): temp}
        sent |= {(ts, "8480-6"): 118 + seq, (ts, "8462-4"): 76 + seq}

    api = pipeline.settings.api
    client = FHIRClient(
        settings={"app_id": "healthsync-test", "api_base": f"http://{api.host}:{api.port}/fhir/"}
    )
    # A SMART app would get a token from the EHR's authorization server; this one is signed
    # by the test identity provider: a clinician's token, narrowed by a SMART scope.
    token = credentials.token(sub="smart-app", roles=["clinician"], scope="user/*.read launch")
    client.server.session.headers["Authorization"] = f"Bearer {token}"
    try:
        capability = client.server.capabilityStatement
        assert isinstance(capability, ClientCapability)
        assert capability.fhirVersion == "4.0.1"

        def search(**struct: str) -> list[Any]:
            found = ClientObservation.where(struct=struct).perform_resources_iter(client.server)
            return list(found)

        def code_of(observation: Any) -> str:
            return str(
                next(c.code for c in observation.code.coding if c.code in (HR, SPO2, TEMP, BP))
            )

        def all_stored() -> list[Any] | None:
            # _count=4 makes the client follow several `next` links.
            found = search(patient=patient, category="vital-signs", _count="4")
            return found if len(found) == 6 * 4 else None

        observations = wait_for(all_stored, timeout=60, what="the readings as Observations")
        received: dict[tuple[float, str], float] = {}
        for observation in observations:
            ts = observation.effectiveDateTime.datetime.timestamp()
            assert observation.subject.reference == f"Patient/{patient}"
            assert observation.status == "final"
            if code_of(observation) == BP:
                assert observation.valueQuantity is None
                for part in observation.component:
                    received[ts, part.code.coding[0].code] = part.valueQuantity.value
                    assert part.valueQuantity.code == "mm[Hg]"
            else:
                received[ts, code_of(observation)] = observation.valueQuantity.value
                assert observation.valueQuantity.system == "http://unitsofmeasure.org"
        assert received == sent
        times = [o.effectiveDateTime.datetime for o in observations]
        assert times == sorted(times, reverse=True), "newest first by default"

        heart = search(patient=f"Patient/{patient}", code=f"{LOINC}|{HR}", _sort="date")
        assert [o.valueQuantity.value for o in heart] == [70 + seq for seq in range(6)]
        later = search(subject=patient, code=HR, date="ge" + isoformat_ms(start + 180))
        assert sorted(o.valueQuantity.value for o in later) == [73, 74, 75]

        again = ClientObservation.read(heart[0].id, client.server)
        assert again.valueQuantity.value == 70
    finally:
        client.server.session.close()


def test_seeded_resources_are_valid_fhir(served: Served) -> None:
    """The seed stands in for the processor's output, so it must be valid FHIR too."""
    for stored in served.seed.by_type["Patient"]:
        Patient.model_validate(stored.resource)
    for stored in served.seed.by_type["Device"]:
        DeviceResource.model_validate(stored.resource)
    for stored in served.seed.by_type["Communication"]:
        Communication.model_validate(stored.resource)
    for stored in served.seed.by_type["RiskAssessment"]:
        RiskAssessment.model_validate(stored.resource)
    Bundle.model_validate(served.bundle("/fhir/Communication"))


def test_an_unavailable_store_is_a_transient_503(
    broker: Service, redis_server: Service, credentials: Credentials
) -> None:
    """Redis not answering: FHIR clients get an OperationOutcome they may retry on."""
    settings = make_settings(broker, redis_server, redis={"timeout_s": 1.0})
    settings.redis.url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://hs", headers=credentials.headers()
        ) as client:
            return [
                await client.get("/fhir/Observation", params={"patient": "P-A"}),
                await client.get("/fhir/Patient/P-A"),
            ]

    for response in asyncio.run(run()):
        assert_outcome(response, 503, "transient", "the resource store is unavailable")
