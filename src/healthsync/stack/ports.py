"""Free loopback ports for the embedded services, which cannot bind port 0.

A port is free when it is picked, but its service binds it only later (seconds later
for the API, which starts after the broker and Redis). Until then another pick may
return it again, from this process or from another one on the machine: `up` picks the
broker's and the ingest replicas' ports while a test or a second stack beside it has
picked some of its own. So every port handed out is written, with the time, to a
small file that all processes of this user share (under a lock), and for
`_SHARED_FOR_S` no process hands it out again. If that file cannot be used, this
process still remembers its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# free_port picks from LOWEST_PORT up to the ephemeral range, if that leaves this many.
LOWEST_PORT = 10000
_MIN_CHOICE = 1000
_PICK_ATTEMPTS = 200
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# How long a port handed out by any process is passed over by the others: longer than
# any service takes to start, or to restart on its port.
_SHARED_FOR_S = 600.0
_SHARED_FILE = Path(tempfile.gettempdir()) / f"healthsync-ports-{os.getuid()}"
# Its own generator: a test that seeds the global one must not make two processes pick
# the same ports.
_pick = random.Random()
# The ports this process handed out lately. A port is not bound until its service
# starts, so a second pick before then could return it again: a bench run once planned
# the ingest front's public port and a replica's TLS port alike, and HAProxy could not
# bind it.
_handed_out: deque[int] = deque(maxlen=2000)
# Ports configured for this process's services (reserve_ports), never handed out.
_reserved: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for programs that cannot bind port 0).

    Picked below the kernel's ephemeral range, from which outgoing connections take
    their local ports: a port of that range, free a moment ago, can become some
    connection's local port before the service binds it, or while it restarts on it
    (HAProxy once failed to bind a port so taken). Nor is it one handed out lately
    (by this process or another, see the module's docstring), whose service may not
    have bound it yet, nor one reserved for a configured service. With too little
    room below the range the kernel picks, from the range, passing over those too.
    """
    with _shared_record() as shared:
        taken = shared | _reserved | set(_handed_out)
        port = _pick_below_range(host, taken) or _pick_by_kernel(host, taken)
        _handed_out.append(port)
        shared.add(port)
    return port


def reserve_ports(*ports: int | None) -> None:
    """Keep free_port from handing out these ports: ones configured for services that
    start later (the embedded broker once took the API's configured port)."""
    _reserved.update(port for port in ports if port)


def _pick_below_range(host: str, taken: set[int]) -> int | None:
    top = _ephemeral_start()
    if top - LOWEST_PORT < _MIN_CHOICE:
        return None
    for _ in range(_PICK_ATTEMPTS):
        port = _pick.randrange(LOWEST_PORT, top)
        if port in taken:
            continue  # handed out already, perhaps not bound yet, or configured
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # in use
        return port
    return None


def _pick_by_kernel(host: str, taken: set[int]) -> int:
    """A port the kernel picks from its ephemeral range, free a moment ago."""
    for _ in range(_PICK_ATTEMPTS):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            break
    return port


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when unreadable)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@contextmanager
def _shared_record() -> Iterator[set[int]]:
    """The ports handed out machine-wide lately, locked; ports added to the set are
    recorded when the block ends. An empty set, recording nothing, if the file cannot
    be used."""
    try:
        fd = os.open(_SHARED_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield set()
        return
    with os.fdopen(fd, "r+", encoding="ascii", errors="replace") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released when the file closes
        now = time.time()
        recorded = _read_record(file.read(), now)
        ports = set(recorded)
        yield ports
        for port in ports - recorded.keys():
            recorded[port] = now
        with contextlib.suppress(OSError):  # a full disk: this process still remembers
            file.seek(0)
            file.truncate()
            file.write("".join(f"{port} {at:.0f}\n" for port, at in recorded.items()))


def _read_record(text: str, now: float) -> dict[int, float]:
    """The ports of the shared file handed out within _SHARED_FOR_S, and when."""
    recorded: dict[int, float] = {}
    for line in text.splitlines():
        try:
            port, at = line.split()
            recorded[int(port)] = float(at)
        except ValueError:
            continue  # a line cut short by a crash: pass over it
    return {port: at for port, at in recorded.items() if now - at < _SHARED_FOR_S}
