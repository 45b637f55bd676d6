"""How the API answers errors: `{"error": {status, message}}`, under /fhir an OperationOutcome."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthsync.api import fhir
from healthsync.security.crypto import DecryptError

log = logging.getLogger(__name__)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "message": message}}, status_code=status, headers=headers
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if fhir.is_fhir_request(request):
        return fhir.error_response(exc.status_code, str(exc.detail), exc)
    return _error(exc.status_code, str(exc.detail), exc.headers)


async def _undecryptable(request: Request, exc: DecryptError) -> Response:
    # Stored data this keyring cannot open: say so, never serve garbage. Which key
    # is missing is for the operator's log, not for clients.
    log.error("stored data cannot be decrypted", extra={"error": str(exc)})
    message = "stored data cannot be decrypted"
    if fhir.is_fhir_request(request):
        return fhir.error_response(500, message)
    return _error(500, message)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = f"invalid {where}: {first.get('msg', 'bad request')}"
    if fhir.is_fhir_request(request):
        return fhir.error_response(400, message)
    return _error(422, message)


def install_error_handlers(app: FastAPI) -> None:
    # The decorator form, as a call: it takes handlers typed for their own exception.
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(DecryptError)(_undecryptable)
    app.exception_handler(RequestValidationError)(_validation_error)
