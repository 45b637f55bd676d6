"""`up` against its embedded broker: consumers join their group in a second, not three.

Tansu answers a JoinGroup only once half the member's session timeout has passed, so
with the usual 6 s every processor start, and every restart after a broker recycle,
left readings waiting 3 s (bench/README.md has the recycle's timeline).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.supervisor import EMBEDDED_SESSION_TIMEOUT_MS, Pipeline


def stage_session_timeout(run_dir: Path) -> str:
    pipeline = Pipeline(Settings(), run_dir)
    pipeline.start(stages=())
    try:
        return pipeline.env["HEALTHSYNC_PROCESSOR_SESSION_TIMEOUT_MS"]
    finally:
        pipeline.stop()


def test_the_stages_get_a_short_session_against_the_embedded_broker(tmp_path: Path) -> None:
    assert EMBEDDED_SESSION_TIMEOUT_MS < 6000
    assert stage_session_timeout(tmp_path / "run") == str(EMBEDDED_SESSION_TIMEOUT_MS)


def test_a_configured_session_timeout_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALTHSYNC_PROCESSOR_SESSION_TIMEOUT_MS", "6000")
    assert stage_session_timeout(tmp_path / "run") == "6000"
