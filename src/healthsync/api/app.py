"""The FastAPI application: health, the v1 REST API over the live cache, FHIR, metrics.

Open routes carry no patient data: /healthz, /readyz (up or not, per
dependency), /metrics (pipeline counters) and the OpenAPI documents. Every
other route declares what it needs (see api/auth.py and api/permissions.py),
and every answer holding patient data is audited before it is sent. The routes
are in api/routes/, one router per area; this module builds what they share
and puts the app together.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from healthsync import __version__
from healthsync.api import docs, fhir_app, middleware, unavailable
from healthsync.api.assignments import assignments_router
from healthsync.api.audit import AuditLog
from healthsync.api.auth import Authenticator, Guard
from healthsync.api.cursors import Cursors
from healthsync.api.errors import install_error_handlers
from healthsync.api.feed import EventFeed
from healthsync.api.routes import alerts, health, history, patients, rules, summary
from healthsync.api.routes.alert_history import alert_history_router
from healthsync.api.routes.alerts import alert_list_router
from healthsync.api.routes.dashboard import dashboard_router
from healthsync.api.routes.jobs import jobs_router
from healthsync.api.routes.stream import stream_router
from healthsync.api.routes.vitals import vitals_router
from healthsync.api.services import ApiServices
from healthsync.api.unreadable import unreadable_counter
from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.metrics import PipelineCollector
from healthsync.redis_client import connect_async
from healthsync.security.codec import Codec, load_keyring
from healthsync.security.tokens import TokenSealer
from healthsync.store.alert_history import AlertHistory
from healthsync.store.archive.setup import Archive
from healthsync.store.assignments import Assignments
from healthsync.store.events import EventLog
from healthsync.store.fhir_archive import ArchivedObservations
from healthsync.store.fhir_queries import FhirReader
from healthsync.store.queries import LiveReader
from healthsync.store.records import Records
from healthsync.store.vitals_history import VitalsHistory

ROUTERS = (
    health.router,
    summary.router,
    patients.router,
    alerts.router,
    rules.router,
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    services: ApiServices = app.state.services
    await services.redis.aclose()
    services.outbound.close()
    if services.archive is not None:
        services.archive.close()


def create_app(settings: Settings) -> FastAPI:
    if not settings.redis.url:
        raise ConfigError("the API needs Redis (HEALTHSYNC_REDIS_URL)")
    redis = connect_async(settings.redis)
    codec = Codec.from_settings(settings)
    records = Records(codec)
    registry = CollectorRegistry()
    collector = PipelineCollector()
    registry.register(collector)
    authenticator = Authenticator(settings.auth)
    guard = Guard(
        authenticator,
        AuditLog(settings.auth, redis, codec),
        registry,
        frozenset(settings.api.trusted_proxies),
    )

    app = FastAPI(
        title="HealthSync",
        version=__version__,
        description="Live patient vitals, alerts and pipeline metrics.",
        lifespan=_lifespan,
        docs_url=None,  # served by api/docs.py, without a CDN
        redoc_url=None,
    )
    docs.install(app)
    app.state.guard = guard
    reader = LiveReader(redis, records, unreadable_counter(registry))
    archive = Archive.from_settings(settings).reader()
    retention = settings.redis.history_retention_s
    services = ApiServices(
        settings=settings,
        redis=redis,
        reader=reader,
        fhir=FhirReader(redis, records),
        archive=archive,
        fhir_archive=ArchivedObservations(archive, redis, records, retention),
        collector=collector,
        registry=registry,
        started=time.time(),
        outbound=authenticator.outbound,
    )
    app.state.services = services
    # First: its catch-all (api.errors) then sits inside the middleware, whose security
    # headers its answers get too.
    install_error_handlers(app)
    middleware.install(app, settings.api)
    unavailable.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(jobs_router(settings))
    app.include_router(history.router(settings, reader))
    cursors = Cursors(
        TokenSealer.from_keyring(load_keyring(settings.crypto), "cursor v1"), registry
    )
    app.include_router(vitals_router(VitalsHistory(reader, services.archive, retention), cursors))
    app.include_router(alert_list_router(cursors))
    alert_history = AlertHistory(reader, services.archive, retention)
    app.include_router(alert_history_router(alert_history, cursors))
    # Kept on the app: the server closes every stream when it is told to stop.
    app.state.feed = EventFeed(EventLog(redis, records), settings.api.stream_client_buffer)
    app.include_router(stream_router(app.state.feed, settings))
    app.include_router(dashboard_router())
    app.include_router(assignments_router(Assignments(redis, codec)))
    # Its own app with its own error handlers (OperationOutcomes), on the same services.
    fhir_app.mount(app, services, guard)
    return app
