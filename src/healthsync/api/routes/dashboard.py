"""``GET /`` and ``GET /dashboard/{asset}``: the live ward dashboard's static files.

The page and its scripts hold no patient data, so they are served without a
token (a browser cannot send one when it navigates); everything the page shows
comes from the authenticated, audited API routes. Every answer carries a
Content-Security-Policy that allows only this origin's own scripts and styles
(no inline script), forbids framing, and sends no Referer.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

ASSETS = Path(str(resources.files("healthsync.api") / "dashboard"))

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        # The sign-in form is handled by the script; a native submit would put the token
        # in a URL, so none is allowed.
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def _asset(relative: str) -> FileResponse:
    path = (ASSETS / relative).resolve()
    # Only the dashboard's own files, whatever the path says (no "..", no other suffix).
    if not path.is_relative_to(ASSETS.resolve()) or path.suffix not in _TYPES:
        raise HTTPException(404, "no such dashboard file")
    if not path.is_file():
        raise HTTPException(404, "no such dashboard file")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=SECURITY_HEADERS)


def dashboard_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> FileResponse:
        return _asset("index.html")

    @router.get("/dashboard/{relative:path}")
    async def asset(relative: str) -> FileResponse:
        return _asset(relative)

    return router
