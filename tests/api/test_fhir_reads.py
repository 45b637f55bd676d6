"""The FHIR read API's metadata, reads by id and error answers, served by a real
API process over a real redis-server seeded as in tests/api/fhir_seed.py.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.device import Device as DeviceResource
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.riskassessment import RiskAssessment

from healthsync.api.app import create_app
from healthsync.stack import Service, free_port
from tests.api.fhir_seed import Served, assert_outcome, served
from tests.conftest import Credentials, make_settings

__all__ = ["served"]  # a fixture, used by name


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
