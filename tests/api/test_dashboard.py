"""The ward dashboard in Debian's headless Chromium, driven by Playwright, on a real stack.

Readings go in over TCP with `nc`, through ingest, Tansu, the processor and
Redis, and come out on the page through GET /v1/stream. A screenshot of the
ward is saved under build/test-artifacts/ (HEALTHSYNC_ARTIFACTS overrides);
with HEALTHSYNC_UPDATE_SCREENSHOT=1 it also replaces docs/dashboard.png.
"""

from __future__ import annotations

import os
import re
import shutil
import time

import httpx
from playwright.sync_api import Page, expect

from healthsync.supervisor import Pipeline
from tests.api.browser import ARTIFACTS, LIVE_MS, ROOT, Console, live_ward, nc, sign_in, tile
from tests.conftest import Credentials


def test_the_ward_is_live_alerts_show_why_and_can_be_acknowledged(
    page: Page, pipeline: Pipeline, credentials: Credentials
) -> None:
    console = Console(page)
    response = page.goto("/")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.locator("script:not([src])").count() == 0, "no inline script"

    sign_in(page, credentials.api_keys["clinician"])
    expect(page.locator("#connection")).to_have_text("Updates: live")
    assert page.evaluate("sessionStorage.length") == 1
    assert page.evaluate("localStorage.length") == 0

    now = int(time.time())
    nc(pipeline, f"device_id=mon-d1 patient_id=P-D1 ts={now} heart_rate=78 oxygen=96% temp=36.9")
    ward_tile = tile(page, "P-D1")
    expect(ward_tile.locator('[data-vital="heart_rate"] .value')).to_have_text(
        "78", timeout=LIVE_MS
    )
    expect(ward_tile.locator('[data-vital="heart_rate"]')).to_contain_text("/min")
    expect(ward_tile.locator('[data-vital="spo2"]')).to_contain_text("96 %")
    expect(ward_tile.locator('[data-vital="temp"]')).to_contain_text("36.9 °C")
    expect(ward_tile.locator('[data-vital="heart_rate"] .age')).to_contain_text("ago")

    nc(pipeline, f"device_id=mon-d1 patient_id=P-D1 ts={now + 1} heart_rate=81")
    expect(ward_tile.locator('[data-vital="heart_rate"] .value')).to_have_text(
        "81", timeout=LIVE_MS
    )

    # Several patients, and a sick one: the highest NEWS2 comes first, in colour and words.
    # P-D1's sudden fall to 82 stands for 15 s (a probe dips for up to 3 samples).
    nc(
        pipeline,
        f"device_id=mon-d2 patient_id=P-D2 ts={now} hr=72 spo2=98 rr=14 temp=36.8 bp=122/78",
        f"device_id=mon-d3 patient_id=P-D3 ts={now} hr=132 spo2=90 rr=26 temp=39.2 bp=92/60",
        f"device_id=mon-d1 patient_id=P-D1 ts={now + 5} spo2=82",
        f"device_id=mon-d1 patient_id=P-D1 ts={now + 15} spo2=82",
        f"device_id=mon-d1 patient_id=P-D1 ts={now + 20} spo2=82",
    )
    expect(page.locator("article[data-patient-id]")).to_have_count(3)
    expect(page.locator("article[data-patient-id]").first).to_have_attribute(
        "data-patient-id", "P-D3"
    )
    expect(tile(page, "P-D3").locator(".news2")).to_contain_text("High risk")

    alert = ward_tile.locator('[data-alert-kind="threshold:spo2"]')
    expect(alert).to_contain_text("Critical", timeout=LIVE_MS)
    expect(alert).to_contain_text("82")
    panel_alert = page.locator('.alerts [data-alert-kind="threshold:spo2"]')
    expect(panel_alert).to_contain_text("P-D1")
    expect(panel_alert.locator(".reason")).to_contain_text("82")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ward.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("HEALTHSYNC_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")

    panel_alert.get_by_role("button", name="Acknowledge").click()
    expect(panel_alert.locator(".acknowledged")).to_contain_text(
        "Acknowledged by apikey:test-clinician"
    )

    # The patient view: charts of the last hour and day, the NEWS2 history, the timeline.
    ward_tile.get_by_role("button", name="P-D1").click()
    expect(page.locator("#patient-title")).to_have_text("Patient P-D1")
    expect(page.locator("#chart-hour .uplot")).not_to_have_count(0)
    expect(page.locator("#chart-day .uplot")).not_to_have_count(0)
    expect(page.locator("#chart-news2 .uplot")).to_have_count(1)
    expect(page.locator('#timeline [data-alert-kind="threshold:spo2"]')).to_be_visible()
    assert "P-D1" not in page.url
    page.get_by_role("button", name="Back to the ward").click()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Access token")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert console.errors == []


def test_a_wrong_token_is_refused_on_the_page(page: Page, pipeline: Pipeline) -> None:
    cfg = pipeline.settings.api
    base = f"http://{cfg.host}:{cfg.port}"
    # Only the dashboard's own files are served, whatever the path tries.
    for path in ("/dashboard/..%2f__init__.py", "/dashboard/../app.py", "/dashboard/feed.py"):
        assert httpx.get(base + path).status_code == 404, path
    console = Console(page)
    sign_in(page, "hsk_not-a-key")
    expect(page.locator("#sign-in-error")).to_contain_text("refused")
    expect(page.locator("#ward-view")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    assert console.errors == []


def test_a_viewer_sees_the_summary_and_no_patient_identifiers(
    page: Page, pipeline: Pipeline, credentials: Credentials
) -> None:
    now = int(time.time())
    nc(pipeline, f"device_id=mon-v1 patient_id=P-SECRET-1 ts={now} heart_rate=70 spo2=97")
    console = Console(page)
    sign_in(page, credentials.api_keys["viewer"])
    counts = page.locator("#summary-counts")
    expect(counts).to_contain_text(re.compile(r"Patients\s*1"), timeout=10_000)
    html = page.content()
    assert "P-SECRET-1" not in html and "mon-v1" not in html
    expect(page.locator("article[data-patient-id]")).to_have_count(0)
    assert console.errors == []


def test_values_older_than_the_news2_window_are_greyed(
    page: Page, pipeline: Pipeline, credentials: Credentials
) -> None:
    console = live_ward(page, credentials.api_keys["clinician"])
    # Measured 20 minutes ago: older than the NEWS2 freshness window (15 min).
    then = int(time.time()) - 1200
    nc(pipeline, f"device_id=mon-o1 patient_id=P-OLD ts={then} heart_rate=76 spo2=97")
    old = tile(page, "P-OLD")
    expect(old.locator('[data-vital="heart_rate"] .value')).to_have_text("76", timeout=LIVE_MS)
    expect(old.locator('[data-vital="heart_rate"]')).to_have_class(re.compile(r"\bstale\b"))
    expect(old.locator('[data-vital="heart_rate"] .age')).to_contain_text("min ago")
    assert console.errors == []


def test_a_reading_that_arrives_late_does_not_replace_newer_values(
    page: Page, pipeline: Pipeline, credentials: Credentials
) -> None:
    console = live_ward(page, credentials.api_keys["clinician"])
    now = int(time.time())
    nc(pipeline, f"device_id=mon-l1 patient_id=P-LATE ts={now} heart_rate=88 spo2=97")
    late = tile(page, "P-LATE")
    expect(late.locator('[data-vital="heart_rate"] .value')).to_have_text("88", timeout=LIVE_MS)
    # Measured 30 s before, sent after (a device resending what it was refused); it alone
    # carries a temperature, which shows once it has been processed.
    nc(pipeline, f"device_id=mon-l1 patient_id=P-LATE ts={now - 30} heart_rate=61 temp=37.4")
    expect(late.locator('[data-vital="temp"] .value')).to_have_text("37.4", timeout=LIVE_MS)
    expect(late.locator('[data-vital="heart_rate"] .value')).to_have_text("88")
    expect(late.locator('[data-vital="spo2"] .value')).to_have_text("97")

    # Read again from the API, as a newly opened dashboard does.
    page.reload()
    late = tile(page, "P-LATE")
    expect(late.locator('[data-vital="temp"] .value')).to_have_text("37.4", timeout=LIVE_MS)
    expect(late.locator('[data-vital="heart_rate"] .value')).to_have_text("88")
    assert console.errors == []
