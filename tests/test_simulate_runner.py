"""run_simulation against a stand-in ingest server: counts and durations,
pacing, stopping, progress reports, argument checks and TLS."""

from __future__ import annotations

import asyncio
import gc
import shlex
import shutil
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from healthsync.simulate import (
    IngestEndpoint,
    SimulationError,
    SimulationOptions,
    SimulationStats,
    run_simulation,
)
from tests.simulate_cases import SEQ_START, IngestStub, run


def test_progress_is_reported_about_once_a_second() -> None:
    lines: list[str] = []
    snapshots: list[int] = []

    def progress(stats: SimulationStats) -> None:
        lines.append(stats.progress_line())
        snapshots.append(stats.sent)

    async def scenario() -> None:
        async with IngestStub() as server:
            await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=2, rate=50, duration=2.5),
                progress=progress,
            )

    run(scenario())
    assert len(lines) == 2
    assert snapshots[0] < snapshots[1]
    assert lines[0].startswith("sent ") and " ok " in lines[0] and "p95 ack" in lines[0]
    # About 2 devices x 50/s over the last second.
    rate = float(lines[1].split("rate ")[1].split("/s")[0])
    assert 60 <= rate <= 140, lines


def test_a_failing_progress_callback_is_not_swallowed_nor_leaves_an_error_behind() -> None:
    # The callback's error reaches the caller, and the devices are cancelled. A future
    # of theirs left holding an error no one retrieved is reported by asyncio when it
    # is collected ("exception was never retrieved"), long after, as if something
    # else had failed: none may be left, whether collected already or still alive.
    reported: list[str] = []

    def progress(stats: SimulationStats) -> None:
        raise RuntimeError("callback broke")

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: reported.append(context["message"])
        )
        async with IngestStub() as server:
            await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=1, rate=10, duration=5),
                progress=progress,
            )

    with pytest.raises(RuntimeError, match="callback broke"):
        run(scenario())
    gc.collect()
    unretrieved = [
        o
        for o in gc.get_objects()
        if isinstance(o, asyncio.Future) and o.done() and getattr(o, "_log_traceback", False)
    ]
    assert unretrieved == []
    assert not [message for message in reported if "never retrieved" in message]


def test_count_sends_exactly_count_per_device_and_all_are_acknowledged() -> None:
    async def scenario() -> None:
        async with IngestStub() as server:
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(
                    devices=5, rate=500, duration=None, count=60, seed=1, seq_start=SEQ_START
                ),
            )
        assert stats.sent == stats.ok == 300
        assert stats.err == 0 and stats.unanswered == 0 and stats.reconnects == 0
        assert stats.connections == 5
        assert len(server.ids) == len(set(server.ids)) == 300
        per_device: dict[str, list[int]] = {}
        for reading in server.readings:
            assert reading.seq is not None
            per_device.setdefault(reading.device_id, []).append(reading.seq)
        assert sorted(per_device) == [f"sim-{i:04d}" for i in range(1, 6)]
        for seqs in per_device.values():
            assert seqs == list(range(SEQ_START, SEQ_START + 60))
        assert {r.patient_id for r in server.readings} == {f"P-{1000 + i}" for i in range(1, 6)}
        lat = stats.latency()
        assert lat.count == 300
        assert 0 <= lat.p50 <= lat.p95 <= lat.p99 <= lat.max < 5

    run(scenario())


def test_runs_use_new_reading_ids_by_default() -> None:
    async def scenario() -> None:
        async with IngestStub() as server:
            for _ in range(2):
                await run_simulation(
                    IngestEndpoint("127.0.0.1", server.port),
                    SimulationOptions(devices=2, rate=1000, duration=None, count=20, seed=9),
                )
        assert len(server.ids) == len(set(server.ids)) == 80

    run(scenario())


def test_duration_stops_sending_at_the_given_rate() -> None:
    async def scenario() -> None:
        async with IngestStub() as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=4, rate=20, duration=1.0, seed=2),
            )
            elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 3.0
        assert stats.sent == stats.ok == len(server.readings)
        per_device = Counter(r.device_id for r in server.readings)
        assert len(per_device) == 4
        # 20/s for 1 s is 20 each; a loaded machine may wake late at the very end.
        assert all(16 <= n <= 21 for n in per_device.values()), per_device

    run(scenario())


def test_count_ends_the_run_before_duration() -> None:
    async def scenario() -> None:
        async with IngestStub() as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=3, rate=100, duration=60, count=10),
            )
        assert time.monotonic() - started < 5
        assert stats.sent == stats.ok == 30

    run(scenario())


def test_slow_rate_devices_stop_at_the_deadline_not_their_next_reading() -> None:
    async def scenario() -> None:
        async with IngestStub() as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=3, rate=0.2, duration=1.0, seed=4),
            )
        # One reading per device is due in the first five seconds at the most.
        assert time.monotonic() - started < 2.5
        assert stats.sent == stats.ok <= 3

    run(scenario())


def test_stop_event_ends_an_open_ended_run() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        async with IngestStub() as server:
            asyncio.get_running_loop().call_later(0.5, stop.set)
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=3, rate=10, duration=None),
                stop=stop,
            )
        assert 0.4 <= stats.elapsed < 3
        assert stats.sent == stats.ok > 0

    run(scenario())


def test_unreachable_server_is_an_error_naming_the_address() -> None:
    async def scenario() -> None:
        # A port that was just free: nothing listens there.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await run_simulation(
            IngestEndpoint("127.0.0.1", port),
            SimulationOptions(devices=2, rate=1, duration=None, count=1, retry_for=0.3),
        )

    with pytest.raises(SimulationError, match=r"could not connect to 127\.0\.0\.1:\d+"):
        run(scenario())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 0}, "devices"),
        ({"rate": 0.0}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"duration": -1.0}, "duration"),
        ({"count": 0}, "count"),
        ({"episode_probability": 2.0}, "episode_probability"),
        ({"device_prefix": "bed 1"}, "device_prefix"),
        ({"seq_start": -1}, "seq_start"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"devices": 1, "rate": 1.0, "duration": 1.0, **kwargs}
    with pytest.raises(SimulationError, match=message):
        asyncio.run(run_simulation(IngestEndpoint("127.0.0.1", 1), SimulationOptions(**arguments)))


def test_runs_over_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    # A throwaway self-signed certificate for 127.0.0.1, valid for a day.
    command = shlex.split(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
        " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        async with IngestStub(tls=server_tls) as server:
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port, client_tls),
                SimulationOptions(devices=2, rate=500, duration=None, count=25),
            )
        assert stats.sent == stats.ok == len(set(server.ids)) == 50

    run(scenario())
