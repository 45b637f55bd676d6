"""A dependency that is down gives 503 with a reason, never a 500, and the API recovers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from healthsync.stack import Service, start_redis
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, make_settings, wait_for


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Service]:
    """A redis-server this test may kill (never the session's)."""
    service = start_redis(log_dir=tmp_path)
    yield service
    service.stop()


def test_redis_down_gives_503_with_reason_then_recovers(
    broker: Service, own_redis: Service, credentials: Credentials, tmp_path: Path
) -> None:
    settings = make_settings(broker, own_redis)
    running = Pipeline(settings, tmp_path / "run")
    running.start(stages=("api",))
    cfg = settings.api
    try:
        with httpx.Client(
            base_url=f"http://{cfg.host}:{cfg.port}", timeout=15, headers=credentials.headers()
        ) as api:
            assert api.get("/v1/patients").status_code == 200

            own_redis.process.send_signal(signal.SIGKILL)
            own_redis.process.wait()

            for path in ("/v1/patients", "/v1/alerts", "/v1/patients/P-1/vitals/latest"):
                response = api.get(path)
                assert response.status_code == 503, (path, response.text)
                assert "redis" in response.json()["error"]["message"].lower()
                assert response.headers["retry-after"]
            fhir = api.get("/fhir/Observation", params={"patient": "P-1"})
            assert fhir.status_code == 503
            assert fhir.json()["resourceType"] == "OperationOutcome"
            ready = api.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"].startswith("unavailable")

            # The same server back on the same port: the API reconnects by itself.
            own_redis.restart()
            wait_for(
                lambda: api.get("/v1/patients").status_code == 200,
                timeout=30,
                what="the API to answer again once Redis is back",
            )
    finally:
        running.stop()
