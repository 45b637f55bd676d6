"""Verifying a JWT from the identity provider: its signature against the configured
keys (a PEM public key, a JWKS file or a JWKS URL), the claims it must carry, its type
and its lifetime (see :mod:`healthsync.api.auth`), and the refusal each failure is."""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from healthsync.api.outbound import Outbound
from healthsync.config_services import AuthSettings
from healthsync.errors import ConfigError

_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class AuthError(Exception):
    """Why a request was refused: `status` 401 or 403 (503 when keys cannot be fetched)."""

    def __init__(self, status: int, reason: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.reason = reason  # a metric label: missing, invalid_token, unknown_key, forbidden, ...
        self.description = description


def invalid_token(description: str, reason: str = "invalid_token") -> AuthError:
    return AuthError(401, reason, description)


class JwtVerifier:
    """Verifies JWTs against the identity provider's public keys."""

    def __init__(self, settings: AuthSettings, outbound: Outbound) -> None:
        self.outbound = outbound
        sources = [settings.jwt_public_key_file, settings.jwks_file, settings.jwks_url]
        if settings.jwt_audience is None or not any(s is not None for s in sources):
            raise ConfigError(
                "JWT verification needs HEALTHSYNC_AUTH_JWT_AUDIENCE and a key source: "
                "HEALTHSYNC_AUTH_JWT_PUBLIC_KEY_FILE, _JWKS_FILE or _JWKS_URL"
            )
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.algorithms = list(settings.jwt_algorithms)
        self.leeway = settings.jwt_leeway_s
        self.types = {t.lower() for t in settings.jwt_types}
        self.max_lifetime = settings.jwt_max_lifetime_s
        self.pem_key: Any = None
        self.jwks: jwt.PyJWKSet | None = None
        self.jwks_client: jwt.PyJWKClient | None = None
        try:
            if settings.jwt_public_key_file is not None:
                self.pem_key = load_pem_public_key(settings.jwt_public_key_file.read_bytes())
            if settings.jwks_file is not None:
                self.jwks = jwt.PyJWKSet.from_json(settings.jwks_file.read_text())
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(f"cannot load the JWT verification keys: {exc}") from None
        if settings.jwks_url is not None:
            try:
                self.jwks_client = jwt.PyJWKClient(
                    _jwks_url(settings.jwks_url), lifespan=300, timeout=5
                )
            except jwt.PyJWKClientError as exc:
                raise ConfigError(f"auth.jwks_url: {exc}") from None

    async def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise invalid_token(f"not a JWT: {exc}") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise invalid_token(
                f"algorithm {algorithm!r} is not accepted; expected {', '.join(self.algorithms)}"
            )
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in self.types:
            raise invalid_token(
                f"token type {typ!r} is not an access token ({', '.join(self.types)})"
            )
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise invalid_token(str(exc) or type(exc).__name__) from None
        except (TypeError, ValueError):
            # PyJWT's answer to a key of another type than the algorithm's (RSA for ES256).
            raise invalid_token(f"no {algorithm} key to verify this token with") from None
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise invalid_token("the sub claim must be a non-empty string")
        self._check_lifetime(claims)
        return claims

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        issued = claims.get("iat")
        start = issued if isinstance(issued, int | float) else time.time()
        if float(claims["exp"]) - float(start) > self.max_lifetime + self.leeway:
            raise invalid_token(f"the token lives longer than {self.max_lifetime:.0f} s")

    async def _key(self, kid: str | None) -> Any:
        if kid is not None and self.jwks is not None:
            for candidate in self.jwks.keys:
                if candidate.key_id == kid:
                    return candidate.key
        if kid is not None and self.jwks_client is not None:
            return await self._fetch(kid)
        if kid is None or (self.jwks is None and self.jwks_client is None):
            if self.pem_key is not None:
                return self.pem_key
            if self.jwks is not None and len(self.jwks.keys) == 1:
                return self.jwks.keys[0].key
            if self.jwks_client is not None:
                return await self._fetch(None)
            raise invalid_token("the token names no key id (kid) and several keys are configured")
        raise invalid_token(f"no verification key with id {kid!r}")

    async def _fetch(self, kid: str | None) -> Any:
        client = self.jwks_client
        assert client is not None
        try:
            if kid is not None:
                return (await self.outbound.run(client.get_signing_key, kid)).key
            keys = await self.outbound.run(client.get_signing_keys)
        except (jwt.PyJWKClientConnectionError, OSError, http.client.HTTPException) as exc:
            # PyJWT wraps only some network errors; a dropped connection arrives bare.
            description = f"the identity provider's keys cannot be fetched: {exc}"
            raise AuthError(503, "jwks_unavailable", description) from None
        except jwt.PyJWKClientError as exc:
            raise invalid_token(str(exc)) from None
        if len(keys) != 1:
            raise invalid_token("the token names no key id (kid) and the JWKS holds several keys")
        return keys[0].key


def _jwks_url(url: str) -> str:
    """The JWKS URL, which must be https (http only on a loopback address)."""
    parts = urlsplit(url)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.hostname and (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        return url
    raise ConfigError(
        f"auth.jwks_url {url!r} is not a URL to fetch keys from: use https://host/path "
        "(http:// only on loopback)"
    )
