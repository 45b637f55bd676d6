"""A dependency that is down answers 503 with a reason, never a 500.

A Redis that is restarting, loading its append-only file or unreachable
raises redis-py's ConnectionError (BusyLoadingError is one) or TimeoutError
deep inside a route. Those are not bugs of the request: the client should come
back shortly, so the answer is 503 with `Retry-After`, in the app's own error
format (an OperationOutcome from the FHIR sub-application). The connection
pool reconnects on the next request by itself.
"""

from __future__ import annotations

import logging
from functools import partial

from fastapi import FastAPI, Request, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from healthsync.api.errors import ErrorAnswer, json_error

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2
_REASON = "the live store (Redis) is unavailable; try again shortly"


def install(app: FastAPI, answer: ErrorAnswer = json_error) -> None:
    """Answer 503 for every route of `app` when the live store cannot be reached."""
    handler = partial(_redis_down, answer)
    app.add_exception_handler(RedisConnectionError, handler)
    app.add_exception_handler(RedisTimeoutError, handler)


async def _redis_down(answer: ErrorAnswer, request: Request, exc: Exception) -> Response:
    # The exception's text names only the server address and the error, never patient data.
    log.warning("redis unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
    response = answer(503, _REASON, None)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
