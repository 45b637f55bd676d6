"""A local PKI: one CA, a server certificate per service, device certificates, a CRL.

Enough for one site to run every HealthSync link over TLS without buying
certificates: ``healthsync certs init`` makes the CA and the server
certificates, ``healthsync certs device ID`` a device's client certificate,
``healthsync certs revoke ID`` puts that certificate on the CRL. A hospital
with its own PKI points ``tls.dir`` at files with the same names instead.

Layout under the directory (files 0600, directories 0700, since the keys are
what the whole transport security rests on)::

    ca.crt ca.key crl.pem {service}.crt {service}.key
    devices/{device_id}.crt clients/{stage}.crt clients/{stage}.key
    ../{name}-device-keys/{device_id}.key   (keys made here only; see device_key_dir)

Keys are ECDSA P-256: every TLS stack HealthSync talks to (OpenSSL in Python,
ncat, redis-server, HAProxy, librdkafka) accepts them, and they take
milliseconds to make, so tests and ``healthsync up`` can create a PKI on the fly.

A device's identity is the URI SAN ``urn:healthsync:device:<device_id>``
(the subject CN repeats it for people reading the certificate; see
:mod:`healthsync.security.tls`). Service certificates have no such SAN, so
they cannot speak for a device though they carry client-auth usage.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from healthsync.domain.readings import ID_RE
from healthsync.errors import HealthSyncError

SERVICES = ("ingest", "api", "redis", "kafka")
DEVICE_URI_PREFIX = "urn:healthsync:device:"

_CA_DAYS = 3650
_SERVICE_DAYS = 825
# OpenSSL refuses a connection whose CRL is past its nextUpdate, so the CRL is
# re-signed on every revocation and otherwise lasts as long as a server certificate.
_CRL_DAYS = _SERVICE_DAYS
# Clocks of small devices drift: a certificate is valid from a little before it was made.
_BACKDATE = timedelta(minutes=5)


class CertError(HealthSyncError):
    """A certificate operation that cannot be done; the message says why and what to run."""


def ca_cert_path(directory: Path) -> Path:
    return directory / "ca.crt"


def ca_key_path(directory: Path) -> Path:
    return directory / "ca.key"


def crl_path(directory: Path) -> Path:
    return directory / "crl.pem"


def service_paths(directory: Path, service: str) -> tuple[Path, Path]:
    """(certificate, key) of one of :data:`SERVICES`."""
    if service not in SERVICES:
        raise CertError(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    return directory / f"{service}.crt", directory / f"{service}.key"


def device_key_dir(directory: Path) -> Path:
    """Where keys made for devices go: beside the CA's directory, never in it.

    The CA's directory (with ``ca.key``) can then stay on the CA host while
    device keys are handed out. Production devices make their own key and send
    a CSR (``healthsync certs device ID --csr FILE``): no key is made here.
    """
    return directory.parent / f"{directory.name}-device-keys"


def device_paths(directory: Path, device_id: str) -> tuple[Path, Path]:
    """(certificate, key) of a device."""
    if ID_RE.fullmatch(device_id) is None:
        raise CertError("a device id is 1-64 of A-Z a-z 0-9 . _ : -")
    return directory / "devices" / f"{device_id}.crt", device_key_dir(
        directory
    ) / f"{device_id}.key"


def pki_exists(directory: Path) -> bool:
    """Whether a CA and the server certificates are there (what ``certs init`` makes)."""
    needed = [ca_cert_path(directory), ca_key_path(directory), crl_path(directory)]
    for service in SERVICES:
        needed.extend(service_paths(directory, service))
    return all(path.is_file() for path in needed)


def init_pki(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    force: bool = False,
) -> None:
    """Create a CA, a server certificate per service valid for `hosts`, and an empty CRL.

    With `force` everything is replaced, the CA too: certificates issued
    before, device certificates included, are then no longer trusted.
    """
    if not hosts:
        raise CertError("a server certificate needs at least one host name or address")
    targets = [ca_cert_path(directory), ca_key_path(directory), crl_path(directory)]
    for service in SERVICES:
        targets.extend(service_paths(directory, service))
    _refuse_existing(targets, force)
    _make_dir(directory)

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HealthSync local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(ca_key_path(directory), _key_pem(ca_key), force=True)
    _write(ca_cert_path(directory), ca_cert.public_bytes(serialization.Encoding.PEM), force=True)

    alt_names = x509.SubjectAlternativeName([_general_name(host) for host in hosts])
    for service in SERVICES:
        key = ec.generate_private_key(ec.SECP256R1())
        # Services are TLS clients of each other too (a proxy in front of the
        # broker, a stage connecting to Redis), hence both usages.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = (
            _leaf(f"healthsync-{service}", key, ca_cert, now, now + timedelta(days=_SERVICE_DAYS))
            .add_extension(alt_names, critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = service_paths(directory, service)
        _write(key_path, _key_pem(key), force=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), force=True)
    write_crl(directory, ca_cert, ca_key, [])


def issue_device(
    directory: Path,
    device_id: str,
    *,
    days: int = 365,
    force: bool = False,
    not_before: datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a client certificate and make a key for `device_id`; returns their paths.

    The key goes to :func:`device_key_dir`, apart from ``ca.key``: for tests and
    demos; production devices send a CSR (:func:`sign_device_csr`).
    `not_before` (default: now) exists so that a certificate valid in the past
    only, an expired one, can be made on purpose.
    """
    cert_path, key_path = device_paths(directory, device_id)
    _refuse_existing([cert_path, key_path], force)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before if not_before is not None else datetime.now(UTC)
    _write_device_cert(directory, device_id, key.public_key(), start, days)
    _make_dir(key_path.parent)
    _write(key_path, _key_pem(key), force=True)
    return cert_path, key_path


def sign_device_csr(
    directory: Path, device_id: str, csr: bytes, *, days: int = 365, force: bool = False
) -> Path:
    """A certificate for the key of a device's own CSR (PEM); no key is made or written.

    The CSR's signature must verify; its subject is ignored: the certificate's
    subject and URI SAN are the CA's, for `device_id`.
    """
    cert_path, _ = device_paths(directory, device_id)
    _refuse_existing([cert_path], force)
    _write_device_cert(directory, device_id, _csr_key(csr), datetime.now(UTC), days)
    return cert_path


def _write_device_cert(
    directory: Path,
    device_id: str,
    public_key: CertificatePublicKeyTypes,
    start: datetime,
    days: int,
) -> None:
    if days < 1:
        raise CertError("a device certificate must be valid for at least 1 day")
    cert_path, _ = device_paths(directory, device_id)
    ca_cert, ca_key = load_ca(directory)
    _make_dir(cert_path.parent)
    cert = (
        _leaf(device_id, public_key, ca_cert, start, start + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), force=True)


def _csr_key(pem: bytes) -> CertificatePublicKeyTypes:
    """The public key of a CSR whose signature proves its sender holds the private key."""
    try:
        request = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise CertError(f"not a PEM certificate signing request: {exc}") from None
    if not request.is_signature_valid:
        raise CertError("the certificate signing request's signature does not verify")
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertError("a device key must be ECDSA or RSA")
    return key


def stage_client_paths(directory: Path, stage: str) -> tuple[Path, Path]:
    """(certificate, key) a stage presents to the services it connects to (Redis)."""
    if ID_RE.fullmatch(stage) is None:
        raise CertError("a stage name is 1-64 of A-Z a-z 0-9 . _ : -")
    return directory / "clients" / f"{stage}.crt", directory / "clients" / f"{stage}.key"


def issue_stage_client(directory: Path, stage: str) -> tuple[Path, Path]:
    """A client certificate for one stage (CN ``healthsync-stage-<stage>``, client auth only),
    made once and kept: each stage connects to Redis as itself."""
    cert_path, key_path = stage_client_paths(directory, stage)
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    ca_cert, ca_key = load_ca(directory)
    _make_dir(cert_path.parent)
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _leaf(f"healthsync-stage-{stage}", key, ca_cert, now, now + timedelta(days=_SERVICE_DAYS))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), force=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), force=True)
    return cert_path, key_path


# --- helpers ------------------------------------------------------------------


def _leaf(
    common_name: str,
    key: ec.EllipticCurvePrivateKey | CertificatePublicKeyTypes,
    ca_cert: x509.Certificate,
    start: datetime,
    end: datetime,
) -> x509.CertificateBuilder:
    public_key = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_crl(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serials: Sequence[int],
) -> None:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + timedelta(days=_CRL_DAYS))
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    _write(crl_path(directory), crl.public_bytes(serialization.Encoding.PEM), force=True)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_path(directory).read_bytes())
        key = serialization.load_pem_private_key(ca_key_path(directory).read_bytes(), None)
    except FileNotFoundError:
        raise CertError(f"no CA in {directory}: run `healthsync certs init` first") from None
    except ValueError as exc:
        raise CertError(f"the CA in {directory} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{ca_key_path(directory)} is not an EC key made by `healthsync certs`")
    return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more files" if len(existing) > 1 else ""
        raise CertError(f"{existing[0]}{more} already exist (use --force to replace)")


def _make_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


def _write(path: Path, data: bytes, *, force: bool) -> None:
    """Write `data` readable by the owner only; never visible half-written or world-readable."""
    if path.exists() and not force:
        raise CertError(f"{path} already exists (use --force to replace)")
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # a stale temporary file may have had other modes
        f.write(data)
        f.flush()
        os.fsync(fd)
    tmp.replace(path)
