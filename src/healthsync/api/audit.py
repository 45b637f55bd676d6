"""The audit log: who read which patient's data, what, when and from where.

Each read of patient data and each acknowledgement is one JSON record, written
before the answer leaves the API. A record that cannot be written stops the
answer (503): data is never served unaudited. No request parameter or header
changes what is audited, and the settings refuse a configuration without a
sink.

Sinks: an append-only JSON lines file (opened with O_APPEND, fsynced per
record, created 0600) and/or the Redis stream ``{prefix}:audit``, whose
entries carry the same JSON in the field ``record``, sealed like every other
value HealthSync keeps in Redis (see security/codec.py). Records name patients,
which is their purpose, so they go only to these sinks, never to the
process's log.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from healthsync.config_services import AuthSettings
from healthsync.domain.readings import isoformat_ms
from healthsync.errors import ConfigError, HealthSyncError
from healthsync.security.codec import Codec


class AuditUnavailableError(HealthSyncError):
    """An audit record could not be written; the data it covers must not be served."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    actor: str  # the token's subject, or apikey:NAME
    auth: str  # "jwt" or "api-key"
    roles: tuple[str, ...]
    client: str  # the peer's address: the caller, or a proxy in front of it
    action: str  # "read", "search" or "acknowledge"
    method: str
    route: str  # the route template, e.g. /v1/patients/{patient_id}/vitals
    path: str  # the path and query as requested
    patients: tuple[str, ...]  # every patient whose data the answer holds
    resource: str | None = None  # the FHIR type, or the alert id acknowledged
    # X-Forwarded-For as a trusted proxy (api.trusted_proxies) passed it on; else None.
    forwarded_for: str | None = None
    ts: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "time": isoformat_ms(self.ts),
            "actor": self.actor,
            "auth": self.auth,
            "roles": list(self.roles),
            "client": self.client,
            "action": self.action,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "patients": list(self.patients),
        }
        if self.resource is not None:
            doc["resource"] = self.resource
        if self.forwarded_for is not None:
            doc["forwarded_for"] = self.forwarded_for
        return orjson.dumps(doc)


class AuditLog:
    """Writes each record to every configured sink, or raises AuditUnavailableError."""

    def __init__(self, settings: AuthSettings, redis: Redis, codec: Codec) -> None:
        if settings.audit_log_file is None and not settings.audit_redis:
            raise ConfigError(
                "the API needs an audit sink: set HEALTHSYNC_AUTH_AUDIT_LOG_FILE "
                "or leave HEALTHSYNC_AUTH_AUDIT_REDIS on"
            )
        self.path = settings.audit_log_file
        self.redis = redis if settings.audit_redis else None
        self.codec = codec
        self.stream = codec.keys.audit
        if self.path is not None:
            try:
                _append(self.path, b"")
            except OSError as exc:
                raise ConfigError(f"cannot open the audit log {self.path}: {exc}") from None

    async def write(self, record: AuditRecord) -> None:
        line = record.to_json()
        try:
            if self.path is not None:
                await asyncio.to_thread(_append, self.path, line + b"\n")
            if self.redis is not None:
                sealed = self.codec.seal(line, self.codec.field(self.stream, "record"))
                await self.redis.xadd(self.stream, {"record": sealed})
        except (OSError, RedisError) as exc:
            raise AuditUnavailableError(
                f"the audit log cannot be written: {type(exc).__name__}"
            ) from exc


def _append(path: Path, data: bytes) -> None:
    """One write on an O_APPEND descriptor, so concurrent records never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if data:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {path}")
            os.fsync(fd)
    finally:
        os.close(fd)
