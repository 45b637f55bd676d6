"""The audit log against a real API process: each read with who, which patient, what,
when and where, and an acknowledgement made by the token."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import cast

from healthsync.security.codec import Codec
from tests.api.auth_client import ALERT_ID, AuthApi, served
from tests.conftest import Credentials

__all__ = ["served"]  # a fixture, used by name


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
