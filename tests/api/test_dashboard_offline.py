"""The dashboard marks a device that stopped sending, on a stack that notices within seconds."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from healthsync.config import Settings
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.api.browser import LIVE_MS, live_ward, nc, tile
from tests.conftest import Credentials, make_settings


@pytest.fixture
def settings(broker: Service, redis_server: Service) -> Settings:
    # Offline after 2 s of silence rather than the default 30 s, so the test is short.
    return make_settings(broker, redis_server, anomaly={"offline_min_s": 2.0})


def test_a_silent_device_is_marked_offline_on_its_patients_tile(
    page: Page, pipeline: Pipeline, credentials: Credentials
) -> None:
    console = live_ward(page, credentials.api_keys["clinician"])
    nc(pipeline, "device_id=mon-q1 patient_id=P-QUIET heart_rate=75")
    time.sleep(0.5)  # a second reading a little later: the device's usual interval
    nc(pipeline, "device_id=mon-q1 patient_id=P-QUIET heart_rate=76")
    quiet = tile(page, "P-QUIET")
    expect(quiet.locator('[data-vital="heart_rate"] .value')).to_have_text("76", timeout=LIVE_MS)
    expect(quiet.locator(".offline")).to_be_hidden()
    # Then nothing: the processor's clock tick raises the offline alert, and the tile shows it.
    expect(quiet.locator(".offline")).to_be_visible(timeout=15_000)
    expect(quiet.locator('[data-alert-kind="device_offline:mon-q1"]')).to_contain_text("Warning")
    assert console.errors == []
