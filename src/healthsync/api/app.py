"""The FastAPI application: health, the v1 REST API over the live cache, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthsync import __version__
from healthsync.api import fhir
from healthsync.config import Settings
from healthsync.kafka import KafkaUnavailableError, check_broker
from healthsync.metrics import PipelineCollector
from healthsync.readings import VITALS
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.store.fhir_queries import FhirReader
from healthsync.store.queries import LiveReader

# The same characters the wire protocol allows in ids, so a path cannot reach other keys.
PatientId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
_HISTORY_LIMIT = 10_000


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


def create_app(settings: Settings) -> FastAPI:
    if not settings.redis.url:
        from healthsync.errors import ConfigError

        raise ConfigError("the API needs Redis (HEALTHSYNC_REDIS_URL)")
    redis = Redis.from_url(settings.redis.url, **settings.redis.client_options())
    codec = Codec.from_settings(settings)
    reader = LiveReader(redis, codec)
    collector = PipelineCollector()
    registry = CollectorRegistry()
    registry.register(collector)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    app = FastAPI(
        title="HealthSync",
        version=__version__,
        description="Live patient vitals, alerts and pipeline metrics.",
        lifespan=lifespan,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if fhir.is_fhir_request(request):
            return fhir.error_response(exc.status_code, str(exc.detail), exc)
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(DecryptError)
    async def undecryptable(request: Request, exc: DecryptError) -> Response:
        # Stored data this keyring cannot open: say so, never serve garbage.
        message = f"stored data cannot be decrypted: {exc}"
        if fhir.is_fhir_request(request):
            return fhir.error_response(500, message)
        return _error(500, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"invalid {where}: {first.get('msg', 'bad request')}"
        if fhir.is_fhir_request(request):
            return fhir.error_response(400, message)
        return _error(422, message)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks["redis"] = f"unavailable: {type(exc).__name__}"
        try:
            await asyncio.to_thread(check_broker, settings.kafka)
            checks["kafka"] = "ok"
        except KafkaUnavailableError as exc:
            checks["kafka"] = f"unavailable: {exc}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        collector.snapshot, collector.latency = await reader.stats()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/patients", tags=["patients"])
    async def patients(limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
        rows = await reader.patients(limit)
        return {"patients": rows, "count": len(rows)}

    @app.get("/v1/patients/{patient_id}/vitals/latest", tags=["patients"])
    async def latest(patient_id: PatientId) -> dict[str, Any]:
        vitals = await reader.latest(patient_id)
        if vitals is None:
            raise HTTPException(404, f"no vitals for patient {patient_id}")
        return {"patient_id": patient_id, "vitals": vitals, "news2": await reader.news2(patient_id)}

    @app.get("/v1/patients/{patient_id}/vitals", tags=["patients"])
    async def history(
        patient_id: PatientId,
        vital: Annotated[str | None, Query(description="one of " + ", ".join(VITALS))] = None,
        since: Annotated[float | None, Query(description="epoch seconds; default 1 h ago")] = None,
        until: Annotated[float | None, Query(description="epoch seconds; default now")] = None,
        limit: Annotated[int, Query(ge=1, le=_HISTORY_LIMIT)] = 1000,
    ) -> dict[str, Any]:
        if vital is not None and vital not in VITALS:
            raise HTTPException(
                400, f"unknown vital {vital!r}; expected one of {', '.join(VITALS)}"
            )
        now = time.time()
        start = since if since is not None else now - 3600
        end = until if until is not None else now
        if start > end:
            raise HTTPException(400, "since must not be after until")
        if await reader.latest(patient_id) is None:
            raise HTTPException(404, f"no vitals for patient {patient_id}")
        points = await reader.history(patient_id, vital, start, end, limit)
        return {"patient_id": patient_id, "since": start, "until": end, "readings": points}

    @app.get("/v1/alerts", tags=["alerts"])
    async def alerts(
        status: Annotated[str, Query(pattern="^(open|resolved|all)$")] = "open",
        patient_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
    ) -> dict[str, Any]:
        rows = await reader.alerts(status, patient_id, limit)
        return {"alerts": rows, "count": len(rows)}

    @app.post("/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def acknowledge(
        alert_id: Annotated[str, Path(pattern="^[0-9a-f]{1,64}$")], request: Request
    ) -> dict[str, Any]:
        who = request.client.host if request.client else "unknown"
        alert = await reader.acknowledge(alert_id, by=who, at=time.time())
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return alert

    app.include_router(fhir.fhir_router(FhirReader(redis, codec)))
    return app
