"""Restart the embedded services (Redis, the broker, HAProxy) when they die, with backoff.

The supervisor calls :meth:`ServiceWatchdog.check` once a second. A service
that died is started again with the same command on the same port, so the
stages' clients reconnect to the address they already know. One that keeps
dying waits longer each time (1, 2, 4 ... 30 s); one that ran for a minute
counts as healthy again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from healthsync.errors import HealthSyncError
from healthsync.stack import EmbeddedStack, Service

MAX_BACKOFF_S = 30.0
# A process that stayed up this long is healthy: its next death restarts at once.
_STABLE_S = 60.0


@dataclass
class Backoff:
    """When a process that died may be started again."""

    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def due(self, now: float) -> bool:
        return now >= self.next_start

    def record_restart(self, now: float) -> None:
        if now - self.started_at > _STABLE_S:
            self.failures = 0
        self.restarts += 1
        self.failures += 1
        self.next_start = now + min(2.0 ** (self.failures - 1), MAX_BACKOFF_S)
        self.started_at = now


@dataclass
class ServiceWatchdog:
    """Keeps the embedded stack's processes running; reports what is down."""

    stack: EmbeddedStack
    say: Callable[[str], None]
    # Called after a service came back (the broker's topics must be made again).
    on_restart: Callable[[Service], None] = lambda _service: None
    backoff: dict[str, Backoff] = field(default_factory=dict)

    def restarts(self, name: str) -> int:
        return self.backoff[name].restarts if name in self.backoff else 0

    def check(self) -> list[str]:
        """Restart the dead services whose backoff has passed; the names still down."""
        now = time.monotonic()
        down = []
        for service in self.stack.services():
            if service.alive:
                continue
            backoff = self.backoff.setdefault(service.name, Backoff())
            if not backoff.due(now) or not self._restart(service, backoff, now):
                down.append(service.name)
        return down

    def _restart(self, service: Service, backoff: Backoff, now: float) -> bool:
        code = service.process.returncode
        backoff.record_restart(now)
        self.say(f"{service.name} exited with code {code}; restart {backoff.restarts}")
        try:
            service.restart()
            self.on_restart(service)
        except HealthSyncError as exc:
            self.say(str(exc))
            return False
        return True
