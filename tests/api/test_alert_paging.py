"""/v1/alerts in pages: every open alert reachable, and a cursor out of range refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.batch import Batch
from healthsync.metrics import StatsRecorder
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.live import RedisLiveSink
from healthsync.store.records import Records
from tests.api.history_data import ask
from tests.conftest import Credentials, clear_prefix, make_settings

OPEN = 5


@pytest.fixture
def open_alerts(broker: Service, redis_server: Service) -> Iterator[Settings]:
    """Five open alerts, one a second apart (a00 the oldest), as the processor stores them."""
    settings = make_settings(broker, redis_server)
    client = Redis.from_url(str(settings.redis.url))
    now = time.time()
    events = [
        AlertEvent(
            "opened",
            Alert(
                alert_id=f"a{n:02d}",
                patient_id=f"P-{n}",
                kind="threshold:spo2",
                vital="spo2",
                severity="warning",
                status="open",
                opened_at=now - 60 + n,
                updated_at=now - 60 + n,
                value=89,
                band="92..-",
                reading_id=f"r-{n}",
            ),
        )
        for n in range(OPEN)
    ]
    sink = RedisLiveSink(
        client,
        settings.redis,
        StatsRecorder(settings.redis.keys, "processor"),
        Records(Codec.from_settings(settings)),
    )
    sink.write(Batch([], alert_events=events))
    sink.flush()
    yield settings
    clear_prefix(client, settings.redis.prefix)
    client.close()


def test_open_alerts_come_in_pages_and_every_one_is_reached(
    open_alerts: Settings, credentials: Credentials
) -> None:
    """Open alerts came in one page cut at `limit`, with no next_cursor: past the limit (a
    ward of more than 1,000 open alerts, the most a page holds) the rest never showed."""
    token = credentials.api_keys["clinician"]
    seen: list[str] = []
    path = "/v1/alerts?status=open&limit=2"
    for _ in range(OPEN):
        [answer] = ask(open_alerts, token, path)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["count"] == len(page["alerts"]) <= 2
        seen += [a["alert_id"] for a in page["alerts"]]
        if "next_cursor" not in page:
            break
        path = f"/v1/alerts?status=open&limit=2&cursor={page['next_cursor']}"
    assert seen == [f"a{n:02d}" for n in reversed(range(OPEN))]  # newest first, each once


def test_a_cursor_past_any_listing_is_refused_not_a_500(
    open_alerts: Settings, credentials: Credentials
) -> None:
    token = credentials.api_keys["clinician"]
    for status in ("open", "resolved", "all"):
        [answer] = ask(open_alerts, token, f"/v1/alerts?status={status}&cursor={2**63 - 1}")
        assert answer.status_code == 422, answer.text
