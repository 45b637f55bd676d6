"""Fixtures of the API tests that drive the dashboard in Debian's headless chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from healthsync.supervisor import Pipeline
from tests.api.browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: `make system-deps` installs it")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, pipeline: Pipeline) -> Iterator[Page]:
    cfg = pipeline.settings.api
    context = browser.new_context(
        base_url=f"http://{cfg.host}:{cfg.port}", viewport={"width": 1400, "height": 900}
    )
    opened = context.new_page()
    yield opened
    context.close()
