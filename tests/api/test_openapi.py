"""The OpenAPI document, open to anyone, shows the shape of each v1 answer."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from healthsync.api.app import create_app
from healthsync.config import Settings


def openapi(settings: Settings) -> dict[str, Any]:
    """/openapi.json from an app without credentials, as a client generator fetches it."""

    async def run() -> httpx.Response:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs") as client,
        ):
            return await client.get("/openapi.json")

    response = asyncio.run(run())
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def fields(document: dict[str, Any], path: str, method: str, status: str = "200") -> set[str]:
    """The top-level fields of one answer, from its schema in the document."""
    answer = document["paths"][path][method]["responses"][status]
    reference = answer["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][reference.rsplit("/", 1)[1]]
    return set(schema["properties"])


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/healthz", "get", {"status"}),
        ("/readyz", "get", {"status", "checks"}),
        ("/v1/summary", "get", {"patients", "open_alerts", "news2_bands"}),
        ("/v1/patients", "get", {"patients", "count"}),
        ("/v1/patients/{patient_id}/vitals/latest", "get", {"patient_id", "vitals", "news2"}),
        (
            "/v1/patients/{patient_id}/vitals",
            "get",
            {"patient_id", "since", "until", "readings", "next_cursor"},
        ),
        ("/v1/alerts", "get", {"alerts", "count", "next_cursor"}),
        ("/v1/patients/{patient_id}/alerts", "get", {"alerts", "count", "next_cursor"}),
        ("/v1/patients/{patient_id}/rules", "get", {"patient_id", "source", "rules", "bands"}),
        ("/v1/patients/{patient_id}/rules", "put", {"patient_id", "source", "rules", "bands"}),
        ("/v1/patients/{patient_id}/rules", "delete", {"patient_id", "source", "rules", "bands"}),
    ],
)
def test_each_v1_answer_has_its_shape_in_the_document(
    settings: Settings, path: str, method: str, expected: set[str]
) -> None:
    assert fields(openapi(settings), path, method) == expected


def test_rows_are_described_too_and_not_ready_is_documented(settings: Settings) -> None:
    document = openapi(settings)
    schemas = document["components"]["schemas"]
    assert set(schemas["PatientRow"]["properties"]) == {
        "patient_id",
        "last_seen",
        "vitals",
        "news2",
        "open_alerts",
    }
    assert set(schemas["HistoryPoint"]["properties"]) == {"ts", "reading_id", "device_id", "vitals"}
    assert fields(document, "/readyz", "get", "503") == {"status", "checks"}


def test_the_fhir_api_has_its_own_document(settings: Settings) -> None:
    # The FHIR sub-application mounted at /fhir describes its own operations, open too.
    async def run() -> httpx.Response:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs") as client,
        ):
            return await client.get("/fhir/openapi.json")

    response = asyncio.run(run())
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["servers"] == [{"url": "/fhir"}]
    assert {"/metadata", "/{resource_type}", "/{resource_type}/{resource_id}"} <= set(
        document["paths"]
    )
    assert not any(path.startswith("/fhir") for path in openapi(settings)["paths"])
