"""TLS contexts for HealthSync's servers and clients, from the PKI in ``tls.dir``.

Policy, the same for every service:

- TLS 1.3 only by default, with the single suite ``TLS_AES_256_GCM_SHA384``:
  data in transit is AES-256-GCM encrypted. ``tls.min_version = "1.2"`` also
  allows TLS 1.2, and then only the ECDHE AES-256-GCM suites (forward secrecy,
  AEAD). Under TLS 1.2 a client certificate travels in clear, so the device id
  in it is visible on the network; under TLS 1.3 it is encrypted.
- Python's ``ssl`` module has a call for the TLS 1.3 suites only in newer
  versions (``set_ciphersuites``; ``set_ciphers`` covers TLS 1.2 and older).
  Where it is missing, the stage processes are started with an OpenSSL
  configuration that limits the suites (:func:`openssl_conf_env`), and every
  server context refuses, right after the handshake, a connection that
  negotiated anything outside the policy (:func:`negotiated_problem`).
- Client certificates are checked against ``ca.crt`` and ``crl.pem``
  (``VERIFY_CRL_CHECK_LEAF``): a revoked or expired device certificate fails
  the handshake.

Device identity (:func:`device_identity`): the URI SAN
``urn:healthsync:device:<id>`` only (``healthsync certs device`` writes it;
``openssl req -addext subjectAltName=URI:urn:healthsync:device:mon-0001``
for certificates made by other tools). The subject CN is not enough: the
services' own certificates come from the same CA and may act as clients.
A certificate that may also authenticate a TLS server (its Extended Key Usage
names serverAuth or anyExtendedKeyUsage, as the services' do) is no device,
whatever it names (:func:`serves_tls`); devices get clientAuth only, so a
device certificate cannot serve TLS either.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.security.certs import (
    DEVICE_URI_PREFIX,
    CertError,
    ca_cert_path,
    crl_path,
    service_paths,
)
from healthsync.security.crl import revoked_serials

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
    ctx.sslobject_class = _PolicySSLObject
    ctx.sslsocket_class = _PolicySSLSocket
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


def serves_tls(der: bytes) -> bool:
    """Whether a certificate's Extended Key Usage lets it authenticate a TLS server.

    A certificate without the extension is not taken for one: certificates
    made by other tools for devices often have none.
    """
    try:
        usage = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        )
    except x509.ExtensionNotFound:
        return False
    except ValueError:
        return True  # unparsable here after the handshake verified it: not trusted as a device
    return bool(
        {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
        & set(usage.value)
    )


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


def _restrict_tls13_suites(ctx: ssl.SSLContext) -> bool:
    """Limit the TLS 1.3 suites to :data:`TLS13_SUITES`; False where Python cannot.

    ``SSLContext.set_ciphersuites`` exists only in newer Pythons. Elsewhere the
    stage processes get the same limit from an OpenSSL configuration file
    (:func:`openssl_conf_env`), and every server context refuses a connection
    that negotiated anything else right after the handshake (:class:`_PolicySSLObject`).
    """
    setter = getattr(ctx, "set_ciphersuites", None)
    if setter is not None:
        setter(":".join(TLS13_SUITES))
    names = {c["name"] for c in ctx.get_ciphers() if c.get("protocol") == "TLSv1.3"}
    return names == set(TLS13_SUITES)


_OPENSSL_CONF = f"""\
# Written by HealthSync: TLS 1.3 suites for every TLS context of a stage process.
openssl_conf = healthsync_init

[healthsync_init]
ssl_conf = healthsync_ssl

[healthsync_ssl]
system_default = healthsync_tls

[healthsync_tls]
Ciphersuites = {":".join(TLS13_SUITES)}
"""


def openssl_conf_env(run_dir: Path) -> dict[str, str]:
    """The environment that makes a new process's OpenSSL offer only :data:`TLS13_SUITES`.

    OpenSSL reads ``OPENSSL_CONF`` once, when the process first uses it, so this
    is for processes about to be started; the file is written into `run_dir`.
    """
    path = run_dir / "openssl.cnf"
    path.write_text(_OPENSSL_CONF)
    return {"OPENSSL_CONF": str(path)}


class _PolicySSLObject(ssl.SSLObject):
    """Fails the handshake (asyncio servers: ingest, uvicorn) that ends outside the policy."""

    def do_handshake(self) -> None:
        super().do_handshake()
        _enforce(self)


class _PolicySSLSocket(ssl.SSLSocket):
    """The same for blocking sockets."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        _enforce(self)


def _enforce(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    problem = negotiated_problem(ssl_object)
    if problem is not None:
        log.warning("TLS connection refused", extra={"reason": problem})
        raise ssl.SSLError(f"refused after the handshake: {problem}")


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
