"""/v1/alerts in pages: every alert reachable, newest first, and a cursor out of range refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.alerts import Alert, AlertEvent
from healthsync.domain.batch import Batch
from healthsync.metrics import StatsRecorder
from healthsync.redis_client import connect_async
from healthsync.security.codec import Codec
from healthsync.stack import Service
from healthsync.store.live import RedisLiveSink
from healthsync.store.queries import LiveReader
from healthsync.store.records import Records
from tests.api.history_data import ask
from tests.conftest import Credentials, clear_prefix, make_settings


def _alert(n: int, status: Literal["open", "resolved"], opened_at: float) -> Alert:
    return Alert(
        alert_id=f"{n + 1:04x}",
        patient_id=f"P-PAGE-{n}",  # one open alert per patient and kind
        kind="threshold:heart_rate",
        vital="heart_rate",
        severity="warning",
        status=status,
        opened_at=opened_at,
        updated_at=opened_at,
        value=130,
        band="..120",
        reading_id=f"r{n}",
    )


@pytest.fixture
def settings(broker: Service, redis_server: Service) -> Iterator[Settings]:
    settings = make_settings(broker, redis_server)
    yield settings
    with Redis.from_url(str(settings.redis.url)) as client:
        clear_prefix(client, settings.redis.prefix)


def _write(settings: Settings, events: list[AlertEvent]) -> None:
    with Redis.from_url(str(settings.redis.url)) as client:
        records = Records(Codec.from_settings(settings))
        sink = RedisLiveSink(
            client, settings.redis, StatsRecorder(settings.redis.keys, "processor"), records
        )
        sink.write(Batch([], alert_events=events))
        sink.flush()


def _raise(settings: Settings, alerts: list[Alert], status: str) -> None:
    _write(settings, [AlertEvent("opened", a) for a in alerts])
    if status == "resolved":
        _write(settings, [AlertEvent("resolved", replace(a, status="resolved")) for a in alerts])


def _page(settings: Settings, token: str, query: str) -> tuple[list[str], str | None]:
    [answer] = ask(settings, token, query)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [a["alert_id"] for a in body["alerts"]], body.get("next_cursor")


def assert_paged(settings: Settings, token: str, status: str, alerts: int, limit: int) -> None:
    """The listing, followed by next_cursor, holds each of the `alerts` once, newest first,
    in as many pages as `limit` makes of them."""
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while pages <= alerts:
        query = f"/v1/alerts?status={status}&limit={limit}" + (
            f"&cursor={cursor}" if cursor else ""
        )
        [page] = ask(settings, token, query)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["count"] == len(body["alerts"]) <= limit
        seen += [a["alert_id"] for a in body["alerts"]]
        pages += 1
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    assert seen == [f"{n + 1:04x}" for n in reversed(range(alerts))], "newest first, each once"
    assert pages == -(-alerts // limit)


def test_resolved_alerts_come_in_pages(settings: Settings, credentials: Credentials) -> None:
    """Resolved alerts are read from the recent ones a page at a time, with a cursor."""
    codec = Codec.from_settings(settings)
    records = Records(codec)
    now = time.time()
    with Redis.from_url(str(settings.redis.url)) as client:
        for n in range(25):
            alert = _alert(n, "resolved", now - 1000 + n)
            client.set(codec.keys.alert(alert.alert_id), records.encode_alert(alert))
            client.zadd(codec.keys.recent_alerts, {alert.alert_id: alert.opened_at})
    assert_paged(settings, credentials.api_keys["clinician"], "resolved", 25, limit=10)


def test_open_alerts_come_in_pages_and_every_one_is_reached(
    settings: Settings, credentials: Credentials
) -> None:
    """Open alerts came in one page cut at `limit`, with no next_cursor: past the limit (a
    ward of more than 1,000 open alerts, the most a page holds) the rest never showed."""
    now = time.time()
    _write(settings, [AlertEvent("opened", _alert(n, "open", now - 60 + n)) for n in range(5)])
    assert_paged(settings, credentials.api_keys["clinician"], "open", 5, limit=2)


def test_an_alert_resolving_between_pages_does_not_hide_another(
    settings: Settings, credentials: Credentials
) -> None:
    """The cursor counted the alerts before the page: when one of them resolved before
    the next page was asked for, the listing shifted and an open alert was never shown."""
    token = credentials.api_keys["clinician"]
    now = time.time()
    opened = [_alert(n, "open", now - 60 + n) for n in range(5)]
    _write(settings, [AlertEvent("opened", alert) for alert in opened])
    first, cursor = _page(settings, token, "/v1/alerts?status=open&limit=2")
    assert first == ["0005", "0004"]
    newest = opened[4]
    resolved = replace(newest, status="resolved", updated_at=now)
    _write(settings, [AlertEvent("resolved", resolved)])
    rest: list[str] = []
    while cursor is not None:
        page, cursor = _page(settings, token, f"/v1/alerts?status=open&limit=2&cursor={cursor}")
        rest += page
    assert rest == ["0003", "0002", "0001"]


def test_alerts_raised_between_pages_are_not_shown_again(
    settings: Settings, credentials: Credentials
) -> None:
    """New alerts go to the head of the listing: with a cursor that counted positions,
    the next page began with alerts the last one had already shown."""
    token = credentials.api_keys["clinician"]
    now = time.time()
    for status in ("open", "resolved"):
        older = [_alert(n, "open", now - 600 + n) for n in range(25)]
        _raise(settings, older, status)
        seen, cursor = _page(settings, token, f"/v1/alerts?status={status}&limit=10")
        _raise(settings, [_alert(100 + n, "open", now - 60 + n) for n in range(3)], status)
        while cursor is not None:
            page, cursor = _page(
                settings, token, f"/v1/alerts?status={status}&limit=10&cursor={cursor}"
            )
            seen += page
        assert seen == [a.alert_id for a in reversed(older)], status
        with Redis.from_url(str(settings.redis.url)) as client:
            clear_prefix(client, settings.redis.prefix)


def test_a_cursor_the_listing_did_not_make_is_refused_not_a_500(
    settings: Settings, credentials: Credentials
) -> None:
    token = credentials.api_keys["clinician"]
    now = time.time()
    _write(settings, [AlertEvent("opened", _alert(n, "open", now - 60 + n)) for n in range(3)])
    _, cursor = _page(settings, token, "/v1/alerts?status=open&limit=1")
    assert cursor is not None
    for status in ("open", "resolved", "all"):
        for forged in (str(2**63 - 1), "0", cursor[:-2] + "AA"):
            [answer] = ask(settings, token, f"/v1/alerts?status={status}&cursor={forged}")
            assert answer.status_code == 400, answer.text
    # Made for the open listing, it pages neither another status nor another patient.
    for query in ("status=resolved", "status=all", "status=open&patient_id=P-PAGE-1"):
        [answer] = ask(settings, token, f"/v1/alerts?{query}&cursor={cursor}")
        assert answer.status_code == 400, answer.text


def test_alerts_opened_before_the_retention_stay_listed_while_redis_holds_them(
    settings: Settings, credentials: Credentials
) -> None:
    """The recent alerts were trimmed by when they opened: an alert open for two days, or
    one opened 30 h ago and resolved just now, left `status=all` and `status=resolved`
    while Redis still held it (an open alert for good, a resolved one for a day)."""
    now = time.time()
    still_open = _alert(0, "open", now - 2 * 86_400)
    just_resolved = _alert(1, "open", now - 30 * 3600)
    expired = _alert(2, "open", now - 30 * 3600 - 60)
    _raise(settings, [still_open], "open")
    _raise(settings, [just_resolved, expired], "resolved")
    with Redis.from_url(str(settings.redis.url)) as client:
        # As its time to live would: resolved over a retention ago, the alert is gone.
        client.delete(settings.redis.keys.alert(expired.alert_id))
    _raise(settings, [_alert(3, "open", now)], "open")  # a later batch, which trims

    token = credentials.api_keys["clinician"]
    assert _page(settings, token, "/v1/alerts?status=all") == (["0004", "0002", "0001"], None)
    assert _page(settings, token, "/v1/alerts?status=resolved") == (["0002"], None)
    assert _page(settings, token, "/v1/alerts?status=open") == (["0004", "0001"], None)


def test_an_alert_opened_while_a_filtered_page_is_read_repeats_none(settings: Settings) -> None:
    """A filtered page reads the recent alerts in several steps. They counted an offset
    from the top, so an alert opened between two steps moved every offset by one and
    the next step read its predecessor's last alert again. The reader runs in-process
    over the real redis-server; its client opens that alert right after the first step,
    as another ward's processor would."""
    now = time.time()
    # Every other alert is the patient's: a page of two takes two reads of two.
    alerts = [replace(_alert(n, "open", now - 100 * n), patient_id=f"P-{n % 2}") for n in range(4)]
    _raise(settings, alerts, "open")

    async def run() -> list[str]:
        client = connect_async(settings.redis)
        reader = LiveReader(client, Records(Codec.from_settings(settings)))
        read = client.zrevrangebyscore
        steps = 0

        async def read_then_open(*args: Any, **kwargs: Any) -> Any:
            nonlocal steps
            found = await read(*args, **kwargs)
            steps += 1
            if steps == 1:
                await asyncio.to_thread(_raise, settings, [_alert(9, "open", time.time())], "open")
            return found

        client.zrevrangebyscore = read_then_open  # type: ignore[method-assign]
        try:
            rows, _ = await reader.alerts("all", "P-1", 2)
        finally:
            await client.aclose()
        return [row["alert_id"] for row in rows]

    assert asyncio.run(run()) == ["0002", "0004"]
