"""Trends over the archive through the API: ISO 8601 periods, buckets checked by hand."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from healthsync.api.app import create_app
from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.stack import Service
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from tests.conftest import Credentials, make_settings

T0 = 1_795_860_000.0  # 2026-11-28 10:00 UTC: older than Redis keeps
PATIENT = "PX-31337"


def reading(seq: int, ts: float, heart_rate: float) -> Reading:
    return Reading(
        reading_id=reading_id_for("mon-9", seq, round(ts * 1000)),
        device_id="mon-9",
        patient_id=PATIENT,
        ts=ts,
        received_at=ts,
        vitals={"heart_rate": heart_rate},
        seq=seq,
    )


def get(settings: Settings, token: str, path: str) -> httpx.Response:
    async def run() -> httpx.Response:
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://hs", headers=headers) as c,
        ):
            return await c.get(path)

    return asyncio.run(run())


def test_hourly_trends_of_readings_only_the_archive_still_has(
    broker: Service, redis_server: Service, credentials: Credentials, tmp_path: Path
) -> None:
    settings = make_settings(broker, redis_server, archive={"url": f"file://{tmp_path}/archive"})
    values = [(T0 + 60, 80), (T0 + 120, 70), (T0 + 3000, 90), (T0 + 3600, 60), (T0 + 4000, 64),
              (T0 + 5000, 100), (T0 + 7000, 62)]  # fmt: skip
    batch = [reading(i, ts, hr) for i, (ts, hr) in enumerate(values)]
    Archive.from_settings(settings).writer().write_readings(Span(0, 0, 6), batch)

    answer = get(
        settings,
        credentials.api_keys["clinician"],
        f"/v1/patients/{PATIENT}/trends?vital=heart_rate&bucket=1h"
        "&since=2026-11-28T10:00:00Z&until=2026-11-28T12:00:00%2B00:00",
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["buckets"] == [
        {"start": T0, "count": 3, "min": 70, "max": 90, "mean": 80, "median": 80},
        {"start": T0 + 3600, "count": 4, "min": 60, "max": 100, "mean": 71.5, "median": 63},
    ]
    bad = get(
        settings,
        credentials.api_keys["clinician"],
        f"/v1/patients/{PATIENT}/trends?vital=heart_rate&since=yesterday",
    )
    assert bad.status_code == 400 and "neither ISO 8601 nor epoch" in bad.text
    assert (
        get(settings, "not-a-key", f"/v1/patients/{PATIENT}/trends?vital=spo2").status_code == 401
    )
