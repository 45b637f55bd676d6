from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import shlex
import shutil
import ssl
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from healthsync.domain.readings import CONSCIOUSNESS_LEVELS, VITALS, Reading, reading_id_for
from healthsync.simulate import (
    EPISODE_KINDS,
    EpisodeKind,
    IngestEndpoint,
    PatientModel,
    SimulatedDevice,
    SimulationError,
    SimulationOptions,
    SimulationStats,
    VitalSigns,
    run_simulation,
)
from healthsync.wire import WireError, ok_reply, parse_line

SEQ_START = 5_000


def quiet_model(seed: int) -> PatientModel:
    return PatientModel(random.Random(seed), episode_probability=0.0)


def values(signs: VitalSigns) -> dict[str, float]:
    return {
        "heart_rate": signs.heart_rate,
        "spo2": signs.spo2,
        "temp": signs.temp,
        "resp_rate": signs.resp_rate,
        "bp_sys": signs.bp_sys,
        "bp_dia": signs.bp_dia,
    }


# --- the patient model --------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_values_stay_in_bounds_through_many_episodes(seed: int) -> None:
    # Episodes far more often than the default, back to back, to push the extremes.
    model = PatientModel(random.Random(seed), episode_probability=0.2)
    for _ in range(3000):
        signs = model.step()
        for name, value in values(signs).items():
            vital = VITALS[name]
            assert vital.minimum <= value <= vital.maximum, (name, value)
            assert round(value, vital.decimals) == value, (name, value)
        assert isinstance(signs.heart_rate, int)
        assert isinstance(signs.spo2, int)
        assert signs.spo2 <= 100
        assert signs.bp_sys > signs.bp_dia
        assert signs.consciousness in CONSCIOUSNESS_LEVELS
    assert model.episodes_started > 10


def test_quiet_patient_looks_like_a_stable_ward_patient() -> None:
    for seed in range(10):
        model = quiet_model(seed)
        readings = [model.step() for _ in range(2000)]
        assert 50 <= statistics.mean(r.heart_rate for r in readings) <= 110
        assert min(r.spo2 for r in readings) >= 90
        assert 35.8 <= statistics.mean(r.temp for r in readings) <= 37.6
        assert all(r.consciousness == "A" for r in readings)
        # Drift, not a frozen number and not white noise: consecutive readings are close.
        assert len({r.heart_rate for r in readings}) > 5
        steps = [abs(a.heart_rate - b.heart_rate) for a, b in itertools.pairwise(readings)]
        assert statistics.mean(steps) < 5


def test_same_seed_same_patient() -> None:
    a, b, c = (PatientModel(random.Random(seed)) for seed in (7, 7, 8))
    assert [a.step() for _ in range(500)] == [b.step() for _ in range(500)]
    assert a.baseline != c.baseline


@pytest.mark.parametrize("seed", range(10))
def test_hypoxaemia_lowers_spo2_then_recovers(seed: int) -> None:
    model = quiet_model(seed)
    before = [model.step() for _ in range(100)]
    episode = model.start_episode("hypoxaemia")
    ramp = [model.step() for _ in range(episode.ramp)]
    hold = [model.step() for _ in range(episode.hold)]
    recover = [model.step() for _ in range(episode.recover)]
    after = [model.step() for _ in range(100)]

    assert min(r.spo2 for r in before) >= 91
    assert ramp[0].spo2 > ramp[-1].spo2 - 1
    assert statistics.median(r.spo2 for r in hold) < 90
    assert min(r.spo2 for r in hold) <= 88
    assert statistics.mean(r.resp_rate for r in hold) > statistics.mean(r.resp_rate for r in before)
    assert all(r.on_oxygen for r in recover)
    assert statistics.mean(r.spo2 for r in after[-50:]) > 92


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("tachycardia", lambda hold: statistics.median(r.heart_rate for r in hold) >= 125),
        ("fever", lambda hold: statistics.median(r.temp for r in hold) >= 38.3),
    ],
)
def test_other_episodes_move_their_vital(
    kind: EpisodeKind, check: Callable[[list[VitalSigns]], bool]
) -> None:
    for seed in range(10):
        model = quiet_model(seed)
        for _ in range(100):
            model.step()
        episode = model.start_episode(kind)
        ramp = [model.step() for _ in range(episode.ramp)]
        hold = [model.step() for _ in range(episode.hold)]
        assert ramp and check(hold), (seed, kind)


def test_episodes_start_at_random_and_are_reported() -> None:
    seen: list[EpisodeKind] = []
    model = PatientModel(random.Random(3), episode_probability=0.05, on_episode=seen.append)
    for _ in range(20_000):
        model.step()
    assert len(seen) == model.episodes_started > 20
    assert set(seen) == set(EPISODE_KINDS)


def test_episode_probability_is_validated() -> None:
    with pytest.raises(SimulationError, match="episode_probability"):
        PatientModel(random.Random(), episode_probability=1.5)


# --- lines ----------------------------------------------------------------------


def test_every_line_parses_as_the_devices_reading() -> None:
    for seed in range(5):
        device = SimulatedDevice(
            "mon-0042",
            "P-4242",
            PatientModel(random.Random(seed), episode_probability=0.05),
            seq_start=SEQ_START,
        )
        for n in range(2000):
            line = device.next_line()
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            reading = parse_line(line, time.time())
            assert reading.device_id == "mon-0042"
            assert reading.patient_id == "P-4242"
            assert reading.seq == SEQ_START + n
            assert reading.reading_id == reading_id_for("mon-0042", SEQ_START + n, 0)
            assert set(reading.vitals) == set(VITALS)
            assert reading.on_oxygen is not None
            assert reading.consciousness in CONSCIOUSNESS_LEVELS


def test_line_carries_what_the_model_shows() -> None:
    model = quiet_model(11)
    twin = quiet_model(11)
    device = SimulatedDevice("d-1", "p-1", model, seq_start=0)
    reading = parse_line(device.next_line(), time.time())
    assert reading.vitals == values(twin.step())


# --- run_simulation against a stand-in ingest server ---------------------------------


@dataclass
class IngestStub:
    """Answers like the ingest server: each line parsed, answered in order.

    ``reject`` turns a valid reading into an ERR; ``drop_after`` makes one
    connection close after answering that many lines (the lines it read but did
    not answer count as stored, as when a reply is lost after Kafka took it);
    ``silent`` never answers.
    """

    reject: Callable[[Reading], WireError | None] | None = None
    drop_after: int | None = None
    silent: bool = False
    tls: ssl.SSLContext | None = None
    readings: list[Reading] = field(default_factory=list)
    rejected: list[WireError] = field(default_factory=list)
    connections: int = 0
    dropped: bool = False
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> IngestStub:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        answered = 0
        try:
            while line := await reader.readline():
                try:
                    reading = parse_line(line, time.time())
                    refusal = self.reject(reading) if self.reject else None
                    if refusal is not None:
                        raise refusal
                    self.readings.append(reading)
                    reply = ok_reply(reading.reading_id)
                except WireError as exc:
                    self.rejected.append(exc)
                    reply = exc.reply()
                if not self.dropped and self.drop_after is not None and answered >= self.drop_after:
                    self.dropped = True
                    return
                if not self.silent:
                    writer.write(reply)
                    answered += 1
                    if writer.transport.get_write_buffer_size() > 1 << 16:
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @property
    def ids(self) -> list[str]:
        return [r.reading_id for r in self.readings]


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


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


def test_err_replies_are_counted_by_reason() -> None:
    def reject_odd(reading: Reading) -> WireError | None:
        assert reading.seq is not None
        return WireError("out_of_range", "for the test") if reading.seq % 2 else None

    async def scenario() -> None:
        async with IngestStub(reject=reject_odd) as server:
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=2, rate=1000, duration=None, count=40, seq_start=0),
            )
        assert stats.sent == 80
        assert stats.ok == 40
        assert stats.errors == {"422 out_of_range": 40}
        assert stats.err == 40
        assert "422 out_of_range x40" in stats.summary()

    run(scenario())


def test_dropped_connection_is_reopened_and_unanswered_lines_resent() -> None:
    async def scenario() -> None:
        async with IngestStub(drop_after=20) as server:
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=1, rate=2000, duration=None, count=500),
            )
        assert stats.reconnects >= 1 and stats.connections == stats.reconnects + 1
        assert stats.resent >= 1
        assert stats.sent == stats.ok == 500
        assert stats.unanswered == 0
        # The server stored the resent lines twice under the same id: the
        # downstream deduplication by reading_id is what makes a resend safe.
        assert len(set(server.ids)) == 500 < len(server.ids)

    run(scenario())


def test_unanswered_lines_are_waited_for_only_up_to_the_reply_timeout() -> None:
    async def scenario() -> None:
        async with IngestStub(silent=True) as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=2, rate=50, duration=0.5, reply_timeout=0.5),
            )
        assert time.monotonic() - started < 3
        assert stats.ok == 0
        assert stats.unanswered == stats.sent > 0
        assert len(server.readings) == stats.sent

    run(scenario())


def test_a_full_window_does_not_hold_the_run_past_its_duration() -> None:
    async def scenario() -> None:
        async with IngestStub(silent=True) as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=1, rate=1000, duration=0.5, window=10, reply_timeout=0.2),
            )
        assert time.monotonic() - started < 3
        assert stats.sent == stats.unanswered == 10

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


def test_a_failing_progress_callback_is_not_swallowed() -> None:
    def progress(stats: SimulationStats) -> None:
        raise RuntimeError("callback broke")

    async def scenario() -> None:
        async with IngestStub() as server:
            await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=1, rate=10, duration=5),
                progress=progress,
            )

    with pytest.raises(RuntimeError, match="callback broke"):
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


def test_summary_reads_as_one_paragraph() -> None:
    stats = SimulationStats(devices=3, sent=10, ok=9, errors={"422 out_of_range": 1}, elapsed=2.0)
    stats.episodes["fever"] = 2
    for ms in (1, 2, 3, 4):
        stats.add_latency(ms / 1000)
    text = stats.summary()
    assert "\n" not in text
    assert "3 simulated devices sent 10 readings in 2.0 s (5/s)" in text
    assert "9 OK, 1 ERR (422 out_of_range x1)" in text
    assert "2 clinical episodes started (fever 2)" in text
    assert "p50 2.0 ms" in text and "max 4.0 ms" in text
    assert SimulationStats().progress_line() == "sent 0  ok 0  err 0  rate 0/s  p95 ack n/a"


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
