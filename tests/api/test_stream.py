"""GET /v1/stream against real processes: device -> ingest -> Tansu -> processor -> Redis -> SSE."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from healthsync.api.apikeys import ApiKeyStore
from healthsync.api.app import create_app
from healthsync.api.feed import Subscription
from healthsync.api.sse import Outgoing
from healthsync.config import Settings
from healthsync.stack import Service
from healthsync.store.events import LiveEvent
from healthsync.supervisor import Pipeline
from tests.api.sse import Frame, frames, until
from tests.conftest import Credentials, Device, make_settings, wait_for


@pytest.fixture
def settings(broker: Service, redis_server: Service) -> Settings:
    # A short heartbeat, so a quiet stream shows one without a long wait.
    return make_settings(broker, redis_server, api={"stream_heartbeat_s": 0.5})


def stream(api: httpx.Client, **headers: str) -> Any:
    return api.stream("GET", "/v1/stream", headers=headers, timeout=httpx.Timeout(20.0))


def next_vitals(events: Iterator[Frame], patient: str) -> Frame:
    for _ in range(50):
        frame = until(events, "vitals")
        if frame.data["patient_id"] == patient:
            return frame
    raise AssertionError(f"no vitals of {patient}")


def next_alert(events: Iterator[Frame], kind: str) -> Frame:
    # Other alerts, such as the device's offline alert, may open first; only `kind` counts.
    for _ in range(20):
        frame = until(events, "alert.opened", limit=100)
        if frame.data["data"]["kind"] == kind:
            return frame
    raise AssertionError(f"no {kind} alert opened")


def audited(settings: Settings) -> list[dict[str, Any]]:
    assert settings.auth.audit_log_file is not None
    lines = settings.auth.audit_log_file.read_bytes().splitlines()
    return [orjson.loads(line) for line in lines if line]


def test_a_reading_arrives_on_the_stream_audited_and_resumable(
    pipeline: Pipeline, api: httpx.Client, device: Device
) -> None:
    with stream(api) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = frames(response)
        hello = until(events, "hello")
        assert hello.id is not None
        assert device.send(b"device_id=mon-s1 patient_id=P-S1 heart_rate=131 spo2=90").startswith(
            "OK"
        )
        first = next_vitals(events, "P-S1")
        assert first.data["data"]["heart_rate"]["value"] == 131
        assert first.data["data"]["spo2"]["value"] == 90
        # The NEWS2 the reading produced travels with it: HR 131 scores 3, SpO2 90 scores 3.
        assert first.data["news2"]["total"] >= 6
        # Quiet now: the heartbeat keeps the connection alive.
        assert until(events, "comment").data == "keep-alive"

    streamed = [r for r in audited(pipeline.settings) if r["action"] == "stream"]
    assert streamed[0]["patients"] == []  # the opening itself
    assert ["P-S1"] in [r["patients"] for r in streamed]
    assert all(r["actor"] == "apikey:test-clinician" for r in streamed)

    # Missed while disconnected, delivered on reconnect with Last-Event-ID, and nothing older.
    assert device.send(b"device_id=mon-s1 patient_id=P-S1 heart_rate=88").startswith("OK")
    assert device.send(b"device_id=mon-s2 patient_id=P-S2 heart_rate=70").startswith("OK")
    assert first.id is not None
    with stream(api, **{"Last-Event-ID": first.id}) as response:
        events = frames(response)
        assert until(events, "hello").id == first.id
        # The two patients are on different partitions, so either may come first; the
        # reading already delivered (heart rate 131) must not come again.
        resumed = [until(events, "vitals"), until(events, "vitals")]
        heart_rates = {f.data["patient_id"]: f.data["data"]["heart_rate"]["value"] for f in resumed}
        assert heart_rates == {"P-S1": 88, "P-S2": 70}

        # An alert opens on the stream, and its acknowledgement reaches every open stream.
        # Critical samples spanning the engine's hold of an uncorroborated SpO2 fall
        # (15 s, a probe dip until then) open it when the last one arrives.
        now = int(time.time())
        for at in (now + 5, now + 12, now + 20):
            line = f"device_id=mon-s1 patient_id=P-S1 ts={at} spo2=82"
            assert device.send(line.encode()).startswith("OK")
        opened = next_alert(events, "threshold:spo2")
        assert opened.data["patient_id"] == "P-S1"
        alert_id = opened.data["data"]["alert_id"]
        assert api.post(f"/v1/alerts/{alert_id}/ack").status_code == 200
        acked = until(events, "alert.acknowledged", limit=100)
        assert acked.data["data"]["alert_id"] == alert_id
        assert acked.data["data"]["acknowledgement"]["by"] == "apikey:test-clinician"


def test_the_stream_refuses_what_it_must(
    pipeline: Pipeline, api: httpx.Client, credentials: Credentials
) -> None:
    base = api.base_url
    assert httpx.get(f"{base}/v1/stream").status_code == 401
    viewer = httpx.get(f"{base}/v1/stream", headers=credentials.headers("viewer"))
    assert viewer.status_code == 403
    bad = api.get("/v1/stream", headers={"Last-Event-ID": "../../etc"})
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["error"]["message"]
    # An id beyond the stream's end (Redis was replaced, say): start over, and say so.
    with stream(api, **{"Last-Event-ID": "99999999999999-0"}) as response:
        events = frames(response)
        until(events, "hello")
        assert until(events, "reset").data["reason"]


def test_a_client_that_falls_behind_is_cut_off_not_buffered() -> None:
    def events(ms: int, n: int) -> list[Outgoing]:
        return [Outgoing.of(LiveEvent(f"{ms}-{i}", "vitals", "P", {})) for i in range(n)]

    async def run() -> tuple[bool, int, list[Outgoing]]:
        subscription = Subscription(limit=10)
        subscription.offer(events(1, 8))
        kept = await subscription.take(0.1)
        subscription.offer(events(2, 11))
        return subscription.overflowed, len(subscription.pending), kept

    overflowed, pending, kept = asyncio.run(run())
    assert len(kept) == 8
    assert overflowed
    assert pending == 0


async def _read_stream(settings: Settings, token: str, then: Callable[[], object]) -> list[Frame]:
    """The frames of one stream until it ends (or 20 s, a stream that never ended)."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://hs") as client,
    ):
        headers = {"Authorization": f"Bearer {token}"}
        asyncio.get_running_loop().call_later(0.5, then)
        answer = await asyncio.wait_for(client.get("/v1/stream", headers=headers), 20)
    assert answer.status_code == 200, answer.text
    return list(frames(answer))


def test_a_stream_ends_once_its_credential_expires_or_is_revoked(
    broker: Service, redis_server: Service, credentials: Credentials
) -> None:
    """Credentials were checked when the stream opened, and the heartbeat kept it open:
    PHI went on flowing to a token past its expiry and to a revoked API key."""
    settings = make_settings(
        broker, redis_server, api={"stream_heartbeat_s": 0.2}, auth={"jwt_leeway_s": 0}
    )
    expiring = credentials.token(exp=int(time.time()) + 2)
    ended = asyncio.run(_read_stream(settings, expiring, lambda: None))
    assert ended[0].event == "hello"
    assert ended[-1].event == "error"
    assert "credentials" in ended[-1].data["message"]

    keys = ApiKeyStore(credentials.keys_file)
    key = keys.create("stream-revoked", "clinician")
    try:
        ended = asyncio.run(_read_stream(settings, key, lambda: keys.revoke("stream-revoked")))
    finally:
        keys.revoke("stream-revoked")
    assert ended[-1].event == "error"
    assert "credentials" in ended[-1].data["message"]


def test_the_api_stops_on_sigterm_while_a_stream_is_open(
    broker: Service, redis_server: Service, credentials: Credentials
) -> None:
    """uvicorn waits for open connections to finish before it stops, and a stream never
    finishes: `healthsync api` ignored SIGTERM while a dashboard was open, until the
    supervisor killed it (and its shutdown never ran)."""
    settings = make_settings(broker, redis_server, api={"stream_heartbeat_s": 0.2})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    api = subprocess.Popen(
        [sys.executable, "-m", "healthsync", "api"],
        env=env | settings.to_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://{settings.api.host}:{settings.api.port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), what="the API to start")
        with (
            httpx.Client(base_url=base, headers=credentials.headers()) as client,
            stream(client) as response,
        ):
            events = frames(response)
            until(events, "hello")
            api.send_signal(signal.SIGTERM)
            assert "stopping" in until(events, "error").data["message"]
            # Shut down, then ended by the signal it was sent (uvicorn raises it again).
            assert api.wait(timeout=15) == -signal.SIGTERM
        assert api.stderr is not None
        log = api.stderr.read().decode()
        assert "Traceback" not in log, log
        assert "Application shutdown complete" in log
        assert "graceful shutdown exceeded" not in log  # the stream ended, not cancelled
    finally:
        api.kill()
        api.wait()
        if api.stderr is not None:
            api.stderr.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False
