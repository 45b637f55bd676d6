"""Fixtures that start real services: Tansu for Kafka, redis-server for Redis.

One broker and one Redis serve the whole session; each test gets its own
topics, consumer groups, key prefix and ports, so tests never see each other's
data and never touch a Redis or Kafka the machine already runs. Encryption at
rest is on, as by default: the session shares one keyring file, and tests read
what the pipeline stored through the `codec` built from their settings.

The API always requires authentication, so the session also has credentials
(:class:`Credentials`): an API keys file with one key per role, and the RSA and
EC key pairs of a test identity provider that signs JWTs. `make_settings`
points every test's API at them, with its own audit log file.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from redis import Redis

from healthsync import compiled
from healthsync.api.apikeys import ApiKeyStore
from healthsync.api.permissions import ROLES
from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.security.codec import Codec
from healthsync.security.keyring import Keyring
from healthsync.stack import Service, free_port, start_broker, start_redis
from healthsync.supervisor import Pipeline

_keyring: list[Path] = []
_CLEAR_BATCH = 1000


def pytest_sessionstart(session: pytest.Session) -> None:
    """No test runs a compiled module older than its source (healthsync.compiled)."""
    try:
        compiled.check()
    except ConfigError as exc:
        pytest.exit(str(exc), returncode=2)


@pytest.fixture(scope="session", autouse=True)
def session_keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One keyring for the session's settings (see make_settings)."""
    path = tmp_path_factory.mktemp("keyring") / "keyring.json"
    Keyring.generate().save(path)
    _keyring[:] = [path]
    return path


@pytest.fixture
def private_keyring(session_keyring: Path, tmp_path: Path) -> Path:
    """A copy of the session's keyring that a test may rotate or retire keys in."""
    keyring = tmp_path / "keyring.json"
    shutil.copy(session_keyring, keyring)
    keyring.chmod(0o600)
    return keyring


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


ISSUER = "https://idp.healthsync.test"
AUDIENCE = "healthsync-api"


@dataclass
class Credentials:
    """The session's identity provider and API keys, as a deployment would have them.

    JWTs signed with RS256 are verified against the RSA public key in a PEM file;
    ES256 ones carry the key id `ec-1`, found in a JWKS file.
    """

    directory: Path
    rsa_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(65537, 2048)
    )
    ec_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    api_keys: dict[str, str] = field(default_factory=dict)  # role -> key

    def __post_init__(self) -> None:
        store = ApiKeyStore(self.keys_file)
        for role in ROLES:
            self.api_keys[role] = store.create(f"test-{role}", role)
        self.public_key_file.write_bytes(
            self.rsa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        self.jwks_file.write_text(json.dumps({"keys": [jwk | {"kid": "ec-1", "use": "sig"}]}))

    @property
    def keys_file(self) -> Path:
        return self.directory / "api-keys.json"

    @property
    def public_key_file(self) -> Path:
        return self.directory / "idp-rsa.pem"

    @property
    def jwks_file(self) -> Path:
        return self.directory / "idp-jwks.json"

    def token(self, sub: str | None = "dr-house", algorithm: str = "RS256", **claims: Any) -> str:
        """A JWT as the identity provider issues it; `claims` override or add (None removes)."""
        now = int(time.time())
        body: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now}
        body |= {"exp": now + 300, "roles": ["clinician"]}
        body |= claims
        body = {k: v for k, v in body.items() if v is not None}
        # RFC 9068 access tokens say so in their header; ID tokens do not.
        if algorithm == "ES256":
            headers = {"kid": "ec-1", "typ": "at+jwt"}
            return jwt.encode(body, self.ec_key, algorithm="ES256", headers=headers)
        return jwt.encode(body, self.rsa_key, algorithm=algorithm, headers={"typ": "at+jwt"})

    def headers(self, role: str = "clinician") -> dict[str, str]:
        """Authorization with the API key of that role (key name `test-<role>`)."""
        return {"Authorization": f"Bearer {self.api_keys[role]}"}

    def auth_settings(self, tag: str) -> dict[str, Any]:
        return {
            "jwt_issuer": ISSUER,
            "jwt_audience": AUDIENCE,
            "jwt_public_key_file": self.public_key_file,
            "jwks_file": self.jwks_file,
            "api_keys_file": self.keys_file,
            "audit_log_file": self.directory / f"audit-{tag}.jsonl",
        }


_session_credentials: list[Credentials] = []


@pytest.fixture(scope="session", autouse=True)
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    if not _session_credentials:
        _session_credentials.append(Credentials(tmp_path_factory.mktemp("credentials")))
    return _session_credentials[0]


def make_settings(broker: Service, redis_server: Service, **sections: dict[str, Any]) -> Settings:
    """Settings private to one test: unique topics, groups, key prefix, ports and audit log."""
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
        # One ingest on the given ports; tests/test_ingest_front.py runs replicas behind HAProxy.
        "ingest": {"port": free_port(), "tls_port": free_port(), "replicas": 1},
        # One processor; tests/test_up_processors.py runs several, test_supervisor.py the default.
        "processor": {"group_id": f"g{tag}", "batch_wait_s": 0.02, "processes": 1},
        # The archiver's group too: an archiver of an earlier test that stopped while joining
        # the shared default group kept a later one waiting for its partitions past 30 s.
        "archive": {"group_id": f"a{tag}"},
        # Plain HTTP keeps the many API tests simple; tests/test_transport_tls.py covers HTTPS.
        "api": {"port": free_port(), "tls_enabled": False},
        "auth": _session_credentials[0].auth_settings(tag),
        "crypto": {"keyring_file": str(_keyring[0])},
    }
    for section, overrides in sections.items():
        values.setdefault(section, {}).update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(broker: Service, redis_server: Service) -> Settings:
    return make_settings(broker, redis_server)


@pytest.fixture
def codec(settings: Settings) -> Codec:
    """How the test reads and writes what the pipeline stores (sealed, pseudonymous keys)."""
    return Codec.from_settings(settings)


def clear_prefix(client: Redis, prefix: str) -> None:
    """Delete a test's keys (all under its own `prefix`), a thousand per command: a test
    that stored 40,000 readings leaves tens of thousands of keys, and deleting them one
    round trip each took up to 55 s of a CI run."""
    batch: list[bytes] = []
    for key in client.scan_iter(f"{prefix}:*", count=_CLEAR_BATCH):
        batch.append(key)
        if len(batch) == _CLEAR_BATCH:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


@pytest.fixture
def redis(settings: Settings) -> Iterator[Redis]:
    assert settings.redis.url
    client = Redis.from_url(settings.redis.url)
    yield client
    clear_prefix(client, settings.redis.prefix)
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
def api(pipeline: Pipeline, credentials: Credentials) -> Iterator[httpx.Client]:
    """A client of the pipeline's API, authenticated as a clinician (API key `test-clinician`)."""
    cfg = pipeline.settings.api
    with httpx.Client(
        base_url=f"http://{cfg.host}:{cfg.port}", timeout=10, headers=credentials.headers()
    ) as client:
        yield client


class Device:
    """A device connection that sends lines and reads the answer to each."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=15)
        self.reader = self.sock.makefile("rb")

    def send(self, line: bytes) -> str:
        self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")
        return self.read()

    def send_many(self, lines: list[bytes]) -> list[str]:
        """Send every line before reading any answer (ingest answers in order), as a device
        with a backlog does: one round trip to Kafka for all of them, not one each."""
        self.sock.sendall(
            b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        )
        return [self.read() for _ in lines]

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
