"""Child service processes: started on a port, dying with their parent, restarted in place."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Literal

from healthsync.errors import HealthSyncError

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
