"""The watchdog restarts a dead service on its port, with backoff, and names it while down."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from redis import Redis

from healthsync.children import Child
from healthsync.config import Settings
from healthsync.errors import HealthSyncError
from healthsync.stack import EmbeddedStack, Service, start_redis
from healthsync.supervisor import Pipeline
from healthsync.watchdog import MAX_BACKOFF_S, Backoff, ServiceWatchdog
from tests.conftest import wait_for


def test_a_service_that_cannot_restart_is_reported_down_until_it_can(tmp_path: Path) -> None:
    redis = start_redis(log_dir=tmp_path)
    said: list[str] = []
    watchdog = ServiceWatchdog(EmbeddedStack(redis=redis), said.append)
    blocker = socket.socket()
    try:
        assert watchdog.check() == []
        redis.process.send_signal(signal.SIGKILL)
        redis.process.wait()
        # Something else holds the port (bound, not listening): the restart fails.
        blocker.bind((redis.host, redis.port))
        assert watchdog.check() == ["redis"]
        assert said[0] == "redis exited with code -9; restart 1"
        assert watchdog.check() == ["redis"], "backoff: no second attempt at once"
        assert len(said) == 2, said

        blocker.close()
        wait_for(lambda: watchdog.check() == [], timeout=10, what="the restart after backoff")
        assert watchdog.restarts("redis") == 2
        client = Redis(host=redis.host, port=redis.port)
        assert client.ping()
        client.close()
    finally:
        blocker.close()
        redis.stop()


def test_what_must_follow_a_restart_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    # The broker came back, but too slowly to take its topics in the supervisor's few
    # attempts: the watchdog must not forget them, or ingest never acknowledges again.
    redis = start_redis(log_dir=tmp_path)
    said: list[str] = []
    made: list[str] = []

    def after_restart(service: Service) -> None:
        if not made:
            made.append("refused")
            raise HealthSyncError(f"{service.name} restarted but not ready: timed out")
        made.append("done")

    watchdog = ServiceWatchdog(EmbeddedStack(redis=redis), said.append, after_restart)
    try:
        redis.process.send_signal(signal.SIGKILL)
        redis.process.wait()
        assert watchdog.check() == ["redis"], "running again, but not ready"
        assert "redis restarted but not ready: timed out; retrying" in said
        wait_for(lambda: watchdog.check() == [], timeout=10, what="the retried after-restart")
        assert made == ["refused", "done"]
        assert watchdog.check() == [] and made == ["refused", "done"], "done once"
        assert watchdog.restarts("redis") == 1, "the process itself was restarted once"
    finally:
        redis.stop()


def test_a_process_that_has_died_a_thousand_times_still_waits_the_longest_backoff(
    tmp_path: Path,
) -> None:
    """The backoff was 2 ** restarts, capped after the power: at 1,024 restarts (8.5 hours
    of a stage dying every 30 s, say a scheduler given an unknown job) the power overflowed,
    and `up` stopped every stage with a traceback."""
    backoff = Backoff(failures=1024, started_at=0.0)
    backoff.record_restart(1.0)
    assert backoff.next_start == 1.0 + MAX_BACKOFF_S
    pipeline = Pipeline(Settings(), tmp_path)
    child = Child("push", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "push.log")
    pipeline.children["push"] = child
    child.start({})
    assert child.process is not None
    child.process.wait()
    child.restarts = 1023
    said: list[str] = []
    try:
        pipeline.restart_dead(said.append)
    finally:
        child.stop()
    assert said == ["push exited with code 3; restart 1024"]
