"""The ingest server's TLS listener: encryption on the wire, mutual TLS, device identity."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis import Redis

from healthsync.config import Settings
from healthsync.security.certs import init_pki, issue_device
from healthsync.security.crl import revoke_device
from healthsync.security.tls import client_context
from healthsync.stack import Service
from tests.conftest import Device, make_settings, wait_for

StartIngest = Callable[..., Settings]


class TlsDevice(Device):
    """A device on the TLS port, checking the server's certificate like a real one."""

    def __init__(self, settings: Settings, context: ssl.SSLContext) -> None:
        cfg = settings.ingest
        raw = socket.create_connection((cfg.tls_host, cfg.tls_port), timeout=15)
        self.sock: ssl.SSLSocket = context.wrap_socket(raw, server_hostname="localhost")
        self.reader = self.sock.makefile("rb")


def device_context(settings: Settings, device_id: str, **kwargs: object) -> ssl.SSLContext:
    cert, key = issue_device(settings.tls.dir, device_id, **kwargs)  # type: ignore[arg-type]
    return client_context(settings, cert=cert, key=key)


def outcome(settings: Settings, context: ssl.SSLContext, line: bytes) -> str:
    """The server's answer to `line`, or `refused: <what the client saw>`.

    asyncio drops a connection whose handshake fails without sending the TLS
    alert, so a refused device sees the connection closed (or reset), not the
    reason; tests/security/test_tls.py checks the reasons on the same context.
    """
    try:
        device = TlsDevice(settings, context)
        try:
            return device.send(line) or "refused: closed"
        finally:
            device.close()
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"
    except ConnectionResetError:
        return "refused: reset"


def stat(settings: Settings, field: str) -> int:
    assert settings.redis.url
    with Redis.from_url(settings.redis.url) as redis:
        return int(redis.hget(settings.redis.keys.stats("ingest"), field) or 0)


@contextlib.contextmanager
def capture(port: int, path: Path) -> Iterator[Path]:
    """tcpdump on loopback, only this port, for the duration of the block (at most 60 s)."""
    tcpdump = subprocess.Popen(
        [
            *("timeout", "60", "tcpdump", "--immediate-mode", "-i", "lo", "-U", "-n", "-s", "0"),
            *("-w", str(path), "tcp", "port", str(port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert tcpdump.stderr is not None
    try:
        # tcpdump says "listening on lo" once packets are being captured.
        ready, _, _ = select.select([tcpdump.stderr], [], [], 15)
        first = tcpdump.stderr.readline().decode() if ready else "(nothing)"
        assert "listening on lo" in first, f"tcpdump did not start: {first}"
        yield path
        time.sleep(0.3)  # let the last packets reach the file
    finally:
        tcpdump.send_signal(signal.SIGINT)
        try:
            tcpdump.wait(10)
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            tcpdump.wait()
        tcpdump.stderr.close()


def test_readings_over_tls_are_unreadable_on_the_wire(
    start_ingest: StartIngest, tmp_path: Path
) -> None:
    settings = start_ingest()
    context = device_context(settings, "mon-cap-7731")
    secrets = [b"mon-cap-7731", b"P-CAP-55012", b"heart_rate=143", b"MRN-99417", b"38.7"]

    def line(seq: int) -> bytes:
        return (
            f"device_id=mon-cap-7731 patient_id=P-CAP-55012 seq={seq} heart_rate=143 "
            "temp=38.7 mrn=MRN-99417"
        ).encode()

    with capture(settings.ingest.tls_port, tmp_path / "tls.pcap") as tls_pcap:
        device = TlsDevice(settings, context)
        assert device.sock.version() == "TLSv1.3"
        cipher = device.sock.cipher()
        assert cipher is not None and cipher[0] == "TLS_AES_256_GCM_SHA384"
        assert device.send(line(1)).startswith("OK ")
        device.close()
    with capture(settings.ingest.port, tmp_path / "plain.pcap") as plain_pcap:
        plain = Device(settings.ingest.host, settings.ingest.port)
        assert plain.send(line(2)).startswith("OK ")
        plain.close()

    encrypted = tls_pcap.read_bytes()
    clear = plain_pcap.read_bytes()
    # The TLS capture holds the whole exchange (handshake with certificates, the
    # reading, the answer), and none of it is readable.
    assert len(encrypted) > 2000, len(encrypted)
    assert [s for s in secrets if s in encrypted] == []
    # The same reading on the plaintext port is there for anyone on the path to read.
    assert [s for s in secrets if s in clear] == secrets


def test_a_device_sends_only_for_the_id_in_its_certificate(start_ingest: StartIngest) -> None:
    settings = start_ingest()
    device = TlsDevice(settings, device_context(settings, "mon-0001"))

    reply = device.send(b"device_id=mon-0002 patient_id=P-1 seq=1 hr=70")
    assert (
        reply
        == "ERR 403 device_mismatch: device_id does not match the client certificate (mon-0001)"
    )
    # The connection stays open and the device's own readings go through.
    assert device.send(b"device_id=mon-0001 patient_id=P-1 seq=2 hr=70").startswith("OK ")
    device.close()
    wait_for(
        lambda: stat(settings, "readings_rejected_total|reason=device_mismatch") == 1,
        timeout=10,
        what="the mismatch to be counted as a reject",
    )


def test_only_trusted_current_certificates_get_in(
    start_ingest: StartIngest, tmp_path: Path
) -> None:
    settings = start_ingest()
    line = b"device_id=mon-ok patient_id=P-1 hr=70"
    assert outcome(settings, device_context(settings, "mon-ok"), line).startswith("OK ")

    past = datetime.now(UTC) - timedelta(days=30)
    expired = device_context(settings, "mon-old", days=1, not_before=past)
    assert outcome(settings, expired, line).startswith("refused: ")

    init_pki(tmp_path / "elsewhere")
    cert, key = issue_device(tmp_path / "elsewhere", "mon-ok")
    stranger = client_context(settings, cert=cert, key=key)
    assert outcome(settings, stranger, line).startswith("refused: ")

    anonymous = client_context(settings)
    assert outcome(settings, anonymous, line).startswith("refused: ")

    weak_tls12 = device_context(settings, "mon-tls12")
    weak_tls12.minimum_version = weak_tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    weak_tls12.set_ciphers("ECDHE-ECDSA-AES128-SHA")
    assert outcome(settings, weak_tls12, line).startswith("refused: ")

    # Each refusal is counted: handshakes started but never completed.
    wait_for(
        lambda: (
            stat(settings, "tls_handshakes_started_total")
            - stat(settings, "tls_handshakes_completed_total")
            >= 4
        ),
        timeout=10,
        what="the refused handshakes to be counted",
    )


def test_a_service_certificate_is_no_device(start_ingest: StartIngest) -> None:
    """The CA also signs the services' certificates, which may act as TLS clients; only a
    certificate that names a device (its URI SAN) speaks for one."""
    settings = start_ingest()
    cert, key = settings.tls.dir / "api.crt", settings.tls.dir / "api.key"
    api_as_device = client_context(settings, cert=cert, key=key)
    line = b"device_id=healthsync-api patient_id=P-1 hr=70"
    assert outcome(settings, api_as_device, line) == (
        "ERR 403 no_identity: the client certificate names no device"
    )


def test_a_server_certificate_is_no_device_even_if_it_names_one(
    start_ingest: StartIngest, tmp_path: Path
) -> None:
    """A certificate of the same CA that may also serve TLS (EKU serverAuth, as api.crt has)
    is refused as a device, even with a device URI SAN."""
    settings = start_ingest()
    pki = settings.tls.dir
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "healthsync-api")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("urn:healthsync:device:mon-api")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "api-device.crt", tmp_path / "api-device.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = client_context(settings, cert=cert_path, key=key_path)
    answer = outcome(settings, context, b"device_id=mon-api patient_id=P-1 hr=70")
    assert answer.startswith("ERR 403 not_a_device"), answer
    # A device certificate from `certs device` still gets in.
    line = b"device_id=mon-ok patient_id=P-1 hr=70"
    assert outcome(settings, device_context(settings, "mon-ok"), line).startswith("OK ")


def write_stale_crl(pki: Path, when: datetime, path: Path) -> None:
    """An empty CRL signed by the real CA, issued at `when` and long past its nextUpdate."""
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(when)
        .next_update(when + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_a_forged_crl_does_not_lift_revocations(start_ingest: StartIngest, tmp_path: Path) -> None:
    settings = start_ingest()
    context = device_context(settings, "mon-lost")
    revoke_device(settings.tls.dir, "mon-lost")
    line = b"device_id=mon-lost patient_id=P-1 seq=1 hr=70"
    wait_for(
        lambda: outcome(settings, context, line).startswith("ERR 403 certificate_revoked"),
        timeout=10,
        what="the revocation to take effect",
    )
    # An empty CRL signed by another CA, and a genuine one past its nextUpdate.
    init_pki(tmp_path / "forger")
    (settings.tls.dir / "crl.pem").write_bytes((tmp_path / "forger" / "crl.pem").read_bytes())
    past = datetime.now(UTC) - timedelta(days=1000)
    stale = tmp_path / "stale"
    stale.mkdir()
    write_stale_crl(settings.tls.dir, past, stale / "crl.pem")
    wait_for(
        lambda: stat(settings, "tls_crl_rejected_total") >= 1,
        timeout=10,
        what="the forged CRL to be refused",
    )
    assert outcome(settings, context, line).startswith("ERR 403 certificate_revoked")
    (settings.tls.dir / "crl.pem").write_bytes((stale / "crl.pem").read_bytes())
    wait_for(
        lambda: stat(settings, "tls_crl_rejected_total") >= 2,
        timeout=10,
        what="the expired CRL to be refused",
    )
    assert outcome(settings, context, line).startswith("ERR 403 certificate_revoked")


def test_a_revoked_device_is_cut_off_without_a_restart(start_ingest: StartIngest) -> None:
    settings = start_ingest()
    context = device_context(settings, "mon-stolen")
    connected = TlsDevice(settings, context)
    assert connected.send(b"device_id=mon-stolen patient_id=P-1 seq=1 hr=70").startswith("OK ")

    revoke_device(settings.tls.dir, "mon-stolen")
    # The open connection is closed with the reason, and a new one is refused.
    assert connected.read() == "ERR 403 certificate_revoked: the client certificate is revoked"
    assert connected.read() == ""
    connected.close()
    line = b"device_id=mon-stolen patient_id=P-1 seq=2 hr=70"
    assert outcome(settings, context, line) == (
        "ERR 403 certificate_revoked: the client certificate is revoked"
    )
    wait_for(
        lambda: stat(settings, "tls_refused_total|reason=certificate_revoked") == 2,
        timeout=10,
        what="the refusals to be counted",
    )
    other = device_context(settings, "mon-other")
    assert outcome(settings, other, b"device_id=mon-other patient_id=P-2 hr=70").startswith("OK ")


def test_plaintext_port_can_be_switched_off(start_ingest: StartIngest) -> None:
    settings = start_ingest(plain_enabled=False)
    context = device_context(settings, "mon-0001")
    assert outcome(settings, context, b"device_id=mon-0001 patient_id=P-1 hr=70").startswith("OK ")
    (ingest,) = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == settings.ingest.tls_port
    }
    assert ingest is not None, "the TLS listener's owner is not visible"
    assert settings.ingest.port not in listening_ports(ingest), "the plaintext port is open"


def test_plaintext_port_stays_on_loopback_unless_allowed(
    broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    settings = make_settings(
        broker, redis_server, ingest={"tls_enabled": False, "plain_enabled": True}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    result = subprocess.run(
        [sys.executable, "-m", "healthsync", "ingest", "--host", "0.0.0.0"],
        env=env | settings.to_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "plaintext ingest port would listen on 0.0.0.0" in result.stderr
    assert "HEALTHSYNC_INGEST_PLAIN_ALLOW_REMOTE" in result.stderr


def test_the_ingest_stage_alone_opens_no_plaintext_port_unless_configured(
    broker: Service, redis_server: Service, tmp_path: Path
) -> None:
    """`healthsync ingest` on its own is a production deployment: TLS only by default."""
    settings = make_settings(broker, redis_server, tls={"dir": tmp_path / "certs"})
    init_pki(settings.tls.dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    assert settings.ingest.plain_enabled is None, "not configured"
    env |= settings.to_env()
    stage = subprocess.Popen(
        [sys.executable, "-m", "healthsync", "ingest"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        context = device_context(settings, "mon-solo")
        line = b"device_id=mon-solo patient_id=P-1 hr=70"
        wait_for(
            lambda: _answer(settings, context, line).startswith("OK "),
            what="the TLS port to take a reading",
        )
        listening = listening_ports(stage.pid)
        assert settings.ingest.tls_port in listening
        assert settings.ingest.port not in listening, "the plaintext port is open"
    finally:
        stage.terminate()
        stage.wait(30)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on. A test that a port is closed asks the
    process, not the port: a port nobody listens on is free, and another process of the
    machine may take it meanwhile (a CI run did)."""
    return {
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def _answer(settings: Settings, context: ssl.SSLContext, line: bytes) -> str:
    try:
        return outcome(settings, context, line)
    except OSError:
        return ""
