"""Roles and scopes against a real API process: what each role and SMART scope may do."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.api.auth_client import ALERT_ID, DATA_ROUTES, AuthApi, served
from tests.conftest import Credentials

__all__ = ["served"]  # a fixture, used by name


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
    acked = served.call("POST", f"/v1/alerts/{ALERT_ID}/ack", token)
    assert acked.status_code == 200
    # It acknowledges without reading: the answer holds the acknowledgement, not the
    # alert (its patient, value and evidence), which the token may not read.
    assert acked.json() == {
        "alert_id": ALERT_ID,
        "acknowledged": True,
        "acknowledgement": {"by": "dr-scoped", "at": acked.json()["acknowledgement"]["at"]},
    }
    reader = credentials.token(sub="dr-reads", scope="user/*.read user/Flag.write")
    assert served.call("POST", f"/v1/alerts/{ALERT_ID}/ack", reader).json()["patient_id"]
    # OpenID scopes are no SMART resource scopes: with only those, the role alone counts.
    openid = credentials.token(sub="dr-openid", scope="openid profile")
    assert served.get("/v1/patients", openid).status_code == 200
