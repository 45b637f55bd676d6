"""The TLS policy of every HealthSync server, against a real TLS socket.

A small threaded server wraps each accepted connection with
`server_context(...)` and answers with what was negotiated; clients are Python's
ssl module and, where Python cannot express the client (a TLS 1.3 client
without the AES-256 suite), `openssl s_client`.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.security.certs import device_paths, init_pki, issue_device
from healthsync.security.crl import revoke_device
from healthsync.security.tls import (
    client_context,
    device_identity,
    negotiated_problem,
    server_context,
)


class TlsServer:
    """Accepts connections; after the handshake writes `version cipher identity`."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    cipher = tls.cipher()
                    identity = device_identity(tls.getpeercert() or {})
                    tls.sendall(f"{tls.version()} {cipher and cipher[0]} {identity}\n".encode())
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_pki(tmp_path / "certs")
    return tmp_path / "certs"


@pytest.fixture
def serve() -> Iterator[list[TlsServer]]:
    servers: list[TlsServer] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[TlsServer], pki: Path, min_version: str = "1.3") -> TlsServer:
    settings = Settings(tls={"dir": pki, "min_version": min_version})
    server = TlsServer(server_context(settings, "ingest", client_certs="required"))
    servers.append(server)
    return server


def talk(server: TlsServer, context: ssl.SSLContext) -> str:
    """What the server said, or `refused: <the TLS error>`."""
    try:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            # Under TLS 1.3 a refused client certificate shows on the first read.
            return tls.recv(200).decode().strip() or "refused: closed"
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"
    except ConnectionResetError:
        return "refused: reset"


def device(pki: Path, device_id: str, **kwargs: object) -> ssl.SSLContext:
    cert, key = issue_device(pki, device_id, **kwargs)  # type: ignore[arg-type]
    return client_context(Settings(tls={"dir": pki}), cert=cert, key=key)


def test_tls13_with_aes256_gcm_and_the_device_identity(pki: Path, serve: list[TlsServer]) -> None:
    server = start(serve, pki)
    assert talk(server, device(pki, "mon-0001")) == "TLSv1.3 TLS_AES_256_GCM_SHA384 mon-0001"


def s_client(port: int, pki: Path, suites: str) -> str:
    """What `openssl s_client` offering only `suites` under TLS 1.3 heard from the server."""
    cert, key = device_paths(pki, "mon-0001")
    result = subprocess.run(
        [
            *("openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-ign_eof"),
            *("-ciphersuites", suites),
            *("-cert", str(cert), "-key", str(key), "-CAfile", str(pki / "ca.crt")),
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.stdout


def test_tls13_client_without_aes256_is_refused(pki: Path, serve: list[TlsServer]) -> None:
    server = start(serve, pki)
    issue_device(pki, "mon-0001")
    # Python here may not limit a context's TLS 1.3 suites; the server then refuses the
    # connection right after the handshake, before anything is served.
    heard = s_client(server.port, pki, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256")
    assert "mon-0001" not in heard.replace("CN = mon-0001", "")
    assert "TLSv1.3 TLS_AES_256_GCM_SHA384 mon-0001" in s_client(
        server.port, pki, "TLS_AES_256_GCM_SHA384"
    )


def test_tls_never_reaches_into_the_interpreters_memory(pki: Path) -> None:
    """No ctypes write into CPython's SSLContext: it corrupts memory on other builds."""
    probe = (
        "import sys; from pathlib import Path; from healthsync.config import Settings; "
        "from healthsync.security.tls import server_context, client_context; "
        f"s = Settings(tls={{'dir': Path({str(pki)!r})}}); "
        "server_context(s, 'ingest', client_certs='required'); client_context(s); "
        "print('ctypes' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_tls12_is_refused_by_default(pki: Path, serve: list[TlsServer]) -> None:
    server = start(serve, pki)
    client = device(pki, "mon-0001")
    client.minimum_version = ssl.TLSVersion.TLSv1_2
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert talk(server, client).startswith("refused: ")


def test_tls12_when_allowed_takes_only_ecdhe_aes256_gcm(pki: Path, serve: list[TlsServer]) -> None:
    server = start(serve, pki, min_version="1.2")
    strong = device(pki, "mon-0001")
    strong.minimum_version = strong.maximum_version = ssl.TLSVersion.TLSv1_2
    assert talk(server, strong) == "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384 mon-0001"

    for weak_suites in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-SHA384"):
        weak = device(pki, "mon-0002", force=True)
        weak.minimum_version = weak.maximum_version = ssl.TLSVersion.TLSv1_2
        weak.set_ciphers(weak_suites)
        assert talk(server, weak) == "refused: SSLV3_ALERT_HANDSHAKE_FAILURE", weak_suites


def test_only_valid_device_certificates_get_in(
    pki: Path, serve: list[TlsServer], tmp_path: Path
) -> None:
    revoked = device(pki, "mon-revoked")
    revoke_device(pki, "mon-revoked")
    server = start(serve, pki)  # the CRL as it is now

    assert talk(server, device(pki, "mon-good")) == "TLSv1.3 TLS_AES_256_GCM_SHA384 mon-good"
    assert talk(server, revoked) == "refused: SSLV3_ALERT_CERTIFICATE_REVOKED"
    past = datetime.now(UTC) - timedelta(days=30)
    expired = device(pki, "mon-expired", days=1, not_before=past)
    assert talk(server, expired) == "refused: SSLV3_ALERT_CERTIFICATE_EXPIRED"

    other_ca = tmp_path / "other"
    init_pki(other_ca)
    cert, key = issue_device(other_ca, "mon-good")
    stranger = client_context(Settings(tls={"dir": pki}), cert=cert, key=key)
    assert talk(server, stranger) == "refused: TLSV1_ALERT_UNKNOWN_CA"

    anonymous = client_context(Settings(tls={"dir": pki}))
    assert talk(server, anonymous) == "refused: TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_clients_check_the_server_certificate(pki: Path, serve: list[TlsServer]) -> None:
    server = start(serve, pki)
    other = pki.parent / "other"
    init_pki(other)
    cert, key = issue_device(pki, "mon-0001")
    wrong_ca = client_context(Settings(tls={"dir": other}), cert=cert, key=key)
    assert talk(server, wrong_ca) == "refused: CERTIFICATE_VERIFY_FAILED"


def test_missing_certificates_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="healthsync certs init"):
        server_context(Settings(tls={"dir": tmp_path}), "ingest")


def test_device_identity_is_the_uri_san_only() -> None:
    uri = ("URI", "urn:healthsync:device:mon-uri")
    cn = ((("commonName", "mon-cn"),),)
    assert device_identity({"subject": cn, "subjectAltName": (uri,)}) == "mon-uri"
    # A CN alone is what every service certificate of the same CA has too.
    assert device_identity({"subject": cn, "subjectAltName": (("DNS", "x"),)}) is None
    assert device_identity({"subject": ((("organizationName", "Ward 3"),),)}) is None


def test_negotiated_problem_names_what_falls_short() -> None:
    # A real handshake here cannot end with another suite (the context refuses
    # it, see above), so a stand-in session exercises the after-handshake check
    # that servers rely on where OpenSSL's suites cannot be restricted.
    class Session:
        def __init__(self, version: str, cipher: str) -> None:
            self._version, self._cipher = version, cipher

        def version(self) -> str:
            return self._version

        def cipher(self) -> tuple[str, str, int]:
            return (self._cipher, self._version, 128)

    ok = Session("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    weak = Session("TLSv1.3", "TLS_AES_128_GCM_SHA256")
    assert negotiated_problem(ok) is None  # type: ignore[arg-type]
    assert negotiated_problem(weak) == "TLSv1.3 TLS_AES_128_GCM_SHA256 is not allowed"  # type: ignore[arg-type]
