"""Authentication against a real API process: who may call at all, and the tokens that
are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from healthsync.config import Settings
from tests.api.auth_client import DATA_ROUTES, AuthApi, served
from tests.conftest import AUDIENCE, ISSUER, Credentials
from tests.test_cli import run_cli

__all__ = ["served"]  # a fixture, used by name

OPEN_ROUTES = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}


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
