"""The watchdog restarts a dead service on its port, with backoff, and names it while down."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from redis import Redis

from healthsync.stack import EmbeddedStack, start_redis
from healthsync.watchdog import ServiceWatchdog
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
