"""The FHIR R4 API as a sub-application, mounted at ``/fhir`` by the app factory.

Its own app, so that it has its own error handlers: every error raised under
``/fhir`` (an HTTP error, a refused token, an invalid query, a route that does
not exist, Redis down, undecryptable data) is an OperationOutcome, and its own
OpenAPI document at ``/fhir/openapi.json``. It shares the parent's services and
guard (the same Redis, readers, credentials and audit log), and the parent's
middleware (body limit, public URL, security headers) wraps it as it wraps
every route.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from healthsync import __version__
from healthsync.api import fhir, unavailable
from healthsync.api.auth import Guard
from healthsync.api.errors import install_error_handlers
from healthsync.api.routes import fhir as fhir_routes
from healthsync.api.services import ApiServices


def create_fhir_app(services: ApiServices, guard: Guard) -> FastAPI:
    """The FHIR API over the parent's services; mount it at :data:`fhir.PREFIX`."""
    app = FastAPI(
        title="HealthSync FHIR R4",
        version=__version__,
        description="A read-only FHIR R4 server subset over the live store.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    app.state.guard = guard
    install_error_handlers(app, fhir.error_response, validation_status=400)
    unavailable.install(app, fhir.error_response)
    app.include_router(fhir_routes.router)
    return app


async def _bare_prefix(request: Request) -> Response:
    # A mount matches /fhir/... only; /fhir itself stays what it always was, not a redirect.
    return fhir.error_response(404, "Not Found")


def mount(app: FastAPI, services: ApiServices, guard: Guard) -> None:
    """Mount the FHIR API at /fhir on `app`, sharing its services and guard."""
    app.add_route(fhir.PREFIX, _bare_prefix, include_in_schema=False)
    app.mount(fhir.PREFIX, create_fhir_app(services, guard))
