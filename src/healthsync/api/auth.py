"""Authentication and per-route authorisation for the API, as FastAPI dependencies.

Every request but ``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI
documents carries ``Authorization: Bearer <token>``, where the token is either

- a JWT from the configured identity provider: signed with RS256/ES256 (or the
  configured public-key algorithms), verified against a PEM public key, a JWKS
  file or a JWKS URL; ``exp``, ``iss``, ``aud`` and ``sub`` are required and
  checked, the header's ``typ`` must be ``at+jwt`` (RFC 9068: an ID token is
  not an access token) and the lifetime at most ``auth.jwt_max_lifetime_s``;
  roles come from the ``roles`` claim, SMART scopes from ``scope``; or
- an API key (``hsk_...``) from the keys file, with the role it was created with.

A route declares what it needs with one of :class:`Guard`'s dependencies; the
dependency answers 401 (no or bad credentials, with ``WWW-Authenticate:
Bearer``) or 403 (valid credentials, not allowed), and otherwise hands the
route an :class:`Access`, through which the route writes the audit record
before it answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter

from healthsync.api.apikeys import KEY_PREFIX, ApiKeyError, ApiKeyStore
from healthsync.api.audit import AuditLog, AuditRecord, AuditUnavailableError
from healthsync.api.jwt_verifier import AuthError, JwtVerifier, invalid_token
from healthsync.api.outbound import Outbound
from healthsync.api.permissions import Grants, grants_for
from healthsync.config_services import AuthSettings
from healthsync.errors import ConfigError

log = logging.getLogger(__name__)

_REALM = 'Bearer realm="healthsync"'


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established from the token."""

    subject: str  # the JWT's sub, or apikey:NAME
    method: str  # "jwt" or "api-key"
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    grants: Grants


class Authenticator:
    """Turns a bearer token into a Principal, or raises AuthError."""

    def __init__(self, settings: AuthSettings, outbound: Outbound | None = None) -> None:
        if not settings.jwt_enabled and settings.api_keys_file is None:
            raise ConfigError(
                "the API needs authentication: set HEALTHSYNC_AUTH_API_KEYS_FILE "
                "(see `healthsync apikey`) and/or HEALTHSYNC_AUTH_JWT_ISSUER with its keys"
            )
        self.outbound = outbound or Outbound()
        self.jwt = JwtVerifier(settings, self.outbound) if settings.jwt_enabled else None
        self.keys = ApiKeyStore(settings.api_keys_file) if settings.api_keys_file else None
        if self.keys is not None:
            try:
                self.keys.load()
            except ApiKeyError as exc:
                raise ConfigError(str(exc)) from None

    async def authenticate(self, token: str) -> Principal:
        if token.startswith(KEY_PREFIX):
            return self._api_key(token)
        if self.jwt is None:
            raise invalid_token("JWTs are not accepted here; use an API key")
        claims = await self.jwt.verify(token)
        roles = _strings(claims.get("roles"))
        scopes = _strings(claims.get("scope"))
        return Principal(claims["sub"], "jwt", roles, scopes, grants_for(roles, scopes))

    def _api_key(self, token: str) -> Principal:
        if self.keys is None:
            raise invalid_token("API keys are not accepted here", "unknown_key")
        try:
            key = self.keys.lookup(token)
        except ApiKeyError as exc:
            log.error("API keys file unusable", extra={"error": str(exc)})
            raise AuthError(503, "keys_unavailable", "the API keys cannot be read") from None
        if key is None:
            raise invalid_token("unknown or revoked API key", "unknown_key")
        roles = (key.role,)
        return Principal(f"apikey:{key.name}", "api-key", roles, (), grants_for(roles, ()))


def _strings(value: Any) -> tuple[str, ...]:
    """A claim holding a space-separated string or a list of strings."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


@dataclass(frozen=True, slots=True)
class Access:
    """An authorised request; the route records what it reads through it."""

    principal: Principal
    request: Request
    audit_log: AuditLog
    failures: Counter
    trusted_proxies: frozenset[str] = frozenset()
    # The credential presented, and who checked it: a response that lasts checks it again.
    credential: str | None = None
    authenticator: Authenticator | None = None

    async def still_valid(self) -> bool:
        """Whether the credential is still accepted with the same rights: a JWT not yet
        expired, an API key not revoked (a stream re-checks it as it goes)."""
        if self.credential is None or self.authenticator is None:
            return True
        try:
            now = await self.authenticator.authenticate(self.credential)
        except AuthError:
            return False
        return now.grants == self.principal.grants

    async def record(
        self, action: str, patients: Iterable[str], resource: str | None = None
    ) -> None:
        """Write the audit record, or answer 503 instead of the data."""
        request = self.request
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        peer = request.client.host if request.client else "unknown"
        forwarded = request.headers.get("x-forwarded-for")
        record = AuditRecord(
            actor=self.principal.subject,
            auth=self.principal.method,
            roles=self.principal.roles,
            client=peer,
            action=action,
            method=request.method,
            route=_route_template(request),
            path=path,
            patients=tuple(sorted(set(patients))),
            resource=resource,
            forwarded_for=forwarded[:256] if forwarded and peer in self.trusted_proxies else None,
        )
        try:
            await self.audit_log.write(record)
        except AuditUnavailableError as exc:
            self.failures.labels(reason="audit_unavailable").inc()
            log.error("audit record not written; answer withheld", extra={"error": str(exc)})
            raise HTTPException(
                503, "the audit log cannot be written, so patient data is not served"
            ) from None


class Guard:
    """Authenticates, authorises and counts refusals; the app keeps one in `app.state.guard`.

    Routes do not call it: they declare one of the dependencies below, which
    find the guard of the app that serves the request.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        audit_log: AuditLog,
        registry: CollectorRegistry,
        trusted_proxies: frozenset[str] = frozenset(),
    ) -> None:
        self.authenticator = authenticator
        self.audit_log = audit_log
        self.trusted_proxies = trusted_proxies
        self.failures = Counter(
            "healthsync_api_refused",
            "API requests refused: authentication, authorisation or the audit log",
            ["reason"],
            registry=registry,
        )

    async def access(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None,
        allowed: Callable[[Grants], bool],
        need: str,
    ) -> Access:
        if credentials is None:
            self._refuse(request, AuthError(401, "missing", "a bearer token is required"))
        try:
            principal = await self.authenticator.authenticate(credentials.credentials)
        except AuthError as exc:
            self._refuse(request, exc)
        if not allowed(principal.grants):
            self._refuse(request, AuthError(403, "forbidden", f"this needs {need}"))
        return Access(
            principal,
            request,
            self.audit_log,
            self.failures,
            self.trusted_proxies,
            credentials.credentials,
            self.authenticator,
        )

    def _refuse(self, request: Request, error: AuthError) -> NoReturn:
        self.failures.labels(reason=error.reason).inc()
        client = request.client.host if request.client else "unknown"
        log.warning(
            "request refused",
            extra={"status": error.status, "reason": error.reason, "client": client},
        )
        headers = None
        if error.status == 401:
            if error.reason == "missing":
                headers = {"WWW-Authenticate": _REALM}
            else:
                headers = {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'}
        elif error.status == 403:
            headers = {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope"'}
        raise HTTPException(error.status, error.description, headers=headers)


def _route_template(request: Request) -> str:
    """The route's template from the app's root, e.g. /fhir/{resource_type} in a mounted app."""
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return request.url.path
    root: str = request.scope.get("root_path", "")
    mounted_at = root.removeprefix(request.scope.get("app_root_path", ""))
    return mounted_at + template


# The dependencies routes declare. Module-level, so that FastAPI can resolve them from a
# route's (string) annotations: `access: Annotated[Access, Depends(reads("Observation"))]`.

_bearer = HTTPBearer(auto_error=False, description="a JWT or an API key (hsk_...)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AccessDependency = Callable[..., Awaitable[Access]]


def _requires(allowed: Callable[[Grants], bool], need: str) -> AccessDependency:
    async def dependency(request: Request, credentials: Credentials) -> Access:
        guard: Guard = request.app.state.guard
        return await guard.access(request, credentials, allowed, need)

    return dependency


def reads(*resource_types: str) -> AccessDependency:
    """Patient data made of these FHIR types."""
    need = "read access to " + ", ".join(resource_types)
    return _requires(lambda grants: all(grants.can_read(t) for t in resource_types), need)


async def fhir_reads(request: Request, resource_type: str, credentials: Credentials) -> Access:
    """The FHIR type named by the route's `resource_type` path parameter."""
    guard: Guard = request.app.state.guard
    need = f"read access to {resource_type}"
    return await guard.access(request, credentials, lambda g: g.can_read(resource_type), need)


authenticated = _requires(lambda grants: True, "valid credentials")
acknowledges = _requires(lambda grants: grants.acknowledge, "the right to acknowledge alerts")
summary = _requires(lambda grants: grants.summary, "access to the aggregates")
assigns = _requires(lambda grants: grants.assign, "the right to assign devices to patients")
