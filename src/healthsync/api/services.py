"""What the routes share, built once per app: settings, Redis, the readers (live, FHIR,
archive), the metrics.

``create_app`` keeps one :class:`ApiServices` in ``app.state.services``; a route
asks for it (or just the live reader) with the :data:`Services` or
:data:`Reader` dependency instead of closing over it, so routes live in
modules of their own and every app has its own services.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from healthsync.api.outbound import Outbound
from healthsync.config import Settings
from healthsync.metrics import PipelineCollector
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.fhir_archive import ArchivedObservations
from healthsync.store.fhir_queries import FhirReader
from healthsync.store.queries import LiveReader


@dataclass(frozen=True, slots=True)
class ApiServices:
    settings: Settings
    redis: Redis
    reader: LiveReader
    fhir: FhirReader
    # History older than Redis keeps (None: no archive to read).
    archive: ArchiveReader | None
    # Vital-sign Observations older than Redis keeps, from that archive.
    fhir_archive: ArchivedObservations | None
    collector: PipelineCollector
    registry: CollectorRegistry
    started: float  # epoch seconds; the CapabilityStatement's publication date
    # The bounded executor for blocking calls out (JWKS fetches, the broker check).
    outbound: Outbound


# Async, so FastAPI calls them inline rather than in its thread pool.
async def _services(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


async def _reader(request: Request) -> LiveReader:
    services: ApiServices = request.app.state.services
    return services.reader


Services = Annotated[ApiServices, Depends(_services)]
Reader = Annotated[LiveReader, Depends(_reader)]
