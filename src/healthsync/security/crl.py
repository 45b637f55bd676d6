"""The certificate revocation list: revoking a device, and reading the CRL back verified.

``healthsync certs revoke ID`` adds the device's certificate and re-signs the
CRL (:func:`healthsync.security.certs.write_crl`); ingest re-reads it within a
second (:class:`healthsync.security.tls.RevocationList`), and only a CRL the CA
signed, not past its nextUpdate, counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from healthsync.security.certs import (
    CertError,
    ca_cert_path,
    crl_path,
    device_paths,
    load_ca,
    write_crl,
)


def revoke_device(directory: Path, device_id: str) -> None:
    """Add the device's current certificate to the CRL and re-sign the CRL."""
    cert_path, _ = device_paths(directory, device_id)
    ca_cert, ca_key = load_ca(directory)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        raise CertError(f"no certificate for device {device_id} in {cert_path.parent}") from None
    except ValueError as exc:
        raise CertError(f"{cert_path} is not a PEM certificate: {exc}") from None
    # Not verified: revoking must work even when the CRL on disk has expired.
    revoked = revoked_serials(directory, verify=False)
    revoked.add(cert.serial_number)
    write_crl(directory, ca_cert, ca_key, sorted(revoked))


def revoked_serials(directory: Path, *, verify: bool = True) -> set[int]:
    """Serial numbers on the CRL (empty when there is no CRL yet).

    With `verify` (the default) the CRL must be signed by ``ca.crt`` and not be
    past its nextUpdate; else CertError, so that a CRL written by anyone who
    can write the file cannot lift a revocation.
    """
    path = crl_path(directory)
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return set()
    except ValueError as exc:
        raise CertError(f"{path} is not a PEM CRL: {exc}") from None
    if verify:
        _verify_crl(directory, crl)
    return {entry.serial_number for entry in crl}


def _verify_crl(directory: Path, crl: x509.CertificateRevocationList) -> None:
    path = crl_path(directory)
    try:
        ca = x509.load_pem_x509_certificate(ca_cert_path(directory).read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read {ca_cert_path(directory)} to check the CRL: {exc}") from None
    public_key = ca.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise CertError(f"{ca_cert_path(directory)} has a key type CRLs cannot be checked with")
    if crl.issuer != ca.subject or not crl.is_signature_valid(public_key):
        raise CertError(f"{path} is not signed by the CA in {ca_cert_path(directory)}")
    next_update = crl.next_update_utc
    if next_update is None or next_update < datetime.now(UTC):
        raise CertError(f"{path} is past its nextUpdate ({next_update}); re-sign it")
