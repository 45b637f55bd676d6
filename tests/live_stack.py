"""`healthsync up` as a user runs it, for tests that kill its processes or watch it.

:class:`LiveStack` starts `up` in a temporary directory on free ports, keeps
its output, finds its processes by command line, and reads its Redis the way
the pipeline wrote it (TLS with the run dir's CA, sealed with its keyring).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from redis import Redis

from healthsync.config import Settings
from healthsync.names import RedisKeys
from healthsync.runstate import RunState
from healthsync.security.codec import Codec
from healthsync.stack import free_port
from tests.conftest import Device, wait_for

# Lines of each stage's log that a failed test shows.
_LOG_TAIL = 40


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children of children too)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class LiveStack:
    """One running `healthsync up`; stop() sends SIGINT and returns its output."""

    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.ingest_port, self.tls_port, self.api_port = free_port(), free_port(), free_port()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
        environ |= {
            "HEALTHSYNC_INGEST_PORT": str(self.ingest_port),
            "HEALTHSYNC_INGEST_TLS_PORT": str(self.tls_port),
            "HEALTHSYNC_API_PORT": str(self.api_port),
        }
        environ |= env or {}
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "healthsync", "up", *args],
            cwd=directory,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def run_dir(self) -> Path:
        return self.directory / "run"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(
            lambda: (
                any(line.startswith("Ctrl-C stops") for line in self.lines)
                or self.process.poll() is not None
            ),
            timeout=timeout,
            what="healthsync up to start",
        )
        assert self.process.poll() is None, self.output

    def pids(self, pattern: str) -> list[int]:
        """Live processes below `up` whose command line matches `pattern`."""
        regex = re.compile(pattern)
        return sorted(
            p for p in descendants(self.process.pid) if alive(p) and regex.search(cmdline(p))
        )

    def pid(self, pattern: str) -> int:
        found = self.pids(pattern)
        assert len(found) == 1, (pattern, found)
        return found[0]

    def kill(self, pattern: str) -> int:
        """kill -9 the one process matching `pattern`; wait until another has replaced it."""
        victim = self.pid(pattern)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: [p for p in self.pids(pattern) if p != victim],
            timeout=60,
            what=f"{pattern} to be restarted",
        )
        return victim

    def redis(self) -> Redis:
        """A client of the embedded Redis as an operator has one: the URL with its password
        and the client certificate, from the run dir's state file (the owner's only)."""
        state = RunState.load(self.run_dir)
        return Redis.from_url(
            state.redis_url,
            ssl_ca_certs=state.redis_ca,
            ssl_certfile=state.redis_cert,
            ssl_keyfile=state.redis_key,
        )

    def keys(self) -> RedisKeys:
        settings = Settings(crypto={"keyring_file": self.run_dir / "keyring.json"})
        return Codec.from_settings(settings).keys

    def device(self) -> Device:
        return Device("127.0.0.1", self.ingest_port)

    def report(self) -> str:
        """What `up` printed, and the end of each stage's log: what a failed test shows."""
        parts = [f"== healthsync up\n{self.output}"]
        for log in sorted((self.run_dir / "logs").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
            parts.append(f"== {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.output


@contextmanager
def live_stack(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[LiveStack]:
    stack = LiveStack(directory, *args, env=env)
    failed = False
    try:
        stack.wait_ready()
        yield stack
    except BaseException:
        failed = True
        raise
    finally:
        stack.stop()
        if failed:
            print(stack.report())  # pytest shows it with the failure
        leftovers = [p for p in descendants(stack.process.pid) if alive(p)]
        assert not leftovers, f"processes outlived healthsync up: {leftovers}"


class Connects(Protocol):
    """Whatever opens a device connection to ingest: a LiveStack, or a Pipeline's address."""

    def device(self) -> Device: ...


class Load:
    """Devices sending readings as fast as they are answered: one per patient, each in a
    thread of its own, as a ward's monitors send side by side.

    Each line is resent on a new connection until it gets OK (as a device
    that lost its connection does), so `acknowledged` is every reading the
    pipeline promised to keep. A reply waits for the producer's linger
    (`kafka.LINGER_MS`), so one device alone gets about ten readings a second
    through; the patients' devices share each linger.
    """

    def __init__(self, stack: Connects, patients: list[str], first_seq: int = 0) -> None:
        self.stack = stack
        self.patients = patients
        self.first_seq = first_seq
        self.acknowledged: set[str] = set()
        self.last = ""  # the reading id acknowledged last
        self.errors = 0
        self.refusal = ""  # the last answer that was not OK ("" for a connection that failed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(len(patients))
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + 60
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def sent(self, count: int, timeout: float = 60) -> None:
        """Wait until `count` more readings are acknowledged."""
        self.acknowledged_up_to(len(self.acknowledged) + count, timeout)

    def acknowledged_up_to(self, target: int, timeout: float) -> None:
        """Wait until `target` readings in all are acknowledged."""
        try:
            wait_for(lambda: len(self.acknowledged) >= target, timeout, "acknowledgements")
        except AssertionError as exc:
            last = f"{self.errors} refused, the last: {self.refusal!r}"
            raise AssertionError(f"{exc}; {last}") from None

    def _run(self, n: int) -> None:
        """Patient `n`'s device: sequence numbers first_seq + n, then every len(patients)."""
        patient = self.patients[n]
        seq = self.first_seq + n
        device: Device | None = None
        while not self._stop.is_set():
            hr = 60 + seq % 40
            line = f"device_id=dev-{patient} patient_id={patient} seq={seq} hr={hr}"
            try:
                device = device or self.stack.device()
                reply = device.send(line.encode())
            except OSError:
                reply = ""
            if reply.startswith("OK "):
                with self._lock:
                    self.last = reply.split()[1]
                    self.acknowledged.add(self.last)
                seq += len(self.patients)
                continue
            with self._lock:
                self.errors += 1
                self.refusal = reply
            if device is not None:
                device.close()
                device = None
            time.sleep(0.2)
        if device is not None:
            device.close()


def sent_each(loads: list[Load], count: int, timeout: float = 60) -> None:
    """Wait until each of `loads` has `count` more readings acknowledged than now. They send
    side by side: calling each one's `sent` in turn would ask each for `count` more than it
    had already sent while the ones before were waited for."""
    targets = [len(load.acknowledged) + count for load in loads]
    deadline = time.monotonic() + timeout
    for load, target in zip(loads, targets, strict=True):
        load.acknowledged_up_to(target, max(0.1, deadline - time.monotonic()))
