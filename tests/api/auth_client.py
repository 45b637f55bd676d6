"""A real API process over seeded data, and the client the authentication tests call it with.

The API runs as its own process over the session's redis-server, seeded by the
processor's own Redis sinks with two patients, an open alert and NEWS2 scores.
Tokens come from the session's test identity provider (tests/conftest.py):
RS256 JWTs verified with a PEM public key, ES256 ones with a JWKS file, and
one API key per role.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
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
from tests.conftest import Credentials, clear_prefix, make_settings

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
