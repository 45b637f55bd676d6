"""Open routes without patient data: liveness, readiness per dependency, pipeline metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healthsync.api.models import Health, Readiness
from healthsync.api.services import Services
from healthsync.kafka import KafkaUnavailableError, check_broker
from healthsync.security.keyring import KeyringError
from healthsync.security.rotation import seal_counts

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is unavailable"}},
)
async def readyz(services: Services) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        log.warning("not ready: Redis unavailable", extra={"error": type(exc).__name__})
        checks["redis"] = "unavailable"
    try:
        await services.outbound.run(check_broker, services.settings.kafka)
        checks["kafka"] = "ok"
    except KafkaUnavailableError as exc:
        # The reason names the broker's address: for the log, not for anyone who asks.
        log.warning("not ready: Kafka unavailable", extra={"error": str(exc)})
        checks["kafka"] = "unavailable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics(services: Services) -> Response:
    collector = services.collector
    collector.snapshot, collector.latency = await services.reader.stats()
    crypto = services.settings.crypto
    if crypto.enabled:
        try:
            collector.seals = seal_counts(crypto.keyring_file)
        except (OSError, KeyringError) as exc:
            log.warning("seal counts unreadable", extra={"error": str(exc)})
    return Response(generate_latest(services.registry), media_type=CONTENT_TYPE_LATEST)
