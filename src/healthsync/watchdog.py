"""Restart the embedded services (Redis, the broker, HAProxy) when they die, with backoff.

The supervisor calls :meth:`ServiceWatchdog.check` once a second. A service
that died is started again with the same command on the same port, so the
stages' clients reconnect to the address they already know. One that keeps
dying waits longer each time (1, 2, 4 ... 30 s); one that ran for a minute
counts as healthy again. What must follow a restart (the embedded broker's
topics, made again) is retried on every check until it succeeds; until then the
service is reported down.
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


def restart_delay(attempt: int) -> float:
    """1, 2, 4 ... seconds for the 1st, 2nd, 3rd ... restart in a row, at most
    MAX_BACKOFF_S (the power is capped first: a process may die thousands of times)."""
    return min(2.0 ** min(max(attempt - 1, 0), 30), MAX_BACKOFF_S)


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
        self.next_start = now + restart_delay(self.failures)
        self.started_at = now


@dataclass
class ServiceWatchdog:
    """Keeps the embedded stack's processes running; reports what is down."""

    stack: EmbeddedStack
    say: Callable[[str], None]
    # Called after a service came back (the broker's topics must be made again).
    on_restart: Callable[[Service], None] = lambda _service: None
    backoff: dict[str, Backoff] = field(default_factory=dict)
    # Services running again whose on_restart failed (a broker too slow to take its
    # topics): it is retried on every check until it succeeds, and they count as down.
    unsettled: set[str] = field(default_factory=set)

    def restarts(self, name: str) -> int:
        return self.backoff[name].restarts if name in self.backoff else 0

    def check(self) -> list[str]:
        """Restart the dead services whose backoff has passed; the names still down."""
        now = time.monotonic()
        down = []
        for service in self.stack.services():
            if service.alive:
                if service.name in self.unsettled and not self._settle(service):
                    down.append(service.name)
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
        except HealthSyncError as exc:
            self.say(str(exc))
            return False
        return self._settle(service)

    def _settle(self, service: Service) -> bool:
        """Run what must follow the service's restart; False (said once) if it failed."""
        try:
            self.on_restart(service)
        except HealthSyncError as exc:
            if service.name not in self.unsettled:
                self.say(f"{exc}; retrying")
            self.unsettled.add(service.name)
            return False
        self.unsettled.discard(service.name)
        return True
