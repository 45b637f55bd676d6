"""What every FHIR answer shares: the media type, errors as OperationOutcomes, ids.

The FHIR routes themselves are in :mod:`healthsync.api.routes.fhir`, their
search parameters in :mod:`healthsync.api.fhir_search`, and the sub-application
that serves them in :mod:`healthsync.api.fhir_app`, whose error handlers answer
with :func:`error_response`. The middleware, which answers some requests before
any app is chosen (a body too large, a body without credentials), tells a FHIR
request by its path with :func:`is_fhir_request`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
PREFIX = "/fhir"
# The FHIR id datatype; checked before an id reaches a Redis key name.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class FhirError(StarletteHTTPException):
    """A request the FHIR API refuses; answered as an OperationOutcome."""

    def __init__(self, status_code: int, issue_code: str, diagnostics: str) -> None:
        super().__init__(status_code, diagnostics)
        self.issue_code = issue_code


def invalid(diagnostics: str) -> FhirError:
    return FhirError(400, "invalid", diagnostics)


def operation_outcome(issue_code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": issue_code, "diagnostics": diagnostics}],
    }


_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    422: "invalid",
    503: "transient",
}


def is_fhir_request(request: Request) -> bool:
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_response(status_code: int, diagnostics: str, exc: Exception | None = None) -> Response:
    """An error under /fhir as the OperationOutcome FHIR clients expect."""
    if isinstance(exc, FhirError):
        code = exc.issue_code
    else:
        code = _ISSUE_CODES.get(status_code, "exception" if status_code >= 500 else "processing")
    headers = exc.headers if isinstance(exc, StarletteHTTPException) else None
    return FhirResponse(
        operation_outcome(code, diagnostics), status_code=status_code, headers=headers
    )
