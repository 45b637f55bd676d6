"""Ports picked for the embedded services stay out of the way of outgoing connections."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.stack import free_port
from healthsync.stack import process as stack_process
from healthsync.stack.process import LOWEST_PORT
from healthsync.supervisor import Pipeline


def ephemeral_start() -> int:
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
    return int(text.split()[0])


def kernel_port() -> int:
    """A free port the kernel picks, left unbound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        monkeypatch.setattr(stack_process, "_pick", Picks(taken, other))
        assert free_port() == other


def test_a_port_handed_out_is_not_handed_out_again_before_its_service_binds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = kernel_port(), kernel_port()
    monkeypatch.setattr(stack_process, "_pick", Picks(first, first, second))
    assert free_port() == first
    # Nothing bound `first` yet (its service is still starting): it is not picked twice.
    assert free_port() == second


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
    monkeypatch.setattr(stack_process, "_pick", OffersFirst(ingest, tls, api))
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
    monkeypatch.setattr(stack_process, "_EPHEMERAL_RANGE", narrow)


@pytest.mark.usefixtures("no_room_below_the_range")
def test_without_room_below_the_range_the_kernel_picks() -> None:
    assert free_port() >= ephemeral_start()


@pytest.mark.usefixtures("no_room_below_the_range")
def test_the_kernel_picks_no_port_handed_out_lately_either() -> None:
    # The kernel's picks are spread over its range, so a thousand of them would
    # repeat some port many times over; none of these was bound yet.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
