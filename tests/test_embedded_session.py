"""`up` against its embedded broker: consumers join their group in a second, not three.

Tansu answers a JoinGroup only once half the member's session timeout has passed, so
with the usual 6 s every processor start, and every restart after a broker recycle,
left readings waiting 3 s (bench/README.md has the recycle's timeline).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from healthsync.config import Settings
from healthsync.kafka import ensure_topics
from healthsync.stack import Service
from healthsync.supervisor import EMBEDDED_SESSION_TIMEOUT_MS, Pipeline
from healthsync.wiring import build_archiver, build_processor, build_pusher
from tests.conftest import make_settings


def stage_session_timeout(run_dir: Path) -> str:
    pipeline = Pipeline(Settings(), run_dir)
    pipeline.start(stages=())
    try:
        return pipeline.env["HEALTHSYNC_PROCESSOR_SESSION_TIMEOUT_MS"]
    finally:
        pipeline.stop()


def test_the_stages_get_a_short_session_against_the_embedded_broker(tmp_path: Path) -> None:
    assert EMBEDDED_SESSION_TIMEOUT_MS < 6000
    assert stage_session_timeout(tmp_path / "run") == str(EMBEDDED_SESSION_TIMEOUT_MS)


def test_a_configured_session_timeout_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALTHSYNC_PROCESSOR_SESSION_TIMEOUT_MS", "6000")
    assert stage_session_timeout(tmp_path / "run") == "6000"


def stage_consumer(stage: str, settings: Settings) -> Consumer:
    """The consumer a stage builds for itself."""
    if stage == "process":
        return build_processor(settings).consumer
    if stage == "archive":
        return build_archiver(settings).consumer
    return build_pusher(settings).consumer


@pytest.mark.parametrize("stage", ["process", "archive", "push"])
def test_every_consumer_stage_keeps_its_partitions_with_a_short_session(
    stage: str, broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    """Each stage heartbeats within its session: with librdkafka's default heartbeat
    (3 s) a 2 s session was dropped by the broker and rejoined every 3 s."""
    settings = make_settings(
        broker,
        redis_server,
        processor={"session_timeout_ms": EMBEDDED_SESSION_TIMEOUT_MS},
        fhir={"ehr_base_url": "http://127.0.0.1:9/fhir"},
        archive={"url": f"file://{tmp_path / 'archive'}"},
    )
    ensure_topics(settings.kafka)
    consumer = stage_consumer(stage, settings)
    changes: list[str] = []
    consumer.subscribe(
        [settings.kafka.vitals_topic],
        on_assign=lambda _c, _p: changes.append("assigned"),
        on_revoke=lambda _c, _p: changes.append("revoked"),
    )
    try:
        deadline = time.monotonic() + 4 * EMBEDDED_SESSION_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            consumer.poll(0.1)
        held = list(changes)  # closing revokes, as it should
    finally:
        consumer.close()
    assert held == ["assigned"]
