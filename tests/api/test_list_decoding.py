"""The /v1 lists decrypt their entries off the event loop, so the API keeps answering.

A list of thousands of patients or alerts means thousands of decryptions. Run
on the event loop they would stall every other request of the process (the
health checks, the live stream) until they were done. Each test holds one
list in the middle of its decoding: the report of an entry it cannot open
(:class:`LiveReader`'s ``on_unreadable``) waits until ``/healthz`` has
answered. Decoded in a worker thread, ``/healthz`` answers first; decoded on
the event loop, it could not answer until the list had given up waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from healthsync.api.app import create_app
from healthsync.api.services import ApiServices
from healthsync.config import Settings
from healthsync.security.crypto import DecryptError
from healthsync.stack import Service
from tests.api.auth_client import seed
from tests.api.foreign import seal_with_a_foreign_key
from tests.conftest import Credentials, clear_prefix, make_settings

# How long a held list waits for /healthz before it gives up (only reached on failure).
_HOLD_S = 10.0


@pytest.fixture
def with_a_foreign_value(
    broker: Service, redis_server: Service, tmp_path: Path
) -> Iterator[Settings]:
    """Two patients with an open alert; one patient's vitals and score, and the alert,
    sealed with a key this API does not have."""
    settings = make_settings(broker, redis_server, archive={"url": (tmp_path / "a").as_uri()})
    client = Redis.from_url(str(settings.redis.url))
    seed(settings, client)
    seal_with_a_foreign_key(settings, client, tmp_path)
    yield settings
    clear_prefix(client, settings.redis.prefix)
    client.close()


def _held(settings: Settings, token: str, path: str) -> list[bool]:
    """Whether /healthz answered while `path` was held in the middle of its decoding
    ([True]), or the hold gave up waiting for it ([False])."""
    inside, answered = threading.Event(), threading.Event()
    held: list[bool] = []

    def hold(_error: DecryptError) -> None:
        if not inside.is_set():
            inside.set()
            held.append(answered.wait(_HOLD_S))

    async def run() -> None:
        app = create_app(settings)
        services: ApiServices = app.state.services
        services.reader.on_unreadable = hold
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            listing = asyncio.create_task(c.get(path))
            assert await asyncio.to_thread(inside.wait, _HOLD_S), "the list met no foreign value"
            health = await c.get("/healthz")
            answered.set()
            assert health.status_code == 200
            listed = await listing
            assert listed.status_code == 200, listed.text

    asyncio.run(run())
    return held


@pytest.mark.parametrize("path", ["/v1/patients", "/v1/summary", "/v1/alerts?status=all"])
def test_the_api_answers_while_a_list_is_being_decrypted(
    with_a_foreign_value: Settings, credentials: Credentials, path: str
) -> None:
    token = credentials.api_keys["clinician"]
    held = _held(with_a_foreign_value, token, path)
    assert held == [True], "/healthz waited for the list's decryption"
