"""The patient view's 7-day charts: hourly trends over Redis and the archive, in the browser.

Readings two days old go in over TCP like any other; the archiver of the
stack rolls them into the archive within a second, and the page's 7-day chart
draws their hour next to the current one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from healthsync.config import Settings
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.api.browser import LIVE_MS, live_ward, nc, tile
from tests.conftest import Credentials, make_settings


@pytest.fixture
def settings(broker: Service, redis_server: Service, tmp_path: Path) -> Settings:
    # An archive of the test's own, rolled every half second rather than every minute.
    archive = {"url": f"file://{tmp_path}/archive", "roll_s": 0.5}
    return make_settings(broker, redis_server, archive=archive)


def hourly(pipeline: Pipeline, token: str, vital: str) -> list[dict[str, float]]:
    cfg = pipeline.settings.api
    now = time.time()
    answer = httpx.get(
        f"http://{cfg.host}:{cfg.port}/v1/patients/P-WEEK/trends",
        params={"vital": vital, "since": now - 7 * 86400, "until": now, "bucket": "1h"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    buckets: list[dict[str, float]] = answer.json()["buckets"]
    return buckets


def test_the_patient_view_charts_seven_days_of_hourly_trends(
    page: Page, pipeline: Pipeline, credentials: Credentials, tmp_path: Path
) -> None:
    token = credentials.api_keys["clinician"]
    now = int(time.time())
    hour = (now - 2 * 86400) // 3600 * 3600  # an hour two days ago, older than Redis keeps
    nc(
        pipeline,
        f"device_id=mon-w1 patient_id=P-WEEK seq=1 ts={hour + 60} heart_rate=70 spo2=95",
        f"device_id=mon-w1 patient_id=P-WEEK seq=2 ts={hour + 120} heart_rate=90 spo2=97",
        f"device_id=mon-w1 patient_id=P-WEEK seq=3 ts={now} heart_rate=76 spo2=98",
    )
    day = datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%d")
    archived = tmp_path / "archive" / "identified" / "readings" / f"date={day}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        buckets = hourly(pipeline, token, "heart_rate")
        if buckets and buckets[0]["start"] == hour and any(archived.rglob("*.parquet")):
            break
        time.sleep(0.5)
    assert any(archived.rglob("*.parquet")), "the archiver rolled the old readings"
    assert len(buckets) == 2, buckets
    assert buckets[0] == {
        "start": hour, "count": 2, "min": 70, "max": 90, "mean": 80, "median": 80
    }  # fmt: skip

    console = live_ward(page, token)
    patient = tile(page, "P-WEEK")
    expect(patient.locator('[data-vital="heart_rate"] .value')).to_have_text("76", timeout=LIVE_MS)
    patient.get_by_role("button", name="P-WEEK").click()

    week = page.locator("#chart-week")
    heart = week.locator('.chart[data-vital="heart_rate"]')
    # Two hourly points: the archived hour two days ago and the current one.
    expect(heart).to_have_attribute("data-buckets", "2")
    expect(heart.locator("canvas")).to_have_count(1)
    expect(heart.locator(".u-legend")).to_contain_text("Heart rate (/min) mean")
    expect(week.locator('.chart[data-vital="spo2"]')).to_have_attribute("data-buckets", "2")
    # Vitals this patient never sent get no chart.
    expect(week.locator('.chart[data-vital="bp_sys bp_dia"]')).to_have_count(0)
    assert "P-WEEK" not in page.url
    assert console.errors == []
