"""`up` runs the scheduler: a run an admin asks the API for is started and finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from healthsync.stack import Service
from healthsync.supervisor import STAGES, Pipeline
from tests.conftest import Credentials, clear_prefix, make_settings, wait_for


def test_the_pipeline_scheduler_starts_what_the_api_queues(
    broker: Service, redis_server: Service, credentials: Credentials, tmp_path: Path
) -> None:
    assert "scheduler" in STAGES
    settings = make_settings(broker, redis_server, jobs={"output_url": f"file://{tmp_path}/out"})
    pipeline = Pipeline(settings, tmp_path / "run")
    client = Redis.from_url(str(settings.redis.url))
    try:
        pipeline.start(stages=("api", "scheduler"))
        base = f"http://{settings.api.host}:{settings.api.port}"
        with httpx.Client(base_url=base, timeout=10, headers=credentials.headers("admin")) as http:
            answer = http.post("/v1/jobs/alarm-report/run", json={"run_id": "up-1"})
            assert answer.status_code == 202, answer.text

            def finished() -> dict[str, Any] | None:
                run: dict[str, Any] = http.get("/v1/jobs/up-1").json()
                return run if run["status"] in ("succeeded", "failed") else None

            run = wait_for(finished, timeout=60, what="the run to finish")
        assert (run["status"], run["runner"], run["trigger"]) == ("succeeded", "local", "api")
        # The job's own output, in the run dir's logs/jobs/: its last line is printed just
        # after the run record says succeeded, so it may land a moment later.
        log = tmp_path / "run/logs/jobs/up-1.log"
        wait_for(lambda: "up-1 succeeded" in log.read_text(), timeout=10, what="the job's log")
        assert (tmp_path / "out/jobs/alarm-report/up-1/report.html").exists()
    finally:
        pipeline.stop()
        clear_prefix(client, settings.redis.prefix)
        client.close()
