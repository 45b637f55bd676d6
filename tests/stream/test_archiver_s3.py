"""The archiver on S3 (moto in server mode) while S3 goes away and comes back.

Nothing is lost: the archiver retries, the backlog waits in Kafka, its lag
shows in the API's /metrics (rendered here from the same Redis hashes), and it
catches up once S3 answers again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, cast

import boto3
import pytest
from moto.server import ThreadedMotoServer
from prometheus_client import CollectorRegistry, generate_latest
from redis import Redis

from healthsync.config import Settings
from healthsync.kafka import ensure_topics
from healthsync.metrics import COMPONENTS, PipelineCollector
from healthsync.stack import Service, free_port
from healthsync.wiring import build_archiver
from tests.conftest import make_settings, wait_for
from tests.stream.test_archiver import archived_ids, produce, readings


@pytest.fixture
def s3_port(monkeypatch: pytest.MonkeyPatch) -> int:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    return free_port()


@pytest.fixture
def moto_server(s3_port: int) -> Iterator[list[ThreadedMotoServer]]:
    """The running server in a list, so a test can stop it and start another on the port."""
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)]
    servers[0].start()
    yield servers
    servers[-1].stop()


def metrics_text(settings: Settings) -> str:
    """/metrics as the API renders it, from the counters the stages keep in Redis."""
    assert settings.redis.url
    client = Redis.from_url(settings.redis.url, decode_responses=True)
    collector = PipelineCollector()
    collector.snapshot = {
        c: cast("dict[str, str]", client.hgetall(settings.redis.keys.stats(c))) for c in COMPONENTS
    }
    client.close()
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def lag(settings: Settings) -> float:
    lines = [
        line
        for line in metrics_text(settings).splitlines()
        if line.startswith("healthsync_archive_lag{")
    ]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines) if lines else -1


def test_s3_down_then_back_loses_nothing_and_shows_lag(
    broker: Service, redis_server: Service, s3_port: int, moto_server: list[ThreadedMotoServer]
) -> None:
    endpoint = f"http://127.0.0.1:{s3_port}"
    s3: Any = boto3.client("s3", region_name="eu-west-1", endpoint_url=endpoint)
    s3.create_bucket(
        Bucket="hs-ward", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    settings = make_settings(
        broker,
        redis_server,
        archive={"url": "s3://hs-ward/archive", "s3_endpoint": endpoint, "roll_s": 0.5},
    )
    ensure_topics(settings.kafka)
    archiver = build_archiver(settings)
    thread = threading.Thread(target=archiver.run, daemon=True)
    thread.start()
    try:
        produce(settings, readings(0, 100))
        wait_for(lambda: len(archived_ids(settings)) == 100, 60, "the first readings")

        moto_server[0].stop()
        produce(settings, readings(100, 200))
        wait_for(lambda: lag(settings) >= 200, 60, "the backlog in /metrics")
        wait_for(
            lambda: "healthsync_archive_errors_total" in metrics_text(settings), 30, "the errors"
        )

        moto_server.append(ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False))
        moto_server[-1].start()
        wait_for(lambda: len(archived_ids(settings)) >= 300, 90, "catching up")
        wait_for(lambda: lag(settings) == 0, 30, "no lag")
    finally:
        archiver.stop()
        thread.join(30)
    assert sorted(archived_ids(settings)) == sorted(r.reading_id for r in readings(0, 300))
    for item in s3.list_objects_v2(Bucket="hs-ward")["Contents"]:
        head = s3.head_object(Bucket="hs-ward", Key=item["Key"])
        assert head["ServerSideEncryption"] == "AES256"
