"""A dependency that is down answers 503 with a reason, never a 500.

A Redis that is restarting, loading its append-only file or unreachable
raises redis-py's ConnectionError (BusyLoadingError is one) or TimeoutError
deep inside a route. Those are not bugs of the request: the client should come
back shortly, so the answer is 503 with `Retry-After`, and under /fhir an
OperationOutcome. The connection pool reconnects on the next request by itself.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from healthsync.api import fhir

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2
_REASON = "the live store (Redis) is unavailable; try again shortly"


def install(app: FastAPI) -> None:
    """Answer 503 for every route when the live store cannot be reached."""
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)


async def _redis_down(request: Request, exc: Exception) -> Response:
    # The exception's text names only the server address and the error, never patient data.
    log.warning("redis unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    if fhir.is_fhir_request(request):
        response = fhir.error_response(503, _REASON)
        response.headers.update(headers)
        return response
    return JSONResponse(
        {"error": {"status": 503, "message": _REASON}}, status_code=503, headers=headers
    )
