"""TLS on the links between the stages: Redis, Kafka (through HAProxy) and the API.

Every service here is real: redis-server with its TLS port, Tansu behind
HAProxy, uvicorn serving HTTPS, and clients that verify the certificates of a
PKI made for the module.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from healthsync.config import KafkaSettings, RedisSettings, Settings
from healthsync.kafka import make_consumer, make_producer
from healthsync.security.certs import ca_cert_path, init_pki, service_paths
from healthsync.stack import ServerTls, Service, free_port, start_broker, start_redis
from healthsync.supervisor import Pipeline
from tests.conftest import make_settings, wait_for
from tests.test_cli import run_cli
from tests.test_ingest_tls import TlsDevice, device_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    init_pki(directory)
    return directory


def server_tls(pki: Path, service: str) -> ServerTls:
    cert, key = service_paths(pki, service)
    return ServerTls(cert, key, ca_cert_path(pki))


def handshake(
    port: int, ca: Path, max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
) -> tuple[str | None, str | None]:
    """(TLS version, cipher suite) a verifying client negotiates with 127.0.0.1:port."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = max_version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None


@pytest.fixture(scope="module")
def tls_redis(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_redis(
        log_dir=tmp_path_factory.mktemp("redis-tls"), tls=server_tls(pki, "redis")
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def tls_broker(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    run_dir = tmp_path_factory.mktemp("broker-tls")
    service = start_broker(log_dir=run_dir, tls=server_tls(pki, "kafka"), run_dir=run_dir)
    yield service
    service.stop()


def test_redis_answers_rediss_with_tls13_and_refuses_plain(tls_redis: Service, pki: Path) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0"
    settings = RedisSettings(url=url, tls_ca_file=ca_cert_path(pki), timeout_s=3)
    client = redis.Redis.from_url(url, **settings.client_options())
    try:
        assert client.ping() is True
        assert client.set("k", "v") and client.get("k") == b"v"
    finally:
        client.close()
    assert handshake(tls_redis.port, ca_cert_path(pki)) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")

    # A plain client on the same port gets no answer: the server only speaks TLS there.
    plain = redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_timeout=3)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    # TLS 1.2 is refused.
    with pytest.raises(ssl.SSLError):
        handshake(tls_redis.port, ca_cert_path(pki), max_version=ssl.TLSVersion.TLSv1_2)


def test_redis_client_without_the_ca_does_not_trust_the_server(tls_redis: Service) -> None:
    client = redis.Redis.from_url(f"rediss://127.0.0.1:{tls_redis.port}/0", socket_timeout=3)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()
    client.close()


def test_kafka_through_haproxy_produces_consumes_and_advertises_only_tls(
    tls_broker: Service, pki: Path
) -> None:
    bootstrap = f"{tls_broker.host}:{tls_broker.port}"
    ssl_client = {"security.protocol": "SSL", "ssl.ca.location": str(ca_cert_path(pki))}
    settings = KafkaSettings(bootstrap=bootstrap, client=ssl_client)

    metadata = AdminClient({"bootstrap.servers": bootstrap, **ssl_client}).list_topics(timeout=10)
    advertised = {(str(b.host), int(b.port)) for b in metadata.brokers.values()}
    assert advertised == {(tls_broker.host, tls_broker.port)}, "only the TLS front is advertised"

    topic = f"tls-{uuid.uuid4().hex[:8]}"
    # Created first: the pipeline's producers never create topics.
    admin = AdminClient({"bootstrap.servers": bootstrap, **ssl_client})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(15)
    producer = make_producer(settings)
    for n in range(3):
        producer.produce(topic, key=b"P-1", value=f"reading {n}".encode())
    assert producer.flush(15) == 0
    consumer = make_consumer(settings, f"g-{topic}", **{"session.timeout.ms": 6000})
    consumer.subscribe([topic])
    received: list[bytes] = []
    deadline = time.monotonic() + 40
    try:
        while len(received) < 3 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                received.append(message.value() or b"")
    finally:
        consumer.close()
    assert received == [b"reading 0", b"reading 1", b"reading 2"]
    assert handshake(tls_broker.port, ca_cert_path(pki)) == ("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def test_plaintext_kafka_client_gets_nothing_from_the_tls_port(tls_broker: Service) -> None:
    admin = AdminClient({"bootstrap.servers": f"{tls_broker.host}:{tls_broker.port}"})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=3)


def test_kafka_front_refuses_tls12(tls_broker: Service, pki: Path) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(tls_broker.port, ca_cert_path(pki), max_version=ssl.TLSVersion.TLSv1_2)


def test_api_serves_https_with_tls13(
    broker: Service, redis_server: Service, pki: Path, tmp_path: Path
) -> None:
    settings = make_settings(broker, redis_server, api={"tls_enabled": True}, tls={"dir": pki})
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start(stages=("api",))
    try:
        assert pipeline.api_url.startswith("https://")
        verify = ssl.create_default_context(cafile=str(ca_cert_path(pki)))
        with httpx.Client(base_url=pipeline.api_url, verify=verify, timeout=10) as api:
            assert api.get("/healthz").json() == {"status": "ok"}
        assert handshake(settings.api.port, ca_cert_path(pki)) == (
            "TLSv1.3",
            "TLS_AES_256_GCM_SHA384",
        )
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{settings.api.port}/healthz", timeout=5)
        # A TLS 1.3 client without the AES-256 suite gets no answer.
        assert '"status"' in https_get(settings.api.port, pki, "TLS_AES_256_GCM_SHA384")
        assert '"status"' not in https_get(settings.api.port, pki, "TLS_AES_128_GCM_SHA256")
    finally:
        pipeline.stop()


def https_get(port: int, pki: Path, suites: str) -> str:
    """GET /healthz with `openssl s_client` offering only these TLS 1.3 suites."""
    result = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-quiet"),
            *("-ciphersuites", suites, "-CAfile", str(ca_cert_path(pki))),
        ],
        input="GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout


def test_missing_api_certificate_is_one_clear_error(
    broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    settings = make_settings(broker, redis_server, api={"tls_enabled": True})
    settings.tls.dir = tmp_path / "no-certs"
    result = run_cli(settings, "api")
    assert result.returncode == 2
    assert result.stderr.startswith("healthsync: cannot load the api certificate"), result.stderr


def test_check_reaches_redis_and_kafka_over_tls(
    tls_redis: Service, tls_broker: Service, pki: Path
) -> None:
    ca = str(ca_cert_path(pki))
    settings = Settings(
        kafka={
            "bootstrap": f"{tls_broker.host}:{tls_broker.port}",
            "client": {"security.protocol": "SSL", "ssl.ca.location": ca},
        },
        redis={"url": f"rediss://127.0.0.1:{tls_redis.port}/0", "tls_ca_file": ca},
    )
    result = run_cli(settings, "check")
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


@pytest.mark.slow
def test_reading_crosses_the_pipeline_with_tls_on_every_link(tmp_path: Path) -> None:
    """Device (mutual TLS) -> ingest -> Kafka (TLS via HAProxy) -> processor -> Redis (TLS)
    -> API (HTTPS): the embedded stack as `healthsync up` runs it."""
    settings = Settings()
    settings.ingest.port = free_port()
    settings.ingest.tls_port = free_port()
    settings.api.port = free_port()
    settings.processor.batch_wait_s = 0.02
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start()
    try:
        assert settings.kafka.client["security.protocol"] == "SSL"
        assert str(settings.redis.url).startswith("rediss://")
        device = TlsDevice(settings, device_context(settings, "mon-0009"))
        reply = device.send(b"device_id=mon-0009 patient_id=P-0009 seq=1 heart_rate=81 spo2=97")
        assert device.sock.version() == "TLSv1.3"
        device.close()
        assert reply.startswith("OK "), reply

        verify = ssl.create_default_context(cafile=str(ca_cert_path(settings.tls.dir)))
        assert pipeline.local_key_file is not None, "up's own API key, as for a newcomer"
        bearer = {"Authorization": f"Bearer {pipeline.local_key_file.read_text().strip()}"}
        with httpx.Client(
            base_url=pipeline.api_url, verify=verify, timeout=10, headers=bearer
        ) as api:

            def latest() -> dict[str, object] | None:
                response = api.get("/v1/patients/P-0009/vitals/latest")
                return response.json() if response.status_code == 200 else None

            body = wait_for(latest, timeout=60, what="the reading through TLS Kafka and Redis")
        assert body["vitals"]["heart_rate"]["value"] == 81  # type: ignore[index]
        assert body["vitals"]["heart_rate"]["reading_id"] == reply.split()[1]  # type: ignore[index]
    finally:
        pipeline.stop()


def test_embedded_tls_can_be_switched_off(tmp_path: Path) -> None:
    settings = Settings(kafka={"embedded_tls": False}, redis={"embedded_tls": False})
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start(stages=())
    try:
        assert str(settings.redis.url).startswith("redis://")
        assert "security.protocol" not in settings.kafka.client
        client = redis.Redis.from_url(str(settings.redis.url), **settings.redis.client_options())
        assert client.ping() is True
        client.close()
        admin = AdminClient({"bootstrap.servers": str(settings.kafka.bootstrap)})
        assert admin.list_topics(timeout=10).brokers
        assert not (tmp_path / "certs").exists(), "no PKI is made when nothing needs one"
    finally:
        pipeline.stop()


def test_the_embedded_redis_takes_only_the_stages_with_a_certificate_and_the_password(
    tmp_path: Path,
) -> None:
    settings = Settings(kafka={"embedded_tls": False})
    settings.api.port = free_port()
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start(stages=("api",))
    try:
        url = str(settings.redis.url)
        assert url.startswith("rediss://") and "@" in url, "a user and a password"
        parts = urlsplit(url)
        where = f"rediss://{parts.hostname}:{parts.port}/0"
        ca = str(ca_cert_path(settings.tls.dir))
        # Another local process: the CA, but no client certificate.
        anonymous = redis.Redis.from_url(where, ssl_ca_certs=ca, socket_timeout=5)
        with pytest.raises(redis.exceptions.ConnectionError):
            anonymous.ping()
        anonymous.close()
        # A client certificate from the CA, but no password.
        cert, key = service_paths(settings.tls.dir, "api")
        no_password = redis.Redis.from_url(
            where, ssl_ca_certs=ca, ssl_certfile=str(cert), ssl_keyfile=str(key)
        )
        with pytest.raises(redis.exceptions.AuthenticationError):
            no_password.ping()
        no_password.close()
        # The API stage, which has both, is ready.
        verify = ssl.create_default_context(cafile=ca)
        ready = wait_for(
            lambda: httpx.get(f"{pipeline.api_url}/readyz", verify=verify).json(),
            what="the API",
        )
        assert ready["checks"]["redis"] == "ok"
    finally:
        pipeline.stop()
