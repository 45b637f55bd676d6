"""The FastAPI application: health, the v1 REST API over the live cache, metrics.

Open routes carry no patient data: /healthz, /readyz (up or not, per
dependency), /metrics (pipeline counters) and the OpenAPI documents. Every
other route declares what it needs (see api/auth.py and api/permissions.py),
and every answer holding patient data is audited before it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthsync import __version__
from healthsync.api import auth, docs, fhir, middleware
from healthsync.api.assignments import assignments_router
from healthsync.api.audit import AuditLog
from healthsync.api.auth import Access, Authenticator, Guard
from healthsync.api.unreadable import unreadable_counter
from healthsync.config import Settings
from healthsync.domain.alerts import thresholds_for
from healthsync.domain.readings import VITALS
from healthsync.domain.rules import PatientRules
from healthsync.kafka import KafkaUnavailableError, check_broker
from healthsync.metrics import PipelineCollector
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.store.assignments import Assignments
from healthsync.store.fhir_queries import FhirReader
from healthsync.store.queries import LiveReader
from healthsync.store.records import Records

# The same characters the wire protocol allows in ids, so a path cannot reach other keys.
PatientId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
_HISTORY_LIMIT = 10_000
log = logging.getLogger(__name__)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "message": message}}, status_code=status, headers=headers
    )


def create_app(settings: Settings) -> FastAPI:
    if not settings.redis.url:
        from healthsync.errors import ConfigError

        raise ConfigError("the API needs Redis (HEALTHSYNC_REDIS_URL)")
    redis = Redis.from_url(settings.redis.url, **settings.redis.client_options())
    codec = Codec.from_settings(settings)
    records = Records(codec)
    collector = PipelineCollector()
    registry = CollectorRegistry()
    reader = LiveReader(redis, records, unreadable_counter(registry))
    registry.register(collector)
    authenticator = Authenticator(settings.auth)
    guard = Guard(
        authenticator,
        AuditLog(settings.auth, redis, codec),
        registry,
        frozenset(settings.api.trusted_proxies),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis.aclose()
        authenticator.outbound.close()

    app = FastAPI(
        title="HealthSync",
        version=__version__,
        description="Live patient vitals, alerts and pipeline metrics.",
        lifespan=lifespan,
        docs_url=None,  # served by api/docs.py, without a CDN
        redoc_url=None,
    )
    docs.install(app)
    app.state.guard = guard
    middleware.install(app, settings.api)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if fhir.is_fhir_request(request):
            return fhir.error_response(exc.status_code, str(exc.detail), exc)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(DecryptError)
    async def undecryptable(request: Request, exc: DecryptError) -> Response:
        # Stored data this keyring cannot open: say so, never serve garbage. Which key
        # is missing is for the operator's log, not for clients.
        log.error("stored data cannot be decrypted", extra={"error": str(exc)})
        message = "stored data cannot be decrypted"
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
            log.warning("not ready: Redis unavailable", extra={"error": type(exc).__name__})
            checks["redis"] = "unavailable"
        try:
            await authenticator.outbound.run(check_broker, settings.kafka)
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

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        collector.snapshot, collector.latency = await reader.stats()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/summary", tags=["aggregates"])
    async def summary(_access: Annotated[Access, Depends(auth.summary)]) -> dict[str, Any]:
        """De-identified aggregates: counts of patients, open alerts and NEWS2 bands."""
        return await reader.summary()

    @app.get("/v1/patients", tags=["patients"])
    async def patients(
        access: Annotated[Access, Depends(auth.reads("Patient", "Observation", "RiskAssessment"))],
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        rows = await reader.patients(limit)
        await access.record("search", [row["patient_id"] for row in rows])
        return {"patients": rows, "count": len(rows)}

    @app.get("/v1/patients/{patient_id}/vitals/latest", tags=["patients"])
    async def latest(
        access: Annotated[Access, Depends(auth.reads("Observation", "RiskAssessment"))],
        patient_id: PatientId,
    ) -> dict[str, Any]:
        vitals = await reader.latest(patient_id)
        if vitals is None:
            raise HTTPException(404, f"no vitals for patient {patient_id}")
        news2 = await reader.news2(patient_id)
        await access.record("read", [patient_id])
        return {"patient_id": patient_id, "vitals": vitals, "news2": news2}

    @app.get("/v1/patients/{patient_id}/vitals", tags=["patients"])
    async def history(
        access: Annotated[Access, Depends(auth.reads("Observation"))],
        patient_id: PatientId,
        vital: Annotated[str | None, Query(description="one of " + ", ".join(VITALS))] = None,
        since: Annotated[
            float | None, Query(description="epoch seconds; default 1 h ago", allow_inf_nan=False)
        ] = None,
        until: Annotated[
            float | None, Query(description="epoch seconds; default now", allow_inf_nan=False)
        ] = None,
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
        await access.record("read", [patient_id])
        return {"patient_id": patient_id, "since": start, "until": end, "readings": points}

    @app.get("/v1/alerts", tags=["alerts"])
    async def alerts(
        access: Annotated[Access, Depends(auth.reads("Communication", "Flag"))],
        status: Annotated[str, Query(pattern="^(open|resolved|all)$")] = "open",
        patient_id: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 500,
        cursor: Annotated[int, Query(ge=0, description="next_cursor of the previous page")] = 0,
    ) -> dict[str, Any]:
        rows, following = await reader.alerts(status, patient_id, limit, cursor)
        await access.record("search", [row["patient_id"] for row in rows])
        page: dict[str, Any] = {"alerts": rows, "count": len(rows)}
        if following is not None:
            page["next_cursor"] = str(following)
        return page

    @app.post("/v1/alerts/{alert_id}/ack", tags=["alerts"])
    async def acknowledge(
        access: Annotated[Access, Depends(auth.acknowledges)],
        alert_id: Annotated[str, Path(pattern="^[0-9a-f]{1,64}$")],
    ) -> dict[str, Any]:
        """Record who saw the alert: the caller's identity, never a name sent in the body."""
        alert = await reader.alert(alert_id)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        # Audited before it is written: an acknowledgement nobody can trace is not made.
        await access.record("acknowledge", [alert["patient_id"]], resource=alert_id)
        acknowledged = await reader.acknowledge(
            alert_id, by=access.principal.subject, at=time.time()
        )
        if acknowledged is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return acknowledged

    async def rules_view(patient_id: str) -> dict[str, Any]:
        stored = await reader.stored_rules(patient_id)
        configured = settings.anomaly.patients.get(patient_id)
        rules = stored or configured or PatientRules()
        source = "api" if stored else "config" if configured else "default"
        bands = {
            vital: {k: v for k, v in asdict(band).items() if k != "vital"}
            for vital, band in thresholds_for(rules).items()
        }
        return {
            "patient_id": patient_id,
            "source": source,
            "rules": rules.model_dump(),
            "bands": bands,
        }

    @app.get("/v1/patients/{patient_id}/rules", tags=["patients"])
    async def get_rules(
        access: Annotated[Access, Depends(auth.reads("Flag"))], patient_id: PatientId
    ) -> dict[str, Any]:
        """The alert bands and NEWS2 SpO2 scale in force for a patient."""
        view = await rules_view(patient_id)
        await access.record("read", [patient_id], resource="rules")
        return view

    # Changing when a patient's alarms sound is a clinical act, like acknowledging one:
    # the same right (clinician, admin, or a SMART write scope on alerts) and audited.
    @app.put("/v1/patients/{patient_id}/rules", tags=["patients"])
    async def put_rules(
        access: Annotated[Access, Depends(auth.acknowledges)],
        patient_id: PatientId,
        rules: PatientRules,
    ) -> dict[str, Any]:
        """Set a patient's bands (per vital) and SpO2 scale; in force within seconds."""
        await access.record("update", [patient_id], resource="rules")
        await reader.set_rules(patient_id, rules)
        return await rules_view(patient_id)

    @app.delete("/v1/patients/{patient_id}/rules", tags=["patients"])
    async def delete_rules(
        access: Annotated[Access, Depends(auth.acknowledges)], patient_id: PatientId
    ) -> dict[str, Any]:
        """Back to the configured (or default) rules."""
        await access.record("delete", [patient_id], resource="rules")
        await reader.set_rules(patient_id, None)
        return await rules_view(patient_id)

    app.include_router(fhir.fhir_router(FhirReader(redis, records)))
    app.include_router(assignments_router(Assignments(redis, codec)))
    return app
