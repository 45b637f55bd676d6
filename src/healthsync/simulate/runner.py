"""Run many simulated devices against the ingest server and tally what it answered."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Final

from healthsync.simulate.connection import DeviceConnection, Plan, Shared
from healthsync.simulate.errors import SimulationError
from healthsync.simulate.patient import (
    DEFAULT_EPISODE_PROBABILITY,
    EpisodeKind,
    PatientModel,
    SimulatedDevice,
)
from healthsync.simulate.stats import SimulationStats

# Device ids must pass the server's id rule with "-0001" appended.
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,50}")
_CONNECT_GATE: Final = 64


@dataclass(frozen=True, slots=True)
class IngestEndpoint:
    """Where the devices connect: the ingest server's address, and TLS if it wants it."""

    host: str
    port: int
    ssl: SSLContext | None = None


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    """How many devices, how fast, for how long, and how patient with the server.

    Each device sends ``rate`` readings a second (catching up in bursts if it
    falls behind), with at most ``window`` lines unanswered, until ``duration``
    seconds have passed or it has sent ``count`` readings; it then waits up to
    ``reply_timeout`` seconds for outstanding replies. Neither ``duration`` nor
    ``count`` means run until stopped. A device that cannot connect for
    ``retry_for`` seconds gives up.

    Device ``i`` (from 1) is ``{device_prefix}-{i:04d}`` for patient ``P-{1000+i}``;
    seq numbers start at ``seq_start`` (default: derived from the clock, so
    every run's reading ids are new).

    Raises :class:`SimulationError` for a value the simulation cannot run with.
    """

    devices: int
    rate: float
    duration: float | None
    count: int | None = None
    seed: int | None = None
    episode_probability: float = DEFAULT_EPISODE_PROBABILITY
    device_prefix: str = "sim"
    seq_start: int | None = None
    window: int = 1000
    reply_timeout: float = 10.0
    retry_for: float = 30.0

    def __post_init__(self) -> None:
        self._check_pace()
        self._check_limits()

    def _check_pace(self) -> None:
        if self.devices < 1:
            raise SimulationError(f"devices must be at least 1, not {self.devices}")
        rate, duration = self.rate, self.duration
        if not (math.isfinite(rate) and rate > 0):
            raise SimulationError(f"rate must be a positive number of readings/s, not {rate}")
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise SimulationError(f"duration must be a positive number of seconds, not {duration}")
        if self.count is not None and self.count < 1:
            raise SimulationError(f"count must be at least 1, not {self.count}")

    def _check_limits(self) -> None:
        if not 0.0 <= self.episode_probability <= 1.0:
            raise SimulationError(
                f"episode_probability must be between 0 and 1, not {self.episode_probability}"
            )
        if self.window < 1:
            raise SimulationError(f"window must be at least 1, not {self.window}")
        if not self.reply_timeout >= 0:
            raise SimulationError(f"reply_timeout must not be negative, not {self.reply_timeout}")
        if _PREFIX_RE.fullmatch(self.device_prefix) is None:
            raise SimulationError(
                f"device_prefix {self.device_prefix!r} must be 1-50 of A-Z a-z 0-9 . _ : -"
            )
        if self.seq_start is not None and self.seq_start < 0:
            raise SimulationError(f"seq_start must not be negative, not {self.seq_start}")


async def run_simulation(
    endpoint: IngestEndpoint,
    options: SimulationOptions,
    *,
    progress: Callable[[SimulationStats], None] | None = None,
    stop: asyncio.Event | None = None,
) -> SimulationStats:
    """Run ``options.devices`` simulated monitors against the ingest server at ``endpoint``,
    each on its own connection, until the options say stop, ``stop`` is set, or the
    run is cancelled.

    A dropped connection is reopened with backoff and its unanswered lines are
    resent. ``progress`` is called about once a second.

    Raises :class:`SimulationError` if the server cannot be reached when the run
    starts (or no device ever connected).
    """
    loop = asyncio.get_running_loop()
    stats = SimulationStats(devices=options.devices)
    connect_timeout = min(10.0, max(1.0, options.retry_for))
    await _probe(endpoint, connect_timeout)
    started = loop.time()
    plan = Plan(
        host=endpoint.host,
        port=endpoint.port,
        rate=options.rate,
        count=options.count,
        deadline=None if options.duration is None else started + options.duration,
        ssl=endpoint.ssl,
        window=options.window,
        reply_timeout=options.reply_timeout,
        retry_for=options.retry_for,
        connect_timeout=connect_timeout,
    )
    stop_event = stop if stop is not None else asyncio.Event()
    stopped: asyncio.Task[object] = asyncio.create_task(stop_event.wait())
    shared = Shared(stats, stopped, asyncio.Semaphore(_CONNECT_GATE))
    connections = _connections(options, plan, shared, started)
    tasks = [asyncio.create_task(connection.run()) for connection in connections]
    reporter: asyncio.Task[None] | None = None
    if progress is not None:
        reporter = asyncio.create_task(_report_progress(stats, progress, started))
    try:
        await _until_done(tasks, reporter)
    finally:
        helpers = [stopped] if reporter is None else [stopped, reporter]
        for task in (*tasks, *helpers):
            task.cancel()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    stats.elapsed = loop.time() - started
    if stats.connections == 0:
        raise SimulationError(
            f"could not connect to {endpoint.host}:{endpoint.port}:"
            f" {stats.last_connect_error or 'no connection'}"
        )
    return stats


def _connections(
    options: SimulationOptions, plan: Plan, shared: Shared, started: float
) -> list[DeviceConnection]:
    """One device per patient, each with its own random stream drawn from the seed."""
    master = random.Random(options.seed)
    first_seq = _default_seq_start() if options.seq_start is None else options.seq_start
    episodes = shared.stats.episodes

    def count_episode(kind: EpisodeKind) -> None:
        episodes[kind] = episodes.get(kind, 0) + 1

    connections = []
    for i in range(1, options.devices + 1):
        model = PatientModel(
            random.Random(master.getrandbits(64)),
            episode_probability=options.episode_probability,
            on_episode=count_episode,
        )
        device = SimulatedDevice(
            f"{options.device_prefix}-{i:04d}", f"P-{1000 + i}", model, first_seq
        )
        # Spread each device's first reading over one interval, as real monitors
        # switched on at different moments would be.
        phase = master.random() / options.rate
        connections.append(DeviceConnection(device, plan, shared, started + phase))
    return connections


async def _until_done(tasks: list[asyncio.Task[None]], reporter: asyncio.Task[None] | None) -> None:
    # gather() fails as soon as one device fails, instead of after all finish.
    devices_done = asyncio.gather(*tasks)
    # If the reporter fails first, the caller cancels the devices: this future then
    # ends holding their CancelledError, with no one left to await it. Mark its
    # outcome as seen, or asyncio reports it as never retrieved when it is collected.
    devices_done.add_done_callback(_outcome_seen)
    if reporter is not None:
        await asyncio.wait((devices_done, reporter), return_when=asyncio.FIRST_COMPLETED)
        if reporter.done():
            reporter.result()  # the progress callback raised
    await devices_done


def _outcome_seen(future: asyncio.Future[list[None]]) -> None:
    if not future.cancelled():
        future.exception()


async def _report_progress(
    stats: SimulationStats, progress: Callable[[SimulationStats], None], started: float
) -> None:
    loop = asyncio.get_running_loop()
    last_sent, last_time = stats.sent, loop.time()
    while True:
        await asyncio.sleep(1.0)
        now = loop.time()
        stats.elapsed = now - started
        stats.rate = (stats.sent - last_sent) / (now - last_time)
        last_sent, last_time = stats.sent, now
        stats.roll_window()
        progress(stats)


async def _probe(endpoint: IngestEndpoint, timeout: float) -> None:
    # One connection up front turns a wrong address or a TLS mismatch into an
    # immediate error, instead of every device retrying for retry_for seconds.
    host, port = endpoint.host, endpoint.port
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=endpoint.ssl), timeout
        )
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise SimulationError(f"could not connect to {host}:{port}: {reason}") from exc
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def _default_seq_start() -> int:
    # Microseconds since the epoch: a later run (or a restarted simulator) starts
    # above every seq an earlier one could have reached below a million readings
    # a second per device, so its reading ids never collide with old ones.
    return time.time_ns() // 1000
