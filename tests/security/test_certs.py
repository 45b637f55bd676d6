"""The local PKI: files, permissions, no silent overwrite, revocation."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from healthsync.security.certs import (
    SERVICES,
    CertError,
    device_paths,
    init_pki,
    issue_device,
    sign_device_csr,
)
from healthsync.security.crl import revoke_device, revoked_serials


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_ca_servers_and_crl_owner_only(tmp_path: Path) -> None:
    pki = tmp_path / "certs"
    init_pki(pki, hosts=("localhost", "127.0.0.1", "ingest.ward3.example"))

    names = {"ca.crt", "ca.key", "crl.pem"} | {
        f"{s}.{ext}" for s in SERVICES for ext in ("crt", "key")
    }
    assert {p.name for p in pki.iterdir()} == names
    assert mode(pki) == 0o700
    assert all(mode(pki / name) == 0o600 for name in names)

    ca = load(pki / "ca.crt")
    for service in SERVICES:
        cert = load(pki / f"{service}.crt")
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost", "ingest.ward3.example"]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0


def test_nothing_is_overwritten_without_force(tmp_path: Path) -> None:
    init_pki(tmp_path)
    ca_before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(CertError, match=r"already exist \(use --force"):
        init_pki(tmp_path)
    assert (tmp_path / "ca.crt").read_bytes() == ca_before

    init_pki(tmp_path, force=True)
    assert (tmp_path / "ca.crt").read_bytes() != ca_before


def test_device_certificate_names_the_device(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki)
    cert_path, key_path = issue_device(pki, "mon-0001", days=30)

    # The device's private key is kept apart from the CA's directory (and ca.key).
    assert (cert_path, key_path) == (
        pki / "devices" / "mon-0001.crt",
        tmp_path / "pki-device-keys" / "mon-0001.key",
    )
    assert not key_path.is_relative_to(pki)
    assert mode(pki / "devices") == mode(tmp_path / "pki-device-keys") == 0o700
    assert mode(cert_path) == mode(key_path) == 0o600
    cert = load(cert_path)
    cert.verify_directly_issued_by(load(pki / "ca.crt"))
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["mon-0001"]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:healthsync:device:mon-0001"
    ]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=10)


def test_a_device_that_made_its_own_key_sends_a_csr(tmp_path: Path) -> None:
    """Production devices keep their private key: the CA signs their CSR, nothing else."""
    init_pki(tmp_path)
    device_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "whatever")])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(device_key, hashes.SHA256())
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    cert_path = sign_device_csr(tmp_path, "mon-0002", pem)
    assert not device_paths(tmp_path, "mon-0002")[1].exists(), "no key made on the CA's side"
    cert = load(cert_path)
    assert cert.public_key() == device_key.public_key()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:healthsync:device:mon-0002"
    ], "the identity is the one the CA names, whatever the CSR asked for"
    with pytest.raises(CertError, match="not a PEM certificate signing request"):
        sign_device_csr(tmp_path, "mon-0003", b"hello")
    forged = pem.replace(b"\n-----END", b"A\n-----END")  # damaged signature
    with pytest.raises(CertError):
        sign_device_csr(tmp_path, "mon-0004", forged)


def test_device_certificate_rules(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="healthsync certs init"):
        issue_device(tmp_path, "mon-0001")
    init_pki(tmp_path)
    with pytest.raises(CertError, match="device id"):
        issue_device(tmp_path, "../../etc/passwd")

    first, _ = issue_device(tmp_path, "mon-0001")
    serial = load(first).serial_number
    with pytest.raises(CertError, match="use --force"):
        issue_device(tmp_path, "mon-0001")
    assert load(first).serial_number == serial
    issue_device(tmp_path, "mon-0001", force=True)
    assert load(first).serial_number != serial

    past = datetime.now(UTC) - timedelta(days=10)
    expired, _ = issue_device(tmp_path, "mon-old", days=1, not_before=past)
    assert load(expired).not_valid_after_utc < datetime.now(UTC)


def test_revoke_adds_the_current_certificate_to_a_signed_crl(tmp_path: Path) -> None:
    init_pki(tmp_path)
    kept, _ = issue_device(tmp_path, "mon-keep")
    gone, _ = issue_device(tmp_path, "mon-gone")
    revoke_device(tmp_path, "mon-gone")
    revoke_device(tmp_path, "mon-gone")  # twice is harmless

    assert revoked_serials(tmp_path) == {load(gone).serial_number}
    assert load(kept).serial_number not in revoked_serials(tmp_path)
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.is_signature_valid(load(tmp_path / "ca.crt").public_key())  # type: ignore[arg-type]
    assert mode(tmp_path / "crl.pem") == 0o600

    with pytest.raises(CertError, match="no certificate for device mon-none"):
        revoke_device(tmp_path, "mon-none")
