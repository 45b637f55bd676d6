"""Helpers of the dashboard's browser tests (fixtures `browser` and `page`: conftest.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Locator, Page, expect

from healthsync.supervisor import Pipeline

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HEALTHSYNC_ARTIFACTS", ROOT / "build" / "test-artifacts"))
# The page's own promise is one second; the test allows two for a loaded machine.
LIVE_MS = 2000


class Console:
    """Everything the page reports as an error: console errors, uncaught exceptions, CSP."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._message)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _message(self, message: ConsoleMessage) -> None:
        # A 401/403 the page expects and handles is logged by Chromium as a failed resource.
        if (
            message.type == "error"
            and "the server responded with a status of 40" not in message.text
        ):
            self.errors.append(message.text)


def nc(pipeline: Pipeline, *lines: str) -> list[str]:
    """Send lines as a bash device does; the ingest server's answers, one per line."""
    cfg = pipeline.settings.ingest
    result = subprocess.run(
        ["nc", "-q1", cfg.host, str(cfg.port)],
        input="".join(line + "\n" for line in lines).encode(),
        capture_output=True,
        timeout=30,
        check=True,
    )
    answers = result.stdout.decode().split("\n")[: len(lines)]
    assert all(a.startswith("OK ") for a in answers), answers
    return answers


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def live_ward(page: Page, token: str) -> Console:
    """Signed in with `token`, once the ward's updates are live; the page's console,
    listened to from before the sign-in."""
    console = Console(page)
    sign_in(page, token)
    expect(page.locator("#connection")).to_have_text("Updates: live")
    return console


def tile(page: Page, patient: str) -> Locator:
    return page.locator(f'article[data-patient-id="{patient}"]')
