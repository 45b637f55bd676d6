"""The command line a service manager or an operator uses."""

from __future__ import annotations

import os
import subprocess
import sys

from healthsync.config import Settings
from healthsync.stack import free_port


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    env.update(settings.to_env())
    return subprocess.run(
        [sys.executable, "-m", "healthsync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_passes_when_redis_and_kafka_answer(settings: Settings) -> None:
    result = run_cli(settings, "check")
    assert (result.returncode, result.stdout.strip()) == (0, "ok")


def test_check_fails_and_says_what_is_down(settings: Settings) -> None:
    settings.kafka.bootstrap = f"127.0.0.1:{free_port()}"
    result = run_cli(settings, "check")
    assert result.returncode == 1
    assert result.stderr.startswith("kafka: Kafka at 127.0.0.1:")


def test_simulate_without_a_server_fails_with_a_clear_error(settings: Settings) -> None:
    result = run_cli(settings, "simulate", "--devices", "1", "--count", "1", "--quiet")
    assert result.returncode != 0
    assert "could not connect" in result.stderr
