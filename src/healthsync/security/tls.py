"""TLS contexts for HealthSync's servers and clients, from the PKI in ``tls.dir``.

Policy, the same for every service:

- TLS 1.3 only by default, with the single suite ``TLS_AES_256_GCM_SHA384``:
  data in transit is AES-256-GCM encrypted. ``tls.min_version = "1.2"`` also
  allows TLS 1.2, and then only the ECDHE AES-256-GCM suites (forward secrecy,
  AEAD). Under TLS 1.2 a client certificate travels in clear, so the device id
  in it is visible on the network; under TLS 1.3 it is encrypted.
- Python's ``ssl`` module has no call for the TLS 1.3 suites (``set_ciphers``
  covers TLS 1.2 and older), so :func:`_restrict_tls13_suites` calls OpenSSL's
  ``SSL_CTX_set_ciphersuites`` through ctypes when it can prove it talks to the
  same OpenSSL as ``ssl``. Where it cannot, the server still prefers the
  AES-256 suite, and :func:`negotiated_problem` lets a server refuse a
  connection that ended up with anything else after the handshake.
- Client certificates are checked against ``ca.crt`` and ``crl.pem``
  (``VERIFY_CRL_CHECK_LEAF``): a revoked or expired device certificate fails
  the handshake.

Device identity (:func:`device_identity`): the URI SAN
``urn:healthsync:device:<id>`` only (``healthsync certs device`` writes it;
``openssl req -addext subjectAltName=URI:urn:healthsync:device:mon-0001``
for certificates made by other tools). The subject CN is not enough: the
services' own certificates come from the same CA and may act as clients.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import ssl
import sys
from pathlib import Path
from typing import Any, Literal

from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.security.certs import (
    DEVICE_URI_PREFIX,
    CertError,
    ca_cert_path,
    crl_path,
    revoked_serials,
    service_paths,
)

log = logging.getLogger(__name__)

TLS13_SUITES = ("TLS_AES_256_GCM_SHA384",)
TLS12_CIPHERS = ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384")
ClientCerts = Literal["none", "optional", "required"]

_VERIFY = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def server_context(
    settings: Settings, service: str, *, client_certs: ClientCerts = "none"
) -> ssl.SSLContext:
    """A server context with `service`'s certificate from ``tls.dir``.

    `client_certs` "optional" or "required" verifies client certificates
    against the CA and the CRL ("optional" still admits clients without one).
    """
    directory = settings.tls.dir
    cert, key = service_paths(directory, service)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_policy(ctx, settings.tls.min_version)
    # The server picks the suite, so a client that also offers weaker ones gets AES-256.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the {service} certificate from {directory} ({exc}); "
            "create one with `healthsync certs init`"
        ) from None
    ctx.verify_mode = _VERIFY[client_certs]
    if client_certs != "none":
        try:
            ctx.load_verify_locations(cafile=ca_cert_path(directory))
            ctx.load_verify_locations(cafile=crl_path(directory))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load ca.crt and crl.pem from {directory} ({exc}); "
                "create them with `healthsync certs init`"
            ) from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(
    settings: Settings,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    ca: Path | None = None,
) -> ssl.SSLContext:
    """A client context that trusts `ca` (default ``tls.dir/ca.crt``), with an optional
    client certificate (a device's, or a service's when it connects to another)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_policy(ctx, settings.tls.min_version)
    cafile = ca or ca_cert_path(settings.tls.dir)
    try:
        ctx.load_verify_locations(cafile=cafile)
        if cert is not None:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS client files ({exc})") from None
    return ctx


def device_identity(peer: dict[str, Any]) -> str | None:
    """The device id a verified peer certificate (``getpeercert()``) speaks for."""
    for kind, value in peer.get("subjectAltName", ()):
        if kind == "URI" and value.startswith(DEVICE_URI_PREFIX):
            return str(value[len(DEVICE_URI_PREFIX) :])
    return None


def negotiated_problem(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """Why a finished handshake falls short of the policy, or None when it does not."""
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    name = cipher[0] if cipher else None
    if version == "TLSv1.3" and name in TLS13_SUITES:
        return None
    if version == "TLSv1.2" and name in TLS12_CIPHERS:
        return None
    return f"{version} {name} is not allowed"


def _apply_policy(ctx: ssl.SSLContext, min_version: str) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(":".join(TLS12_CIPHERS))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _restrict_tls13_suites(ctx)


_libssl: ctypes.CDLL | None = None
_libssl_checked = False


def _restrict_tls13_suites(ctx: ssl.SSLContext) -> bool:
    """Limit the TLS 1.3 suites to :data:`TLS13_SUITES`; False where that is impossible.

    CPython's SSLContext object starts with the ``SSL_CTX *`` right after the
    object header; the library is used only if it reports the very version
    ``ssl`` was built with, and the result is read back through ``get_ciphers``.
    """
    lib = _load_libssl()
    if lib is None:
        return False
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_set_ciphersuites(pointer, ":".join(TLS13_SUITES).encode()) != 1:
        return False
    names = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
    return names == set(TLS13_SUITES)


def _load_libssl() -> ctypes.CDLL | None:
    global _libssl, _libssl_checked
    if _libssl_checked:
        return _libssl
    _libssl_checked = True
    if sys.implementation.name != "cpython":
        return None
    try:
        import _ssl  # the extension `ssl` wraps: its libssl is the one to load

        candidates = [_ssl.__file__, ctypes.util.find_library("ssl")]
    except (ImportError, AttributeError):
        candidates = [ctypes.util.find_library("ssl")]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
            version_num = lib.OpenSSL_version_num
            set_suites = lib.SSL_CTX_set_ciphersuites
        except (OSError, AttributeError):
            continue
        version_num.restype = ctypes.c_ulong
        if version_num() != ssl.OPENSSL_VERSION_NUMBER:
            continue
        set_suites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        set_suites.restype = ctypes.c_int
        _libssl = lib
        break
    if _libssl is None:
        log.warning(
            "TLS 1.3 suites cannot be restricted here; weaker suites are refused "
            "after the handshake"
        )
    return _libssl


class RevocationList:
    """The serial numbers on ``crl.pem``, re-read whenever the file changes.

    A server context loads the CRL once; a long-running server keeps this
    next to it so that ``healthsync certs revoke`` takes effect at once.
    """

    def __init__(self, directory: Path) -> None:
        self.path = crl_path(directory)
        self.directory = directory
        self.serials: frozenset[int] = frozenset()
        self.rejected = 0  # CRL files refused: unreadable, not the CA's, or expired
        self._stamp: tuple[int, int] | None = None

    def refresh(self) -> bool:
        """Re-read the CRL if the file changed; True if the list of serials changed.

        A CRL that cannot be read, is not signed by the CA or is past its
        nextUpdate leaves the last good one in force.
        """
        try:
            stat = self.path.stat()
        except OSError:
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            serials = frozenset(revoked_serials(self.directory))
        except CertError as exc:
            self.rejected += 1
            log.warning("keeping the previous CRL", extra={"error": str(exc)})
            return False
        changed = serials != self.serials
        self.serials = serials
        return changed

    def is_revoked(self, serial: int | None) -> bool:
        return serial is not None and serial in self.serials


def peer_serial(peer: dict[str, Any]) -> int | None:
    """The serial number of a ``getpeercert()`` certificate."""
    serial = peer.get("serialNumber")
    return int(serial, 16) if serial else None
