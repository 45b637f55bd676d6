"""What the API does with hostile requests, against a real API process.

Bodies are capped before routing, forged proxy and Host headers change neither
the audit nor the links, answers carry the security headers, and bad numbers
are refused rather than crashing a route.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from healthsync.api.app import create_app
from healthsync.config import Settings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.fhir.observations import observations_for
from healthsync.fhir.patients import patient_for
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.stack import Service, free_port
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from tests.api.auth_client import AuthApi, serving
from tests.conftest import Credentials, make_settings

BASE_URL = "https://healthsync.ward.example:8443"
# A patient id FHIR cannot use as it is (`:`), so its FHIR id is a digest.
ODD_PATIENT = "MRN:555"


def seed_patient(settings: Settings, client: Redis, patient_id: str) -> None:
    now = time.time()
    reading = Reading("r-odd-1", "mon-odd", patient_id, now - 10, now - 10, {"heart_rate": 70})
    batch = Batch([reading])
    codec = Codec.from_settings(settings)
    key = codec.id_key  # as the processor keys the `h-` id of an id FHIR cannot hold
    batch.observations.append((patient_id, patient_for(patient_id, {}, "urn:mrn", now, key)))
    batch.observations += [(patient_id, o) for o in observations_for(reading, key)]
    records = Records(codec)
    stats = StatsRecorder(settings.redis.keys, "processor")
    for sink in (
        RedisLiveSink(client, settings.redis, stats, records),
        RedisFhirSink(client, settings.redis, records),
    ):
        sink.write(batch)
        sink.flush()


@pytest.fixture(scope="module")
def served(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AuthApi]:
    settings = make_settings(broker, redis_server, api={"base_url": BASE_URL})
    run_dir = tmp_path_factory.mktemp("hardened-api")
    with serving(settings, credentials, run_dir, timeout=30) as api:
        seed_patient(settings, api.redis, ODD_PATIENT)
        yield api


def raw_request(served: AuthApi, head: str, body_chunks: list[bytes]) -> str:
    """Send a request by hand (a chunked body httpx would not stream this way); the status line."""
    cfg = served.settings.api
    with socket.create_connection((cfg.host, cfg.port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        return sock.recv(4000).decode().split("\r\n", 1)[0]


RULES = "/v1/patients/P-AUTH-1/rules"
JSON = {"Content-Type": "application/json"}


def test_an_oversized_body_is_413_before_anything_reads_it(served: AuthApi) -> None:
    token = served.credentials.token()
    big = b'{"bands": {}, "pad": "' + b"x" * (64 * 1024) + b'"}'
    for who in (None, token):
        response = served.call("PUT", RULES, who, content=big)
        assert response.status_code == 413, response.text
        assert "16384" in response.json()["error"]["message"]
    # Without a Content-Length too: a chunked body is cut off once past the limit.
    head = (
        f"PUT {RULES} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert raw_request(served, head, [b"x" * 8192] * 64) == "HTTP/1.1 413 Request Entity Too Large"
    fhir = served.call("POST", "/fhir/Observation", token, content=big)
    assert fhir.status_code == 413 and fhir.json()["resourceType"] == "OperationOutcome"
    # The rules are unchanged, and a body within the limit still works.
    ok = served.call("PUT", RULES, token, json={"spo2_scale": 2})
    assert ok.status_code == 200, ok.text
    assert served.call("DELETE", RULES, token).status_code == 200


def test_a_limit_that_is_no_number_is_refused_not_replaced_by_the_default(
    served: AuthApi,
) -> None:
    """1e400 is valid JSON that reads as infinity, and NaN is accepted by Python's parser:
    both passed every ordering check (NaN compares false), were stored as null, which
    means the default, and the PUT answered 200 with a band the clinician did not set."""
    token = served.credentials.token()
    before = served.call("GET", RULES, token).json()
    for body in (
        b'{"bands": {"heart_rate": {"critical_high": 1e400}}}',
        b'{"bands": {"heart_rate": {"low": NaN}}}',
        b'{"bands": {"heart_rate": {"critical_low": -Infinity}}}',
    ):
        response = served.call("PUT", RULES, token, content=body, headers=JSON)
        assert response.status_code == 422, response.text
        assert "finite" in response.text
    assert served.call("GET", RULES, token).json() == before


def test_a_body_without_credentials_is_401_not_422(served: AuthApi) -> None:
    response = served.call("PUT", RULES, None, content=b"{not json")
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_audit_names_a_patient_by_one_id_on_both_apis(served: AuthApi) -> None:
    actor = f"dr-{uuid.uuid4().hex[:8]}"
    token = served.credentials.token(sub=actor)
    latest = served.get(f"/v1/patients/{ODD_PATIENT}/vitals/latest", token).json()
    assert latest["patient_id"] == ODD_PATIENT
    bundle = served.get("/fhir/Observation", token, params={"code": "8867-4"}).json()
    [reference] = {
        e["resource"]["subject"]["reference"]
        for e in bundle["entry"]
        if e["resource"]["subject"]["reference"].startswith("Patient/h-")
    }
    patient = served.get(f"/fhir/{reference}", token)
    assert patient.status_code == 200
    served.get("/fhir/Observation", token, params={"patient": reference})
    records = served.audit(actor)
    assert [r["patients"] for r in records] == [
        [ODD_PATIENT],
        [ODD_PATIENT, "P-AUTH-1", "P-AUTH-2"],
        [ODD_PATIENT],
        [ODD_PATIENT],
    ]


def test_non_finite_times_are_refused_with_422(served: AuthApi) -> None:
    token = served.credentials.token()
    for query in ("since=nan", "until=inf", "since=-Infinity"):
        response = served.get(f"/v1/patients/P-AUTH-1/vitals?{query}", token)
        assert response.status_code == 422, (query, response.text)


PERIOD_ROUTES = (
    "/v1/patients/P-AUTH-1/vitals",
    "/v1/patients/P-AUTH-1/trends?vital=spo2&",
    "/v1/patients/P-AUTH-1/alerts",
)


@pytest.mark.parametrize("route", PERIOD_ROUTES)
def test_a_period_out_of_reach_is_refused_at_once(served: AuthApi, route: str) -> None:
    """The history routes walk a period day by day (the archive lists each day): one that
    ended after the year 9999, or began in year 1, tied a worker up for minutes."""
    token = served.credentials.token()
    sep = "" if route.endswith("&") else "?"
    for query, why in (
        ("until=1e300", "outside"),
        ("since=-1e11", "outside"),
        ("since=1e15&until=1e15", "outside"),
        ("since=0001-01-01T00:00:00Z", "outside"),
        ("since=9999-12-31T00:00:00Z&until=9999-12-31T01:00:00Z", "outside"),
        ("since=0", "366 days"),
    ):
        response = served.get(f"{route}{sep}{query}", token, timeout=10)
        assert response.status_code == 400, (query, response.text)
        assert why in response.json()["error"]["message"], (query, response.text)
    # A year, ending now, is within reach.
    year_ago = time.time() - 365 * 86_400
    assert served.get(f"{route}{sep}since={year_ago:.0f}", token, timeout=30).status_code in (
        200,
        404,
    )


def test_a_patient_id_no_device_could_send_is_refused_on_every_patient_route(
    served: AuthApi,
) -> None:
    token = served.credentials.token()
    for patient in ("P%20X", "P" * 3000):
        for route in ("vitals", "trends?vital=spo2", "alerts", "vitals/latest"):
            response = served.get(f"/v1/patients/{patient}/{route}", token)
            assert response.status_code == 422, (route, response.text)


def test_forged_forwarding_headers_change_neither_the_audit_nor_the_links(
    served: AuthApi,
) -> None:
    actor = f"dr-{uuid.uuid4().hex[:8]}"
    token = served.credentials.token(sub=actor)
    forged = {
        "X-Forwarded-For": "10.66.66.66",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Host": "evil.example:443",
    }
    bundle = served.get(
        "/fhir/Observation", token, params={"patient": "P-AUTH-1", "_count": 1}, headers=forged
    ).json()
    urls = [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]
    assert urls and all(url.startswith(BASE_URL + "/fhir/") for url in urls), urls
    metadata = served.get("/fhir/metadata", token, headers=forged).json()
    assert metadata["implementation"]["url"] == BASE_URL + "/fhir"
    [record] = served.audit(actor)
    assert record["client"] == "127.0.0.1"
    assert "forwarded_for" not in record, "no proxy is trusted, so the header is not recorded"


def test_answers_carry_security_headers_and_patient_data_is_not_cached(served: AuthApi) -> None:
    token = served.credentials.token()
    for path in ("/v1/patients", "/fhir/Patient/P-AUTH-1", "/healthz"):
        response = served.get(path, token)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["strict-transport-security"].startswith("max-age="), path
    for path in ("/v1/patients", "/fhir/Patient/P-AUTH-1", "/v1/alerts"):
        assert served.get(path, token).headers["cache-control"] == "no-store", path
    refused = served.get("/v1/patients")
    assert refused.headers["cache-control"] == "no-store"


def test_readyz_does_not_name_the_broker(broker: Service, redis_server: Service) -> None:
    settings = make_settings(broker, redis_server)
    settings.kafka.bootstrap = f"127.0.0.1:{free_port()}"

    async def ready() -> httpx.Response:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with (
            app.router.lifespan_context(app),  # which closes the app's Redis connections
            httpx.AsyncClient(transport=transport, base_url="http://hs") as client,
        ):
            return await client.get("/readyz")

    response = asyncio.run(ready())
    assert response.status_code == 503
    assert response.json()["checks"] == {"redis": "ok", "kafka": "unavailable"}
    assert settings.kafka.bootstrap not in response.text


def test_the_api_description_page_loads_nothing_from_elsewhere(served: AuthApi) -> None:
    page = served.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    sources += re.findall(r"url: '([^']+)'", page.text)
    assert sources and all(s.startswith("/") for s in sources), sources
    for source in sources:
        assert served.get(source).status_code == 200, source
    assert "swagger" in served.get("/docs/oauth2-redirect").text.lower()


def test_an_unexpected_failure_is_answered_in_the_apis_own_shape(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A failure no handler expects (here, stored records that open but are not what they
    should be) was a plain-text 500, where every error under /fhir is an OperationOutcome
    and every error under /v1 is JSON. The answer names no cause: the API's log has it."""
    settings = make_settings(broker, redis_server)
    with serving(settings, credentials, tmp_path_factory.mktemp("broken"), timeout=30) as api:
        codec = Codec.from_settings(settings)
        keys = codec.keys
        patient = keys.fhir("Patient", "P-AUTH-1")
        api.redis.set(patient, codec.seal(b"not json", patient))
        tag = keys.patient("P-AUTH-1")
        api.redis.hset(keys.rules, tag, codec.seal(b"not json", codec.field(keys.rules, tag)))
        token = credentials.token()

        fhir = api.get("/fhir/Patient/P-AUTH-1", token)
        assert fhir.status_code == 500, fhir.text
        outcome = fhir.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert [i["code"] for i in outcome["issue"]] == ["exception"]
        rest = api.get("/v1/patients/P-AUTH-1/rules", token)
        assert rest.status_code == 500, rest.text
        assert rest.json()["error"]["message"] == "internal error"
        for answer in (fhir, rest):
            assert "JSON" not in answer.text and "json" not in answer.text
            assert answer.headers["x-content-type-options"] == "nosniff"
        # The API answers on, and its log has the cause.
        assert api.get("/healthz").status_code == 200
        assert "JSONDecodeError" in (api.logs / "api.log").read_text()
