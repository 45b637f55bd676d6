"""How an app answers errors, in its own format.

The main app answers ``{"error": {status, message}}`` (:func:`json_error`); the
FHIR sub-application mounted at ``/fhir`` installs the same handlers with
:func:`healthsync.api.fhir.error_response`, so its errors are OperationOutcomes
because of where the request was routed, not because of how its path reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthsync.security.crypto import DecryptError
from healthsync.store.archive.errors import ArchiveReadError, ObjectStoreError

log = logging.getLogger(__name__)

# (status, message, the exception or None) -> the answer; an HTTPException's headers go on it.
ErrorAnswer = Callable[[int, str, Exception | None], Response]


def json_error(status: int, message: str, exc: Exception | None = None) -> Response:
    headers: Mapping[str, str] | None = None
    if isinstance(exc, StarletteHTTPException):
        headers = exc.headers
    return JSONResponse(
        {"error": {"status": status, "message": message}}, status_code=status, headers=headers
    )


@dataclass(frozen=True, slots=True)
class ErrorStyle:
    answer: ErrorAnswer
    # FastAPI's own 422 for a bad query or body; FHIR says 400 with an "invalid" issue.
    validation_status: int


async def _http_error(style: ErrorStyle, request: Request, exc: StarletteHTTPException) -> Response:
    return style.answer(exc.status_code, str(exc.detail), exc)


async def _undecryptable(style: ErrorStyle, request: Request, exc: DecryptError) -> Response:
    # Stored data this keyring cannot open: say so, never serve garbage. Which key
    # is missing is for the operator's log, not for clients.
    log.error("stored data cannot be decrypted", extra={"error": str(exc)})
    return style.answer(500, "stored data cannot be decrypted", None)


async def _unreadable_archive(
    style: ErrorStyle, request: Request, exc: ArchiveReadError
) -> Response:
    # History past the object would be silently shorter: refuse the whole answer, and say
    # which object (its key holds an hour, a partition and offsets, nothing of a patient).
    log.error("archived object cannot be read", extra={"error": str(exc)})
    return style.answer(500, str(exc), None)


async def _archive_unavailable(
    style: ErrorStyle, request: Request, exc: ObjectStoreError
) -> Response:
    log.warning("archive unavailable", extra={"error": str(exc)})
    response = style.answer(503, f"the archive is unavailable; try again shortly ({exc})", None)
    response.headers["Retry-After"] = "5"
    return response


async def _validation_error(
    style: ErrorStyle, request: Request, exc: RequestValidationError
) -> Response:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = f"invalid {where}: {first.get('msg', 'bad request')}"
    return style.answer(style.validation_status, message, None)


class _Unexpected:
    """ASGI middleware: an exception that no handler answered becomes a 500 in the app's
    own format, naming no cause (it may hold patient data, or show how the store is
    built); the log has it. Left to Starlette and uvicorn it was a plain-text 500 and,
    once a handler had answered it, a connection closed under the client."""

    def __init__(self, app: ASGIApp, answer: ErrorAnswer) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            # Not the path: it may name a patient.
            log.exception("unexpected error answering a request")
            if started:
                raise
            await self.answer(500, "internal error", None)(scope, receive, send)


def install_error_handlers(
    app: FastAPI, answer: ErrorAnswer = json_error, validation_status: int = 422
) -> None:
    """Answer HTTP errors, undecryptable data, unreadable archive objects, invalid
    requests and anything unexpected with `answer`."""
    style = ErrorStyle(answer, validation_status)
    app.add_middleware(_Unexpected, answer=answer)
    app.add_exception_handler(StarletteHTTPException, partial(_http_error, style))
    app.add_exception_handler(DecryptError, partial(_undecryptable, style))
    app.add_exception_handler(ArchiveReadError, partial(_unreadable_archive, style))
    app.add_exception_handler(ObjectStoreError, partial(_archive_unavailable, style))
    app.add_exception_handler(RequestValidationError, partial(_validation_error, style))
