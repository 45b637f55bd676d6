"""Two patients' FHIR resources in a real redis-server, and an API process serving them.

Redis is seeded with resources from the project's builders, written in the
layout of :class:`healthsync.names.RedisKeys`; expected results are computed
from the seed in the test, not by the code under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import httpx
import orjson
import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from redis import Redis

from healthsync.domain.alerts import Alert
from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading
from healthsync.fhir.alerts import communication_for, flag_for
from healthsync.fhir.news2 import news2_resources
from healthsync.fhir.observations import observations_for
from healthsync.fhir.patients import device_for, patient_for
from healthsync.names import RedisKeys
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, clear_prefix, make_settings

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
