"""Failing closed: no data without an audit record, no API without authentication.

These run the application in this process (httpx's ASGI transport) over the
session's real redis-server, so a test can break one audit sink while the API
is running; JWKS keys come from a real HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from pydantic import ValidationError
from redis import Redis

from healthsync.api.app import create_app
from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.stack import Service
from tests.api.auth_client import seed
from tests.api.foreign import seal_with_a_foreign_key
from tests.conftest import Credentials, clear_prefix, make_settings


def call(
    settings: Settings, token: str, *paths: str, then: Callable[[], object] = lambda: None
) -> list[httpx.Response]:
    """GET each path from a fresh app, as a client at 127.0.0.1.

    `then` runs once the app has started, before the requests.
    """

    async def run() -> list[httpx.Response]:
        app = create_app(settings)
        then()
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            return [await c.get(path) for path in paths]

    return asyncio.run(run())


@pytest.fixture
def seeded(broker: Service, redis_server: Service) -> Iterator[tuple[Settings, Redis]]:
    settings = make_settings(broker, redis_server)
    client = Redis.from_url(str(settings.redis.url))
    seed(settings, client)
    yield settings, client
    clear_prefix(client, settings.redis.prefix)
    client.close()


READS = ("/v1/patients/P-AUTH-1/vitals/latest", "/fhir/Patient/P-AUTH-1")


def assert_withheld(responses: list[httpx.Response]) -> None:
    latest, patient = responses
    assert latest.status_code == 503, latest.text
    assert "audit log cannot be written" in latest.json()["error"]["message"]
    assert "vitals" not in latest.text
    assert patient.status_code == 503
    assert patient.json()["resourceType"] == "OperationOutcome"
    assert patient.json()["issue"][0]["code"] == "transient"
    assert "Test Patient" not in patient.text


def test_no_data_is_served_when_the_audit_file_cannot_be_written(
    seeded: tuple[Settings, Redis], credentials: Credentials
) -> None:
    settings, _client = seeded
    token = credentials.api_keys["clinician"]
    assert [r.status_code for r in call(settings, token, *READS)] == [200, 200]

    audit_file = settings.auth.audit_log_file
    assert audit_file is not None

    def break_the_file() -> None:
        audit_file.unlink()
        audit_file.mkdir()  # a directory: appending fails, even as root

    # Broken while the API runs: the answers are withheld, and counted.
    *responses, metrics = call(settings, token, *READS, "/metrics", then=break_the_file)
    assert_withheld(responses)
    assert 'healthsync_api_refused_total{reason="audit_unavailable"} 2.0' in metrics.text

    # Broken before: the API does not start.
    with pytest.raises(ConfigError, match="cannot open the audit log"):
        create_app(settings)


def test_no_data_is_served_when_the_audit_stream_cannot_be_written(
    seeded: tuple[Settings, Redis], credentials: Credentials
) -> None:
    settings, client = seeded
    client.set(settings.redis.keys.audit, "not a stream")  # every XADD now fails
    assert_withheld(call(settings, credentials.api_keys["clinician"], *READS))
    assert settings.auth.audit_log_file is not None
    assert "P-AUTH-1" in settings.auth.audit_log_file.read_text(), (
        "the file sink took the records; one failed sink is enough to withhold the data"
    )


def test_the_api_refuses_to_start_open_or_unaudited(
    broker: Service, redis_server: Service, credentials: Credentials, tmp_path: Path
) -> None:
    settings = make_settings(broker, redis_server)
    settings.auth.api_keys_file = None
    settings.auth.jwt_issuer = None
    with pytest.raises(ConfigError, match="the API needs authentication"):
        create_app(settings)

    settings = make_settings(broker, redis_server)
    settings.auth.audit_log_file = None
    settings.auth.audit_redis = False
    with pytest.raises(ConfigError, match="the API needs an audit sink"):
        create_app(settings)

    shared = tmp_path / "keys.json"
    shutil.copy(credentials.keys_file, shared)
    shared.chmod(0o644)
    settings = make_settings(broker, redis_server, auth={"api_keys_file": shared})
    with pytest.raises(ConfigError, match="readable by other users"):
        create_app(settings)

    with pytest.raises(ValidationError, match="HS256 not allowed"):
        Settings(auth={"jwt_algorithms": ["HS256"]})

    settings = make_settings(broker, redis_server)
    settings.auth.jwt_audience = None
    with pytest.raises(ConfigError, match="JWT_AUDIENCE"):
        create_app(settings)


class _Jwks(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_keys_from_a_jwks_url(seeded: tuple[Settings, Redis], credentials: Credentials) -> None:
    settings, _client = seeded
    _Jwks.body = credentials.jwks_file.read_bytes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.auth.jwks_url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        settings.auth.jwks_file = None
        settings.auth.jwt_public_key_file = None
        good = credentials.token(algorithm="ES256")
        [ok] = call(settings, good, READS[0])
        assert ok.status_code == 200, ok.text
        stranger = jwt.encode(
            {"iss": "x"}, credentials.ec_key, algorithm="ES256", headers={"kid": "ec-7"}
        )
        [refused] = call(settings, stranger, READS[0])
        assert refused.status_code == 401
    finally:
        server.shutdown()
        server.server_close()


class _SilentIdp:
    """A JWKS endpoint that accepts connections and never answers (a stuck identity provider)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


def test_a_stuck_identity_provider_does_not_hold_up_audited_reads(
    seeded: tuple[Settings, Redis], credentials: Credentials
) -> None:
    settings, _client = seeded
    idp = _SilentIdp()
    settings.auth.jwks_url = f"http://127.0.0.1:{idp.port}/jwks.json"
    settings.auth.jwks_file = None
    api_key = {"Authorization": f"Bearer {credentials.api_keys['clinician']}"}

    async def run() -> tuple[int, list[bool], set[int]]:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", timeout=60) as c,
        ):
            jwt_reads = [
                asyncio.create_task(c.get(READS[0], headers={"Authorization": f"Bearer {token}"}))
                for token in [credentials.token(algorithm="ES256")] * 16
            ]
            while not idp.held:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # let every JWT read reach its key fetch
            # An API-key read is audited to the file through a worker thread: it must not
            # queue behind key fetches that wait for the identity provider.
            answered = await c.get(READS[0], headers=api_key)
            pending = [not task.done() for task in jwt_reads]
            idp.close()
            gave_up = {(await task).status_code for task in jwt_reads}
            return answered.status_code, pending, gave_up

    try:
        status, pending, gave_up = asyncio.run(run())
    finally:
        idp.close()
    assert status == 200
    assert all(pending), "the audited read was answered only after key fetches gave up"
    assert gave_up == {503}, "an identity provider that hangs up is unavailable, not an error"


def test_api_keys_are_created_listed_and_revoked_from_the_command_line(
    seeded: tuple[Settings, Redis], tmp_path: Path
) -> None:
    settings, _client = seeded
    settings.auth.api_keys_file = tmp_path / "keys.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    env |= settings.to_env()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "healthsync", "apikey", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = cli("create", "--name", "ward-board", "--role", "clinician")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("hsk_") and "shown only now" in created.stderr
    stored = settings.auth.api_keys_file.read_text()
    assert key not in stored, "only a hash of the key is stored"
    assert settings.auth.api_keys_file.stat().st_mode & 0o777 == 0o600
    assert cli("create", "--name", "x", "--role", "nurse").returncode != 0
    listed = cli("list")
    assert listed.stdout.split("\t")[:2] == ["ward-board", "clinician"]
    assert key not in listed.stdout

    [ok] = call(settings, key, READS[0])
    assert ok.status_code == 200
    assert json.loads(ok.text)["patient_id"] == "P-AUTH-1"

    # Revoked while the API runs: refused at once.
    async def revoke_while_running() -> tuple[int, int]:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            app.router.lifespan_context(app),  # closes the app's Redis client at the end
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            before = (await c.get(READS[0])).status_code
            assert (await asyncio.to_thread(cli, "revoke", "ward-board")).returncode == 0
            after = (await c.get(READS[0])).status_code
        return before, after

    assert asyncio.run(revoke_while_running()) == (200, 401)
    assert cli("revoke", "ward-board").returncode == 1


def test_a_trusted_proxy_s_forwarded_address_is_recorded_next_to_the_peer(
    seeded: tuple[Settings, Redis], credentials: Credentials
) -> None:
    settings, _client = seeded
    settings.api.trusted_proxies = ["127.0.0.1"]

    async def run() -> int:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {credentials.token(sub='dr-proxied')}"}
        headers["X-Forwarded-For"] = "10.66.66.66"
        async with (
            app.router.lifespan_context(app),  # closes the app's Redis client at the end
            httpx.AsyncClient(transport=transport, base_url="http://hs") as c,
        ):
            return (await c.get(READS[0], headers=headers)).status_code

    assert asyncio.run(run()) == 200
    assert settings.auth.audit_log_file is not None
    records = [json.loads(line) for line in settings.auth.audit_log_file.read_text().splitlines()]
    [record] = [r for r in records if r["actor"] == "dr-proxied"]
    assert (record["client"], record["forwarded_for"]) == ("127.0.0.1", "10.66.66.66")


def test_an_unreadable_entry_is_skipped_and_counted_not_a_500(
    seeded: tuple[Settings, Redis], credentials: Credentials, tmp_path: Path
) -> None:
    """One value sealed with a key this API does not have must not take the lists down."""
    settings, client = seeded
    # P-AUTH-2's latest vitals and NEWS2 score, and the open alert of P-AUTH-1.
    seal_with_a_foreign_key(settings, client, tmp_path)

    patients, summary, alerts, metrics = call(
        settings,
        credentials.api_keys["clinician"],
        "/v1/patients",
        "/v1/summary",
        "/v1/alerts?status=all",
        "/metrics",
    )
    assert patients.status_code == 200, patients.text
    assert [p["patient_id"] for p in patients.json()["patients"]] == ["P-AUTH-1"]
    assert summary.status_code == 200, summary.text
    assert summary.json()["open_alerts"]["total"] == 0
    assert alerts.status_code == 200 and alerts.json()["alerts"] == []
    assert "healthsync_api_unreadable_total 4.0" in metrics.text, metrics.text


def test_no_alerts_is_an_empty_list(
    broker: Service, redis_server: Service, credentials: Credentials
) -> None:
    settings = make_settings(broker, redis_server)
    key = credentials.api_keys["clinician"]
    for status in ("open", "resolved", "all"):
        [response] = call(settings, key, f"/v1/alerts?status={status}")
        assert response.status_code == 200, response.text
        assert response.json() == {"alerts": [], "count": 0}
