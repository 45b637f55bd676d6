"""Ports picked for the embedded services stay out of the way of outgoing connections."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.stack import free_port
from healthsync.stack import ports as stack_ports
from healthsync.stack.ports import LOWEST_PORT
from healthsync.supervisor import Pipeline


def ephemeral_start() -> int:
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
    return int(text.split()[0])


def kernel_port() -> int:
    """A free port the kernel picks, left unbound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def own_record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A record of handed-out ports of this test's own, and none handed out before."""
    record = tmp_path / "ports"
    monkeypatch.setattr(stack_ports, "_SHARED_FILE", record)
    monkeypatch.setattr(stack_ports, "_handed_out", deque(maxlen=2000))
    monkeypatch.setattr(stack_ports, "_reserved", set())
    return record


class Picks:
    """The ports the picker draws, in order (instead of random ones)."""

    def __init__(self, *ports: int) -> None:
        self._ports: Iterator[int] = iter(ports)

    def randrange(self, _low: int, _high: int) -> int:
        return next(self._ports)


def test_free_ports_lie_below_the_range_outgoing_connections_take_theirs_from() -> None:
    ports = [free_port() for _ in range(50)]
    assert all(LOWEST_PORT <= port < ephemeral_start() for port in ports), ports
    assert len(set(ports)) > 40, "the ports are not spread"
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: nothing listens there


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        other = kernel_port()
        monkeypatch.setattr(stack_ports, "_pick", Picks(taken, other))
        assert free_port() == other


def test_a_port_handed_out_is_not_handed_out_again_before_its_service_binds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = kernel_port(), kernel_port()
    monkeypatch.setattr(stack_ports, "_pick", Picks(first, first, second))
    assert free_port() == first
    # Nothing bound `first` yet (its service is still starting): it is not picked twice.
    assert free_port() == second


_PICKS_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from healthsync.stack import ports
class Picks:
    def __init__(self, ports): self.ports = iter(ports)
    def randrange(self, low, high): return next(self.ports)
ports._SHARED_FILE = Path(sys.argv[1])
ports._pick = Picks(int(p) for p in sys.argv[2:])
print(ports.free_port())
"""


def test_a_port_handed_out_by_one_process_is_not_handed_out_by_another(
    monkeypatch: pytest.MonkeyPatch, own_record: Path
) -> None:
    # A test picks the API's port for `up`, which picks the broker's in a process of
    # its own before the API binds its port.
    first, second = kernel_port(), kernel_port()
    monkeypatch.setattr(stack_ports, "_pick", Picks(first))
    assert free_port() == first
    script = [sys.executable, "-c", _PICKS_IN_ANOTHER_PROCESS, str(own_record)]
    other = subprocess.run([*script, str(first), str(second)], capture_output=True, check=True)
    assert int(other.stdout) == second


def test_a_port_is_handed_out_again_once_its_record_has_expired(
    monkeypatch: pytest.MonkeyPatch, own_record: Path
) -> None:
    port = kernel_port()
    own_record.write_text(f"{port} {time.time() - 601:.0f}\ngarbage\n", encoding="ascii")
    monkeypatch.setattr(stack_ports, "_pick", Picks(port))
    assert free_port() == port


class OffersFirst:
    """A picker that draws these ports first, then random ones."""

    def __init__(self, *ports: int) -> None:
        self._ports: Iterator[int] = iter(ports)
        self._rest = random.Random()

    def randrange(self, low: int, high: int) -> int:
        return next(self._ports, None) or self._rest.randrange(low, high)


def test_the_embedded_services_leave_the_ports_configured_for_the_stages_free(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The embedded broker once took the port the API was configured on, and the API
    # could not start. Here the picker offers the stages' ports before any other.
    ingest, tls, api = kernel_port(), kernel_port(), kernel_port()
    settings = Settings(
        ingest={"port": ingest, "tls_port": tls, "front_stats_port": 0}, api={"port": api}
    )
    monkeypatch.setattr(stack_ports, "_pick", OffersFirst(ingest, tls, api))
    pipeline = Pipeline(settings, tmp_path)
    try:
        pipeline.start(stages=())  # Redis and the broker only
        for port in (ingest, tls, api):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # still free for its stage
    finally:
        pipeline.stop()


@pytest.fixture
def no_room_below_the_range(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An ephemeral range that leaves the picker too few ports below it."""
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text(f"{LOWEST_PORT + 10}\t60999\n", encoding="ascii")
    monkeypatch.setattr(stack_ports, "_EPHEMERAL_RANGE", narrow)


@pytest.mark.usefixtures("no_room_below_the_range")
def test_without_room_below_the_range_the_kernel_picks() -> None:
    assert free_port() >= ephemeral_start()


@pytest.mark.usefixtures("no_room_below_the_range")
def test_the_kernel_picks_no_port_handed_out_lately_either() -> None:
    # The kernel's picks are spread over its range, so a thousand of them would
    # repeat some port many times over; none of these was bound yet.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
