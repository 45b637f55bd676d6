"""Authentication, roles and scopes, and the audit log, against a real API process.

The API runs as its own process over the session's redis-server, seeded by the
processor's own Redis sinks with two patients, an open alert and NEWS2 scores.
Tokens come from the session's test identity provider (tests/conftest.py):
RS256 JWTs verified with a PEM public key, ES256 ones with a JWKS file, and
one API key per role.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading
from healthsync.fhir.observations import observations_for
from healthsync.fhir.patients import device_for, patient_for
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.fhir_store import RedisFhirSink
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from healthsync.supervisor import Pipeline
from tests.conftest import AUDIENCE, ISSUER, Credentials, clear_prefix, make_settings
from tests.test_cli import run_cli

ALERT_ID = "a1b2c3"
# Every route that serves patient data or changes it, as (method, path).
DATA_ROUTES = [
    ("GET", "/v1/patients"),
    ("GET", "/v1/patients/P-AUTH-1/vitals/latest"),
    ("GET", "/v1/patients/P-AUTH-1/vitals"),
    ("GET", "/v1/alerts"),
    ("POST", f"/v1/alerts/{ALERT_ID}/ack"),
    ("GET", "/fhir/Observation?patient=P-AUTH-1"),
    ("GET", "/fhir/Patient/P-AUTH-1"),
    ("GET", "/fhir/Communication?patient=P-AUTH-1"),
]
OPEN_ROUTES = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


def seed(settings: Settings, client: Redis) -> None:
    """Two patients, as the processor would have stored them."""
    now = time.time()
    readings = [
        Reading(
            "r-auth-1", "mon-a", "P-AUTH-1", now - 60, now - 60, {"spo2": 86, "heart_rate": 118}
        ),
        Reading("r-auth-2", "mon-b", "P-AUTH-2", now - 30, now - 30, {"heart_rate": 72}),
    ]
    alert = Alert(
        alert_id=ALERT_ID,
        patient_id="P-AUTH-1",
        kind="threshold:spo2",
        vital="spo2",
        severity="critical",
        status="open",
        opened_at=now - 60,
        updated_at=now - 60,
        value=86,
        band="92..-",
        reading_id="r-auth-1",
    )
    batch = Batch(readings, alert_events=[AlertEvent("opened", alert)])
    batch.scores = {
        "P-AUTH-1": news2({"spo2": 86, "heart_rate": 118, "resp_rate": 26}, now - 60),
        "P-AUTH-2": news2({"heart_rate": 72, "resp_rate": 14, "spo2": 98}, now - 30),
    }
    for reading in readings:
        demographics = {"patient_name": "Test Patient", "gender": "other"}
        batch.observations.append(
            (reading.patient_id, patient_for(reading.patient_id, demographics, "urn:mrn", now))
        )
        batch.observations += [(reading.patient_id, o) for o in observations_for(reading)]
    batch.observations.append(("P-AUTH-1", device_for("mon-a", now)))
    codec = Codec.from_settings(settings)
    stats = StatsRecorder(settings.redis.keys, "processor")
    live = RedisLiveSink(client, settings.redis, stats, Records(codec))
    fhir = RedisFhirSink(client, settings.redis, Records(codec))
    for sink in (live, fhir):
        sink.write(batch)
        sink.flush()


@dataclass
class AuthApi:
    settings: Settings
    http: httpx.Client
    redis: Redis
    credentials: Credentials
    logs: Path

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=headers, **kw)

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return self.call("GET", path, token, **kw)

    def audit(self, actor: str) -> list[dict[str, Any]]:
        path = self.settings.auth.audit_log_file
        assert path is not None
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in records if r["actor"] == actor]

    def refused(self, reason: str) -> float:
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(f'healthsync_api_refused_total{{reason="{reason}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@contextmanager
def serving(
    settings: Settings, credentials: Credentials, run_dir: Path, timeout: float = 10
) -> Iterator[AuthApi]:
    """The API alone, as a process over the seeded data; the data is deleted afterwards."""
    client = Redis.from_url(str(settings.redis.url))
    seed(settings, client)
    pipeline = Pipeline(settings, run_dir)
    pipeline.start(stages=("api",))
    base = f"http://{settings.api.host}:{settings.api.port}"
    try:
        with httpx.Client(base_url=base, timeout=timeout) as http:
            yield AuthApi(settings, http, client, credentials, pipeline.logs)
    finally:
        pipeline.stop()
        clear_prefix(client, settings.redis.prefix)
        client.close()


@pytest.fixture(scope="module")
def served(
    broker: Service,
    redis_server: Service,
    credentials: Credentials,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AuthApi]:
    settings = make_settings(broker, redis_server)
    with serving(settings, credentials, tmp_path_factory.mktemp("auth-api")) as api:
        yield api


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(payload: dict[str, Any], header: dict[str, Any], key: bytes) -> str:
    """A token built by hand, for what PyJWT refuses to make (alg=none, HS256 with a PEM)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if header["alg"] == "none":
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300}
    return claims | {"roles": ["admin"]} | extra


# --- who may call at all --------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [*DATA_ROUTES, ("GET", "/v1/summary")])
def test_without_a_token_the_answer_is_401_with_a_bearer_challenge(
    served: AuthApi, method: str, path: str
) -> None:
    response = served.call(method, path)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "P-AUTH" not in response.text.replace(path, "")
    if path.startswith("/fhir"):
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "login"


def test_only_health_metrics_and_the_api_description_are_open(served: AuthApi) -> None:
    assert served.get("/healthz").json() == {"status": "ok"}
    assert served.get("/readyz").status_code == 200
    assert "healthsync_api_refused_total" in served.get("/metrics").text
    assert served.get("/docs").status_code == 200
    spec = served.get("/openapi.json").json()
    # Every other route declares its need for a bearer token, so none is open by omission.
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path in OPEN_ROUTES:
                assert "security" not in operation, (method, path)
            else:
                assert operation.get("security") == [{"HTTPBearer": []}], (method, path)


def _bad_tokens(credentials: Credentials) -> dict[str, str]:
    other_key = rsa.generate_private_key(65537, 2048)
    pem = credentials.public_key_file.read_bytes()
    return {
        "expired": credentials.token(exp=int(time.time()) - 120),
        "signed by another key": jwt.encode(_claims(), other_key, algorithm="RS256"),
        "alg none": _unsigned(_claims(), {"alg": "none", "typ": "JWT"}, b""),
        "HS256 keyed with the public key": _unsigned(_claims(), {"alg": "HS256"}, pem),
        "wrong issuer": credentials.token(iss="https://evil.example"),
        "wrong audience": credentials.token(aud="some-other-api"),
        "no sub": credentials.token(sub=None),
        "no exp": credentials.token(exp=None),
        "ES256 with an unknown kid": jwt.encode(
            _claims(), credentials.ec_key, algorithm="ES256", headers={"kid": "ec-9"}
        ),
        "ES256 without a kid (the PEM key is RSA)": jwt.encode(
            _claims(), credentials.ec_key, algorithm="ES256"
        ),
        "tampered payload": _tamper(credentials.token(roles=["viewer"])),
        # An OpenID Connect ID token for the same audience is no access token.
        "ID token (typ JWT)": jwt.encode(_claims(), credentials.rsa_key, algorithm="RS256"),
        "no typ": jwt.encode(
            _claims(), credentials.rsa_key, algorithm="RS256", headers={"typ": None}
        ),
        "a year's lifetime": credentials.token(exp=int(time.time()) + 365 * 86400),
        "issued a year before it expires": credentials.token(
            iat=int(time.time()) - 365 * 86400 + 120
        ),
        "not a JWT": "hello",
        "unknown API key": "hsk_" + uuid.uuid4().hex,
    }


def test_a_bad_jwks_url_is_a_configuration_error(settings: Settings) -> None:
    settings.auth.jwks_url = "idp.example/jwks.json"
    result = run_cli(settings, "api")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "jwks_url" in result.stderr and "https://" in result.stderr


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def test_bad_tokens_are_401_and_counted(served: AuthApi, credentials: Credentials) -> None:
    invalid_before = served.refused("invalid_token")
    unknown_before = served.refused("unknown_key")
    bad = _bad_tokens(credentials)
    for what, token in bad.items():
        for path in ("/v1/patients/P-AUTH-1/vitals/latest", "/fhir/Patient/P-AUTH-1"):
            response = served.get(path, token)
            assert response.status_code == 401, (what, path, response.text)
            assert 'error="invalid_token"' in response.headers["www-authenticate"], what
            assert "Test Patient" not in response.text and "P-AUTH-1" not in response.text
    assert served.refused("invalid_token") == invalid_before + 2 * (len(bad) - 1)
    assert served.refused("unknown_key") == unknown_before + 2


# --- what each role and scope may do ----------------------------------------------------


def test_a_clinician_reads_patient_data_with_a_jwt_or_an_api_key(
    served: AuthApi, credentials: Credentials
) -> None:
    tokens = {
        "RS256 JWT (PEM key)": credentials.token(),
        "ES256 JWT (JWKS file, kid)": credentials.token(algorithm="ES256"),
        "API key": credentials.api_keys["clinician"],
    }
    for what, token in tokens.items():
        latest = served.get("/v1/patients/P-AUTH-1/vitals/latest", token)
        assert latest.status_code == 200, (what, latest.text)
        assert latest.json()["vitals"]["spo2"]["value"] == 86
        listed = served.get("/v1/patients", token).json()["patients"]
        assert {p["patient_id"] for p in listed} == {"P-AUTH-1", "P-AUTH-2"}
        bundle = served.get("/fhir/Observation", token, params={"patient": "P-AUTH-1"}).json()
        assert bundle["total"] == 2
        assert served.get("/fhir/Patient/P-AUTH-1", token).json()["id"] == "P-AUTH-1"


def test_a_viewer_gets_only_the_de_identified_aggregates(
    served: AuthApi, credentials: Credentials
) -> None:
    for token in (credentials.api_keys["viewer"], credentials.token(roles=["viewer"])):
        summary = served.get("/v1/summary", token)
        assert summary.status_code == 200, summary.text
        assert summary.json() == {
            "patients": 2,
            "open_alerts": {
                "total": 1,
                "by_severity": {"warning": 0, "critical": 1},
                "by_kind": {"threshold:spo2": 1},
            },
            "news2_bands": {"low": 1, "low-medium": 0, "medium": 0, "high": 1},
        }
        for method, path in DATA_ROUTES:
            refused = served.call(method, path, token)
            assert refused.status_code == 403, (path, refused.text)
            assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
            assert "Test Patient" not in refused.text
    [alert] = served.get("/v1/alerts", credentials.token()).json()["alerts"]
    by = alert.get("acknowledgement", {}).get("by")
    assert by not in ("apikey:test-viewer", "dr-house"), "a refused acknowledgement is not made"


def test_device_admins_read_devices_but_no_patient_data(
    served: AuthApi, credentials: Credentials
) -> None:
    token = credentials.api_keys["device-admin"]
    assert served.get("/fhir/Device/mon-a", token).json()["resourceType"] == "Device"
    assert served.get("/v1/summary", token).status_code == 200
    for method, path in DATA_ROUTES:
        assert served.call(method, path, token).status_code == 403, path


@dataclass(frozen=True)
class ScopeCase:
    """A token's roles and SMART scopes, and the paths it may and may not read."""

    roles: list[str] | None
    scope: str
    allowed: list[str]
    refused: list[str]

    def __str__(self) -> str:
        return f"{'+'.join(self.roles or ['no user'])} {self.scope}"


@pytest.mark.parametrize(
    "case",
    [
        ScopeCase(
            ["clinician"],
            "user/Observation.read",
            ["/fhir/Observation?patient=P-AUTH-1", "/v1/patients/P-AUTH-1/vitals", "/v1/summary"],
            ["/fhir/Patient/P-AUTH-1", "/v1/alerts", "/v1/patients"],
        ),
        # A backend service (no user, so no roles) reads with system/ scopes.
        ScopeCase(
            None,
            "system/*.rs",
            ["/fhir/Patient/P-AUTH-1", "/v1/alerts", "/v1/patients", "/fhir/Flag"],
            [],
        ),
        ScopeCase(
            ["clinician"],
            "user/Patient.read user/Flag.read",
            ["/fhir/Patient/P-AUTH-1", "/fhir/Flag"],
            ["/fhir/Observation"],
        ),
        # Scopes narrow a role, never widen it: a viewer stays on the aggregates.
        ScopeCase(
            ["viewer"], "user/*.read", ["/v1/summary"], ["/fhir/Observation", "/v1/patients"]
        ),
        # A single-patient launch scope: no per-patient filter here, so nothing at all.
        ScopeCase(
            ["clinician"],
            "patient/Observation.read",
            [],
            ["/fhir/Observation?patient=P-AUTH-1", "/v1/patients", "/v1/summary"],
        ),
        ScopeCase(
            None, "patient/*.read", [], ["/fhir/Observation?patient=P-AUTH-1", "/v1/summary"]
        ),
        # system/ scopes belong to tokens without a user; on a user's token they grant nothing.
        ScopeCase(
            ["clinician"], "system/*.rs", [], ["/fhir/Observation", "/v1/patients", "/v1/summary"]
        ),
        # user/ scopes need a user's role to narrow.
        ScopeCase(None, "user/*.read", [], ["/fhir/Observation", "/v1/summary"]),
        ScopeCase(None, "openid profile", [], ["/fhir/Observation", "/v1/summary"]),
    ],
    ids=str,
)
def test_smart_scopes_narrow_what_the_role_allows(
    served: AuthApi, credentials: Credentials, case: ScopeCase
) -> None:
    scope = case.scope
    token = credentials.token(sub="smart-app", roles=case.roles, scope=scope)
    for path in case.allowed:
        assert served.get(path, token).status_code == 200, (scope, path)
    for path in case.refused:
        assert served.get(path, token).status_code == 403, (scope, path)
    # Acknowledging needs a write scope.
    assert served.call("POST", f"/v1/alerts/{ALERT_ID}/ack", token).status_code == 403


def test_a_clinician_token_with_write_scopes_acknowledges(
    served: AuthApi, credentials: Credentials
) -> None:
    token = credentials.token(sub="dr-scoped", scope="user/Communication.read user/Flag.write")
    # Reading alerts needs Communication and Flag; Flag.write is not a read of Flag.
    assert served.get("/v1/alerts", token).status_code == 403
    assert served.call("POST", f"/v1/alerts/{ALERT_ID}/ack", token).status_code == 200
    # OpenID scopes are no SMART resource scopes: with only those, the role alone counts.
    openid = credentials.token(sub="dr-openid", scope="openid profile")
    assert served.get("/v1/patients", openid).status_code == 200


# --- the audit log ----------------------------------------------------------------------


def test_each_read_is_audited_with_who_which_patient_what_when_and_where(
    served: AuthApi, credentials: Credentials
) -> None:
    actor = f"dr-{uuid.uuid4().hex[:8]}"
    token = credentials.token(sub=actor)
    before = time.time()
    assert served.get("/v1/patients/P-AUTH-1/vitals/latest", token).status_code == 200
    assert served.get("/fhir/Observation", token, params={"patient": "P-AUTH-2"}).status_code == 200
    assert served.get("/v1/patients", token).status_code == 200
    assert served.get("/v1/patients/P-NOBODY/vitals/latest", token).status_code == 404
    assert served.get("/v1/summary", token).status_code == 200
    after = time.time()

    records = served.audit(actor)
    assert [(r["action"], r["route"], r["patients"]) for r in records] == [
        ("read", "/v1/patients/{patient_id}/vitals/latest", ["P-AUTH-1"]),
        ("search", "/fhir/{resource_type}", ["P-AUTH-2"]),
        ("search", "/v1/patients", ["P-AUTH-1", "P-AUTH-2"]),
    ], "data served is audited; a 404 and the aggregates serve no patient's data"
    for record in records:
        assert record["client"] == "127.0.0.1"
        assert record["auth"] == "jwt" and record["roles"] == ["clinician"]
        when = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
        assert before - 1 <= when <= after + 1
    assert records[1]["resource"] == "Observation"
    assert records[1]["path"] == "/fhir/Observation?patient=P-AUTH-2"

    # The same records, in the Redis stream (sealed there, like all PHI in Redis).
    codec = Codec.from_settings(served.settings)
    stream = codec.keys.audit
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", served.redis.xrange(stream))
    assert all(b"P-AUTH" not in fields[b"record"] for _id, fields in entries)
    streamed = [
        json.loads(codec.open(fields[b"record"], codec.field(stream, "record")))
        for _id, fields in entries
    ]
    assert [r for r in streamed if r["actor"] == actor] == records

    # Patient ids belong in the audit log only, not in the API's own log.
    log_text = (served.logs / "api.log").read_text()
    assert "P-AUTH" not in log_text and actor not in log_text


def test_an_acknowledgement_is_made_by_the_token_not_the_body(
    served: AuthApi, credentials: Credentials
) -> None:
    token = credentials.token(sub="dr-quinn")
    response = served.call("POST", f"/v1/alerts/{ALERT_ID}/ack", token, json={"by": "someone-else"})
    assert response.status_code == 200, response.text
    assert response.json()["acknowledgement"]["by"] == "dr-quinn"
    [alert] = served.get("/v1/alerts", token).json()["alerts"]
    assert alert["acknowledgement"]["by"] == "dr-quinn"
    [record] = [r for r in served.audit("dr-quinn") if r["action"] == "acknowledge"]
    assert record["patients"] == ["P-AUTH-1"] and record["resource"] == ALERT_ID
    assert record["method"] == "POST" and record["route"] == "/v1/alerts/{alert_id}/ack"
