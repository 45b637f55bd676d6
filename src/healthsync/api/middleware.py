"""ASGI middleware that runs before any route: what every request and answer gets.

- :class:`BodyLimit`: a request body over ``api.max_body_bytes`` is answered 413
  before a route (or FastAPI's body parsing) reads it, with or without a
  Content-Length; a body without credentials on a guarded path is 401 before
  it is parsed, so nobody unauthenticated makes the API hold or parse a body.
- :class:`PublicUrl`: the request's scheme and host are the configured public
  base URL (``api.base_url``), whatever the ``Host`` header says, so the links
  in FHIR Bundles cannot be pointed elsewhere by a client.
- :class:`SecurityHeaders`: ``X-Content-Type-Options: nosniff``, HSTS, and
  ``Cache-Control: no-store`` on the patient-data paths and on refusals.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthsync.api import fhir
from healthsync.config_services import ApiSettings

# Paths anyone may call: health, metrics, the API description and its assets.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
OPEN_PREFIXES = ("/docs",)
# Where answers hold patient data (and refusals of it): never kept by a cache.
NO_STORE_PREFIXES = ("/v1/", "/fhir")
_HSTS = "max-age=31536000; includeSubDomains"


def _error(scope: Scope, status: int, message: str, headers: dict[str, str]) -> Response:
    request = Request(scope)
    if fhir.is_fhir_request(request):
        response = fhir.error_response(status, message)
        response.headers.update(headers)
        return response
    body = {"error": {"status": status, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        too_large = f"the request body is larger than {self.max_bytes} bytes"
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _error(scope, 413, too_large, {"Connection": "close"})(scope, receive, send)
            return
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        if has_body and "authorization" not in headers and not _is_open(scope["path"]):
            await self._unauthenticated(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside whatever reads the body; the app's handlers answer it.
                    raise HTTPException(413, too_large, headers={"Connection": "close"})
            return message

        await self.app(scope, limited_receive, send)

    async def _unauthenticated(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = getattr(scope["app"].state, "guard", None)
        if guard is not None:
            guard.failures.labels(reason="missing").inc()
        headers = {"WWW-Authenticate": 'Bearer realm="healthsync"', "Connection": "close"}
        response = _error(scope, 401, "a bearer token is required", headers)
        await response(scope, receive, send)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class PublicUrl:
    """Rewrites scheme, server and Host to the configured base URL."""

    def __init__(self, app: ASGIApp, base_url: str) -> None:
        self.app = app
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"api.base_url {base_url!r} must be http(s)://host[:port]")
        self.scheme = parts.scheme
        default = 443 if parts.scheme == "https" else 80
        self.server = (parts.hostname, parts.port or default)
        self.host = parts.netloc.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = dict(scope)
            scope["scheme"] = self.scheme
            scope["server"] = self.server
            headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
            scope["headers"] = [(b"host", self.host), *headers]
        await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = scope["path"].startswith(NO_STORE_PREFIXES)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if self.hsts:
                    headers["Strict-Transport-Security"] = _HSTS
                if no_store:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: Starlette, settings: ApiSettings) -> None:
    """Add the middleware above; outermost first: headers, public URL, body limit."""
    base_url = public_base_url(settings)
    # Each add wraps the ones before it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(PublicUrl, base_url=base_url)
    app.add_middleware(SecurityHeaders, hsts=base_url.startswith("https://"))


def public_base_url(settings: ApiSettings) -> str:
    """``api.base_url``, or the address the API listens on."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    scheme = "https" if settings.tls_enabled else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{scheme}://{host}:{settings.port}"
