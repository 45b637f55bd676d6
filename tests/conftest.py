"""Fixtures that start real services: Tansu for Kafka, redis-server for Redis.

One broker and one Redis serve the whole session; each test gets its own
topics, consumer group, key prefix and ports, so tests never see each other's
data and never touch a Redis or Kafka the machine already runs.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.stack import Service, free_port, start_broker, start_redis
from healthsync.supervisor import Pipeline


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_broker(log_dir=tmp_path_factory.mktemp("broker"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(log_dir=tmp_path_factory.mktemp("redis"))
    yield service
    service.stop()


def make_settings(broker: Service, redis_server: Service, **sections: dict[str, Any]) -> Settings:
    """Settings private to one test: unique topics, group, key prefix and ports."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "kafka": {
            "bootstrap": f"{broker.host}:{broker.port}",
            "vitals_topic": f"t{tag}.vitals",
            "observations_topic": f"t{tag}.observations",
            "alerts_topic": f"t{tag}.alerts",
            "dlq_topic": f"t{tag}.dlq",
            "partitions": 3,
        },
        "redis": {"url": f"redis://{redis_server.host}:{redis_server.port}/0", "prefix": f"t{tag}"},
        "ingest": {"port": free_port(), "tls_port": free_port()},
        "processor": {"group_id": f"g{tag}", "batch_wait_s": 0.02},
        # Plain HTTP keeps the many API tests simple; tests/test_transport_tls.py covers HTTPS.
        "api": {"port": free_port(), "tls_enabled": False},
    }
    for section, overrides in sections.items():
        values.setdefault(section, {}).update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(broker: Service, redis_server: Service) -> Settings:
    return make_settings(broker, redis_server)


@pytest.fixture
def redis(settings: Settings) -> Iterator[Redis]:
    assert settings.redis.url
    client = Redis.from_url(settings.redis.url)
    yield client
    for key in client.scan_iter(f"{settings.redis.prefix}:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    """Ingest, processor and API as real processes against the session's services."""
    running = Pipeline(settings, tmp_path)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def start_ingest(
    broker: Service, redis_server: Service, tmp_path: Path
) -> Iterator[Callable[..., Settings]]:
    """Start just the ingest server with some settings changed; stopped after the test.

    Its TLS listener uses a PKI created in the test's run dir: `settings.tls.dir`
    of the returned settings, where a test can issue device certificates.
    """
    started: list[Pipeline] = []

    def start(broker_service: Service | None = None, **ingest: Any) -> Settings:
        settings = make_settings(broker_service or broker, redis_server, ingest=ingest)
        running = Pipeline(settings, tmp_path / f"ingest-{len(started)}")
        started.append(running)
        running.start(stages=("ingest",))
        return settings

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def api(pipeline: Pipeline) -> Iterator[httpx.Client]:
    cfg = pipeline.settings.api
    with httpx.Client(base_url=f"http://{cfg.host}:{cfg.port}", timeout=10) as client:
        yield client


class Device:
    """A device connection that sends lines and reads the answer to each."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=15)
        self.reader = self.sock.makefile("rb")

    def send(self, line: bytes) -> str:
        self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")
        return self.read()

    def read(self) -> str:
        return self.reader.readline().decode().rstrip("\n")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def device(pipeline: Pipeline) -> Iterator[Device]:
    cfg = pipeline.settings.ingest
    connection = Device(cfg.host, cfg.port)
    yield connection
    connection.close()


T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll until `probe` returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
