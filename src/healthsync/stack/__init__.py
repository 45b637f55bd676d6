"""The embedded services: a Kafka-protocol broker (Tansu) and a private Redis.

`healthsync up` and the test fixtures use these to run the whole pipeline on
one machine with no accounts. Each service is a child process on a free
loopback port that dies with its parent (PR_SET_PDEATHSIG), so a crashed
supervisor leaves nothing behind.

Either can speak TLS 1.3 only (:class:`ServerTls`): redis-server with its own
TLS port and no plain one; the broker behind HAProxy, because Tansu's own TLS
flags do not work in the build we ship. HAProxy terminates TLS on the
broker's public port and forwards to Tansu's plain port on loopback, and
Tansu advertises the HAProxy address, so clients that learn the broker from
metadata connect through TLS too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from urllib.parse import quote

from healthsync.stack.broker import (
    TlsFront,
    haproxy_config,
    start_broker,
    start_tls_front,
    tansu_binary,
)
from healthsync.stack.ports import free_port, reserve_ports
from healthsync.stack.process import (
    LOCALHOST,
    TLS_CIPHERSUITE,
    TLS_PROTOCOL,
    Launch,
    ServerTls,
    Service,
    die_with_parent,
    spawn,
    stop_process,
    wait_for_port,
)
from healthsync.stack.redis_server import RedisDisk, RedisUser, start_redis

__all__ = [
    "LOCALHOST",
    "TLS_CIPHERSUITE",
    "TLS_PROTOCOL",
    "EmbeddedStack",
    "Launch",
    "RedisDisk",
    "RedisUser",
    "ServerTls",
    "Service",
    "TlsFront",
    "die_with_parent",
    "free_port",
    "haproxy_config",
    "reserve_ports",
    "spawn",
    "start_broker",
    "start_redis",
    "start_tls_front",
    "stop_process",
    "tansu_binary",
    "wait_for_port",
]


@dataclass
class EmbeddedStack:
    """The broker and Redis for one machine; either may be external."""

    broker: Service | None = None
    redis: Service | None = None
    redis_user: RedisUser | None = None
    # HAProxy in front of the ingest replicas (see front.py), when `up` runs several.
    ingest_front: Service | None = None

    @property
    def bootstrap(self) -> str | None:
        return f"{self.broker.host}:{self.broker.port}" if self.broker else None

    @property
    def redis_url(self) -> str | None:
        if self.redis is None:
            return None
        scheme = "rediss" if self.redis.tls else "redis"
        user = self.redis_user
        login = f"{quote(user.name)}:{quote(user.password)}@" if user else ""
        return f"{scheme}://{login}{self.redis.host}:{self.redis.port}/0"

    def services(self) -> list[Service]:
        """Every process of the stack, each backend before its front."""
        found: list[Service] = []
        for service in (self.redis, self.broker, self.ingest_front):
            if service is not None:
                found += [*service.backends, service]
        return found

    def stop(self) -> None:
        for service in (self.ingest_front, self.redis, self.broker):
            if service is not None:
                with contextlib.suppress(OSError):
                    service.stop()
