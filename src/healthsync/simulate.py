"""Simulated bedside monitors: many devices, each on its own TCP connection to ingest.

Each device carries a :class:`PatientModel` that produces plausible vitals for
one patient: a personal baseline, slow drift that keeps returning towards it,
and now and then a clinical episode (hypoxaemia, tachycardia, fever) that ramps
in, holds and recovers, so the anomaly engine downstream has something real to
find. :func:`run_simulation` drives any number of such devices at a given rate
and reports what the server answered and how long it took.

The library never prints; the CLI renders :class:`SimulationStats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from ssl import SSLContext
from typing import Final, Literal

from healthsync.domain.readings import VITALS
from healthsync.errors import HealthSyncError
from healthsync.wire import format_line

__all__ = [
    "DEFAULT_EPISODE_PROBABILITY",
    "EPISODE_KINDS",
    "Episode",
    "EpisodeKind",
    "LatencySummary",
    "PatientModel",
    "SimulatedDevice",
    "SimulationError",
    "SimulationStats",
    "VitalSigns",
    "run_simulation",
]

EpisodeKind = Literal["hypoxaemia", "tachycardia", "fever"]
EPISODE_KINDS: Final[tuple[EpisodeKind, ...]] = ("hypoxaemia", "tachycardia", "fever")

# Chance per reading that a patient who is not in an episode starts one. At one
# reading a second that is one episode per patient every ~8 minutes: often
# enough that a demo with a few dozen devices shows alerts within a minute.
DEFAULT_EPISODE_PROBABILITY: Final = 0.002


class SimulationError(HealthSyncError):
    """The simulation could not run as asked (bad arguments, server unreachable)."""


# --- the patient ------------------------------------------------------------

# Index order of the model's state vectors; spelled out once for speed in step().
_HR, _SPO2, _TEMP, _RR, _SYS, _DIA = range(6)
_NAMES: Final = ("heart_rate", "spo2", "temp", "resp_rate", "bp_sys", "bp_dia")

# What a living patient on a ward can plausibly show. Narrower than the
# protocol's bounds, so a long random walk can never produce a rejected line.
_PLAUSIBLE: Final[tuple[tuple[float, float], ...]] = (
    (30.0, 220.0),
    (70.0, 100.0),
    (34.0, 41.5),
    (5.0, 50.0),
    (70.0, 220.0),
    (35.0, 130.0),
)
_LIMITS: Final[tuple[tuple[float, float], ...]] = tuple(
    (max(lo, VITALS[name].minimum), min(hi, VITALS[name].maximum))
    for name, (lo, hi) in zip(_NAMES, _PLAUSIBLE, strict=True)
)
# Per-reading noise. With the reversion below the reading-to-reading spread is
# about 2.3 times these: HR +-3.5/min, SpO2 +-1 %, temp +-0.1 C, BP +-5 mmHg.
_SIGMA: Final = (1.5, 0.4, 0.04, 0.5, 2.0, 1.3)
_REVERSION: Final = 0.1
# The centre the readings revert to wanders too, far more slowly, so a patient
# trends over hours instead of sitting on one number forever.
_CENTRE_REVERSION: Final = 0.005
_CENTRE_SIGMA: Final = tuple(s * 0.2 for s in _SIGMA)
# Half-width of a triangular distribution (u1 + u2 - 1) with the given sigma.
_SPREAD: Final = tuple(s * math.sqrt(6) for s in _SIGMA)
_CENTRE_SPREAD: Final = tuple(s * math.sqrt(6) for s in _CENTRE_SIGMA)
# Diastolic stays this far below systolic: the protocol rejects sys <= dia, and
# a pulse pressure under 15 mmHg is not something a monitor would report.
_MIN_PULSE_PRESSURE: Final = 15


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo if value < lo else hi if value > hi else value


@dataclass(frozen=True, slots=True)
class VitalSigns:
    """One set of readings as a monitor displays them (already rounded)."""

    heart_rate: int
    spo2: int
    temp: float
    resp_rate: int
    bp_sys: int
    bp_dia: int
    on_oxygen: bool
    consciousness: str


@dataclass(slots=True)
class Episode:
    """A clinical event in progress: how far it pushes each vital, and for how long.

    Durations are in readings, not seconds, so an episode is visible at any
    rate: a few minutes at one reading a second, a blink in a load test.
    """

    kind: EpisodeKind
    # Displacement of each vital from the patient's centre at full intensity.
    offsets: tuple[float, ...]
    ramp: int
    hold: int
    recover: int
    # Severe hypoxaemia makes some patients newly confused (ACVPU "C").
    confusion: bool = False
    elapsed: int = 0

    @property
    def length(self) -> int:
        return self.ramp + self.hold + self.recover

    @property
    def phase(self) -> Literal["ramp", "hold", "recover"]:
        if self.elapsed < self.ramp:
            return "ramp"
        if self.elapsed < self.ramp + self.hold:
            return "hold"
        return "recover"

    @property
    def intensity(self) -> float:
        """0..1: how much of the episode's displacement applies at this reading."""
        step = self.elapsed
        if step < self.ramp:
            return (step + 1) / self.ramp
        step -= self.ramp
        if step < self.hold:
            return 1.0
        step -= self.hold
        return max(0.0, 1.0 - (step + 1) / self.recover)


class PatientModel:
    """Vitals of one simulated patient, one reading per :meth:`step`.

    Each vital follows a mean-reverting random walk (an Ornstein-Uhlenbeck
    process in discrete steps) around a centre that itself drifts slowly around
    the patient's baseline. An episode moves the point the walk reverts to, so
    values ramp in and recover with the lag a real body shows rather than
    jumping. Everything is drawn from the ``rng`` given, so a seed reproduces a
    patient exactly.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        episode_probability: float = DEFAULT_EPISODE_PROBABILITY,
        on_episode: Callable[[EpisodeKind], None] | None = None,
    ) -> None:
        if not 0.0 <= episode_probability <= 1.0:
            raise SimulationError(
                f"episode_probability must be between 0 and 1, not {episode_probability}"
            )
        self._rng = rng
        self.episode_probability = episode_probability
        self._on_episode = on_episode
        systolic = _clamp(rng.gauss(122, 12), (100, 160))
        self.baseline: tuple[float, ...] = (
            _clamp(rng.gauss(76, 9), (55, 100)),
            rng.uniform(95.0, 99.5),
            _clamp(rng.gauss(36.8, 0.25), (36.2, 37.4)),
            _clamp(rng.gauss(15, 2), (12, 20)),
            systolic,
            _clamp(systolic * rng.gauss(0.65, 0.04), (60, 95)),
        )
        # A few ward patients are on supplemental oxygen all along.
        self.on_oxygen_baseline = rng.random() < 0.05
        self._centre = list(self.baseline)
        self._value = list(self.baseline)
        self.episode: Episode | None = None
        self.episodes_started = 0

    def start_episode(self, kind: EpisodeKind) -> Episode:
        """Begin an episode now (replacing any in progress) and return it."""
        rng = self._rng
        centre = self._centre
        offsets = [0.0] * 6
        confusion = False
        if kind == "hypoxaemia":
            target = rng.uniform(82.0, 88.0)
            offsets[_SPO2] = target - centre[_SPO2]
            offsets[_HR] = rng.uniform(10, 25)
            offsets[_RR] = rng.uniform(5, 10)
            confusion = target < 85.0 and rng.random() < 0.5
        elif kind == "tachycardia":
            offsets[_HR] = rng.uniform(130.0, 160.0) - centre[_HR]
            offsets[_RR] = rng.uniform(2, 5)
            offsets[_SYS] = -rng.uniform(0, 15)
        elif kind == "fever":
            target = rng.uniform(38.5, 39.8)
            offsets[_TEMP] = target - centre[_TEMP]
            # Roughly ten beats a minute per degree of fever.
            offsets[_HR] = 10 * offsets[_TEMP] + rng.uniform(0, 8)
            offsets[_RR] = rng.uniform(2, 5)
        else:
            raise SimulationError(f"unknown episode kind {kind!r}; expected one of {EPISODE_KINDS}")
        self.episode = Episode(
            kind=kind,
            offsets=tuple(offsets),
            ramp=rng.randint(10, 30),
            hold=rng.randint(30, 120),
            recover=rng.randint(20, 60),
            confusion=confusion,
        )
        self.episodes_started += 1
        if self._on_episode is not None:
            self._on_episode(kind)
        return self.episode

    def step(self) -> VitalSigns:
        """Advance one reading and return what the monitor shows."""
        rng = self._rng
        uniform = rng.random
        episode = self.episode
        if episode is None and uniform() < self.episode_probability:
            episode = self.start_episode(rng.choice(EPISODE_KINDS))
        intensity = 0.0 if episode is None else episode.intensity

        centre, value, baseline = self._centre, self._value, self.baseline
        for i in range(6):
            # Noise is the sum of two uniforms (triangular, scaled to the sigma):
            # a sixth of the cost of gauss() on the simulator's hot path, and
            # bounded, so a monitor never shows a freak one-reading spike.
            c = centre[i]
            c += _CENTRE_REVERSION * (baseline[i] - c)
            c += (uniform() + uniform() - 1.0) * _CENTRE_SPREAD[i]
            centre[i] = c
            target = c if episode is None else c + intensity * episode.offsets[i]
            v = value[i]
            v += _REVERSION * (target - v) + (uniform() + uniform() - 1.0) * _SPREAD[i]
            value[i] = _clamp(v, _LIMITS[i])

        on_oxygen = self.on_oxygen_baseline
        consciousness = "A"
        if episode is not None:
            phase = episode.phase
            # Staff put a hypoxic patient on oxygen; that is why it recovers.
            if episode.kind == "hypoxaemia" and phase == "recover":
                on_oxygen = True
            if episode.confusion and phase == "hold":
                consciousness = "C"
            episode.elapsed += 1
            if episode.elapsed >= episode.length:
                self.episode = None

        systolic = round(value[_SYS])
        return VitalSigns(
            heart_rate=round(value[_HR]),
            spo2=round(value[_SPO2]),
            temp=round(value[_TEMP], 1),
            resp_rate=round(value[_RR]),
            bp_sys=systolic,
            bp_dia=max(
                round(_LIMITS[_DIA][0]), min(round(value[_DIA]), systolic - _MIN_PULSE_PRESSURE)
            ),
            on_oxygen=on_oxygen,
            consciousness=consciousness,
        )


class SimulatedDevice:
    """A monitor at one bed: a patient model plus the device's sequence counter."""

    def __init__(
        self, device_id: str, patient_id: str, model: PatientModel, seq_start: int
    ) -> None:
        self.device_id = device_id
        self.patient_id = patient_id
        self.model = model
        self.next_seq = seq_start

    def next_line(self) -> bytes:
        """The next reading as one protocol line, ``\\n`` included."""
        v = self.model.step()
        seq = self.next_seq
        self.next_seq = seq + 1
        return format_line(
            {
                "device_id": self.device_id,
                "patient_id": self.patient_id,
                "seq": seq,
                "heart_rate": v.heart_rate,
                "spo2": v.spo2,
                "temp": v.temp,
                "resp_rate": v.resp_rate,
                "bp": f"{v.bp_sys}/{v.bp_dia}",
                "on_oxygen": v.on_oxygen,
                "consciousness": v.consciousness,
            }
        )


# --- statistics ---------------------------------------------------------------

# Enough samples for a stable p99 while bounding memory on hour-long runs.
_RESERVOIR: Final = 100_000
_WINDOW_SAMPLES: Final = 50_000


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Time from writing a line to reading its reply, in seconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> LatencySummary:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        ordered = sorted(samples)
        last = len(ordered) - 1

        def rank(q: float) -> float:
            return ordered[min(last, math.ceil(q * len(ordered)) - 1)]

        return cls(len(ordered), rank(0.50), rank(0.95), rank(0.99), ordered[last])


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


@dataclass
class SimulationStats:
    """What a simulation sent and what the server answered.

    ``sent`` counts distinct readings; ``resent`` counts lines written again
    after a reconnect because their reply never came (the server recognises
    them by device and seq). At the end ``sent == ok + err + unanswered``.
    """

    devices: int = 0
    sent: int = 0
    resent: int = 0
    ok: int = 0
    # "<code> <reason>" (e.g. "422 out_of_range") -> how many lines got that ERR.
    errors: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    connections: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    last_connect_error: str | None = None
    episodes: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    # Readings per second over the last progress interval.
    rate: float = 0.0
    _samples: list[float] = field(default_factory=list, repr=False)
    _seen: int = field(default=0, repr=False)
    _window: list[float] = field(default_factory=list, repr=False)
    _last_window: list[float] = field(default_factory=list, repr=False)
    _sampler: random.Random = field(default_factory=random.Random, repr=False)

    @property
    def err(self) -> int:
        return sum(self.errors.values())

    @property
    def episodes_started(self) -> int:
        return sum(self.episodes.values())

    def add_error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    def add_latency(self, seconds: float) -> None:
        # Reservoir sampling keeps an unbiased sample of the whole run.
        self._seen += 1
        if len(self._samples) < _RESERVOIR:
            self._samples.append(seconds)
        else:
            slot = self._sampler.randrange(self._seen)
            if slot < _RESERVOIR:
                self._samples[slot] = seconds
        if len(self._window) < _WINDOW_SAMPLES:
            self._window.append(seconds)

    def roll_window(self) -> None:
        """Start a new progress interval; :meth:`progress_line` shows the one just ended."""
        self._last_window, self._window = self._window, []

    def latency(self) -> LatencySummary:
        """Ack latency over the whole run."""
        return LatencySummary.of(self._samples)

    def progress_line(self) -> str:
        recent = LatencySummary.of(self._last_window or self._samples)
        return (
            f"sent {self.sent}  ok {self.ok}  err {self.err}  rate {self.rate:.0f}/s"
            f"  p95 ack {_ms(recent.p95)}"
        )

    def summary(self) -> str:
        average = self.sent / self.elapsed if self.elapsed > 0 else 0.0
        errors = ", ".join(f"{key} x{n}" for key, n in sorted(self.errors.items()))
        episodes = ", ".join(f"{kind} {n}" for kind, n in sorted(self.episodes.items()))
        lat = self.latency()
        text = (
            f"{self.devices} simulated devices sent {self.sent} readings in {self.elapsed:.1f} s"
            f" ({average:.0f}/s): {self.ok} OK, {self.err} ERR"
            f"{f' ({errors})' if errors else ''}, {self.unanswered} unanswered."
            f" {self.connections} connections, {self.reconnects} reconnects,"
            f" {self.resent} lines resent"
        )
        if self.connect_failures:
            text += f", {self.connect_failures} failed connects (last: {self.last_connect_error})"
        text += (
            f". {self.episodes_started} clinical episodes started"
            f"{f' ({episodes})' if episodes else ''}."
            f" Ack latency p50 {_ms(lat.p50)}, p95 {_ms(lat.p95)}, p99 {_ms(lat.p99)},"
            f" max {_ms(lat.max)} over {lat.count} sampled replies."
        )
        return text


# --- driving devices ------------------------------------------------------------

# Lines per write: large enough that a fast device spends its time generating
# readings rather than in the event loop, small enough to keep writes ~100 KB.
_MAX_BURST: Final = 1000
# Shortest sleep between bursts: a device due more often than this sends the
# readings that fell due in one write instead of waking for each.
_MIN_TICK: Final = 0.005
# Sleeps longer than this also wake on the stop event; shorter ones not worth it.
_INTERRUPTIBLE_SLEEP: Final = 0.05
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 5.0
_READ_CHUNK: Final = 1 << 16
# Device ids must pass the server's id rule with "-0001" appended.
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,50}")


@dataclass(frozen=True, slots=True)
class _Plan:
    host: str
    port: int
    rate: float
    count: int | None
    deadline: float | None  # loop time
    ssl: SSLContext | None
    window: int
    reply_timeout: float
    retry_for: float
    connect_timeout: float


class _DeviceRunner:
    """One device's connection, its unanswered lines, and the pacing of its sends."""

    def __init__(
        self,
        device: SimulatedDevice,
        plan: _Plan,
        stats: SimulationStats,
        stopped: asyncio.Task[object],
        connect_gate: asyncio.Semaphore,
        t0: float,
    ) -> None:
        self.device = device
        self.plan = plan
        self.stats = stats
        self.stopped = stopped
        self.connect_gate = connect_gate
        self.t0 = t0
        self.sent = 0
        # (line, loop time written) for every line not yet answered, in send order:
        # the server answers in order, so each reply belongs to the leftmost entry.
        self.pending: deque[tuple[bytes, float]] = deque()
        self.room = asyncio.Event()
        self.idle = asyncio.Event()
        self.drain_until: float | None = None

    def sending_done(self, now: float) -> bool:
        plan = self.plan
        return (
            self.stopped.done()
            or (plan.deadline is not None and now >= plan.deadline)
            or (plan.count is not None and self.sent >= plan.count)
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_MIN
        failing_since: float | None = None
        connected_before = False
        try:
            while True:
                now = loop.time()
                if self.sending_done(now):
                    if not self.pending:
                        return
                    if self.drain_until is None:
                        self.drain_until = now + self.plan.reply_timeout
                    if now >= self.drain_until:
                        return
                try:
                    reader, writer = await self._connect()
                except (OSError, TimeoutError) as exc:
                    self.stats.connect_failures += 1
                    self.stats.last_connect_error = str(exc) or type(exc).__name__
                    now = loop.time()
                    if failing_since is None:
                        failing_since = now
                    if now - failing_since >= self.plan.retry_for:
                        return
                    delay = backoff * random.uniform(0.5, 1.0)
                    if self.drain_until is not None:
                        delay = min(delay, max(0.0, self.drain_until - now))
                    await self._sleep(delay)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                failing_since = None
                backoff = _BACKOFF_MIN
                self.stats.connections += 1
                if connected_before:
                    self.stats.reconnects += 1
                connected_before = True
                if not await self._session(reader, writer):
                    return
        finally:
            self.stats.unanswered += len(self.pending)
            self.pending.clear()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        plan = self.plan
        async with self.connect_gate:
            return await asyncio.wait_for(
                asyncio.open_connection(plan.host, plan.port, ssl=plan.ssl, limit=_READ_CHUNK),
                plan.connect_timeout,
            )

    async def _sleep(self, delay: float) -> None:
        if delay > _INTERRUPTIBLE_SLEEP:
            await asyncio.wait((self.stopped,), timeout=delay)
        else:
            await asyncio.sleep(delay)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Use one connection until done; True if it was lost and should be replaced."""
        loop = asyncio.get_running_loop()
        if self.pending:
            # Their replies were lost with the old connection. A resend carries the
            # same device and seq, so the server treats it as the same reading.
            lines = [line for line, _ in self.pending]
            now = loop.time()
            self.pending = deque(zip(lines, repeat(now)))
            self.stats.resent += len(lines)
            writer.write(b"".join(lines))
        self.room.set()
        replies = asyncio.create_task(self._read_replies(reader))
        try:
            try:
                await writer.drain()
                await self._send(writer, replies)
            except OSError:
                return True
            if replies.done():
                return bool(self.pending) or not self.sending_done(loop.time())
            return await self._await_replies(replies)
        finally:
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replies
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _send(self, writer: asyncio.StreamWriter, replies: asyncio.Task[None]) -> None:
        """Write readings as they fall due until sending is done or the connection drops."""
        loop = asyncio.get_running_loop()
        plan = self.plan
        next_line = self.device.next_line
        while not replies.done():
            now = loop.time()
            if self.sending_done(now):
                return
            due = math.floor((now - self.t0) * plan.rate) + 1 - self.sent
            if plan.count is not None:
                due = min(due, plan.count - self.sent)
            if due <= 0:
                delay = max(self.t0 + self.sent / plan.rate - now, _MIN_TICK)
                if plan.deadline is not None:
                    delay = min(delay, plan.deadline - now)
                await self._sleep(delay)
                continue
            room = plan.window - len(self.pending)
            if room <= 0:
                await self._wait_for_room(now)
                continue
            n = min(due, room, _MAX_BURST)
            lines = [next_line() for _ in range(n)]
            self.pending.extend(zip(lines, repeat(loop.time())))
            writer.write(b"".join(lines))
            self.sent += n
            self.stats.sent += n
            await writer.drain()
            if n < due:
                # Still behind: yield so replies are read and other devices run.
                await asyncio.sleep(0)

    async def _wait_for_room(self, now: float) -> None:
        # Bounded by the deadline and the stop event: a server that stops
        # answering must not hold the simulation past its end.
        self.room.clear()
        room = asyncio.create_task(self.room.wait())
        deadline = self.plan.deadline
        try:
            await asyncio.wait(
                (room, self.stopped),
                timeout=None if deadline is None else max(0.0, deadline - now),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            room.cancel()

    async def _await_replies(self, replies: asyncio.Task[None]) -> bool:
        loop = asyncio.get_running_loop()
        if self.drain_until is None:
            self.drain_until = loop.time() + self.plan.reply_timeout
        while self.pending:
            remaining = self.drain_until - loop.time()
            if remaining <= 0:
                return False
            if replies.done():
                return True
            self.idle.clear()
            idle = asyncio.create_task(self.idle.wait())
            try:
                await asyncio.wait(
                    (replies, idle), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                idle.cancel()
        return False

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        stats = self.stats
        window = self.plan.window
        buffer = b""
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    return
                buffer += data
                if b"\n" not in data:
                    continue
                *lines, buffer = buffer.split(b"\n")
                now = loop.time()
                pending = self.pending
                for line in lines:
                    if not pending:
                        stats.add_error("unexpected reply")
                        continue
                    _, written = pending.popleft()
                    stats.add_latency(now - written)
                    if line.startswith(b"OK "):
                        stats.ok += 1
                    elif line.startswith(b"ERR "):
                        stats.add_error(_error_key(line))
                    else:
                        stats.add_error("malformed reply")
                if len(pending) < window:
                    self.room.set()
                if not pending:
                    self.idle.set()
        except OSError:
            return
        finally:
            # Wake a sender waiting for room, so it notices the connection is gone.
            self.room.set()
            self.idle.set()


def _error_key(line: bytes) -> str:
    """``ERR 422 out_of_range: temp ...`` -> ``422 out_of_range``."""
    head = line[4:].split(b":", 1)[0].decode("utf-8", "replace").strip()
    return head or "ERR"


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


async def _probe(host: str, port: int, ssl: SSLContext | None, timeout: float) -> None:
    # One connection up front turns a wrong address or a TLS mismatch into an
    # immediate error, instead of every device retrying for retry_for seconds.
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl), timeout)
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


async def run_simulation(
    host: str,
    port: int,
    *,
    devices: int,
    rate: float,
    duration: float | None,
    count: int | None = None,
    seed: int | None = None,
    episode_probability: float = DEFAULT_EPISODE_PROBABILITY,
    progress: Callable[[SimulationStats], None] | None = None,
    ssl: SSLContext | None = None,
    stop: asyncio.Event | None = None,
    device_prefix: str = "sim",
    seq_start: int | None = None,
    window: int = 1000,
    reply_timeout: float = 10.0,
    retry_for: float = 30.0,
) -> SimulationStats:
    """Run ``devices`` simulated monitors against the ingest server at host:port.

    Each device sends ``rate`` readings a second (catching up in bursts if it
    falls behind) on its own connection, with at most ``window`` lines
    unanswered, until ``duration`` seconds have passed, it has sent ``count``
    readings, or ``stop`` is set; it then waits up to ``reply_timeout`` seconds
    for outstanding replies. Neither ``duration`` nor ``count`` means run until
    ``stop`` or cancellation.

    A dropped connection is reopened with backoff and its unanswered lines are
    resent; a device that cannot connect for ``retry_for`` seconds gives up.
    Device ``i`` (from 1) is ``{device_prefix}-{i:04d}`` for patient ``P-{1000+i}``;
    seq numbers start at ``seq_start`` (default: derived from the clock, so
    every run's reading ids are new). ``progress`` is called about once a second.

    Raises :class:`SimulationError` for invalid arguments, and if the server
    cannot be reached when the run starts (or no device ever connected).
    """
    _check_arguments(devices, rate, duration, count, episode_probability, window, reply_timeout)
    if _PREFIX_RE.fullmatch(device_prefix) is None:
        raise SimulationError(
            f"device_prefix {device_prefix!r} must be 1-50 of A-Z a-z 0-9 . _ : -"
        )
    if seq_start is not None and seq_start < 0:
        raise SimulationError(f"seq_start must not be negative, not {seq_start}")
    loop = asyncio.get_running_loop()
    master = random.Random(seed)
    stats = SimulationStats(devices=devices)
    connect_timeout = min(10.0, max(1.0, retry_for))
    await _probe(host, port, ssl, connect_timeout)
    started = loop.time()
    plan = _Plan(
        host=host,
        port=port,
        rate=rate,
        count=count,
        deadline=None if duration is None else started + duration,
        ssl=ssl,
        window=window,
        reply_timeout=reply_timeout,
        retry_for=retry_for,
        connect_timeout=connect_timeout,
    )
    first_seq = _default_seq_start() if seq_start is None else seq_start

    def count_episode(kind: EpisodeKind) -> None:
        stats.episodes[kind] = stats.episodes.get(kind, 0) + 1

    stop_event = stop if stop is not None else asyncio.Event()
    stopped: asyncio.Task[object] = asyncio.create_task(stop_event.wait())
    # A burst of simultaneous connects overflows a server's listen backlog.
    connect_gate = asyncio.Semaphore(64)
    runners = []
    for i in range(1, devices + 1):
        model = PatientModel(
            random.Random(master.getrandbits(64)),
            episode_probability=episode_probability,
            on_episode=count_episode,
        )
        device = SimulatedDevice(f"{device_prefix}-{i:04d}", f"P-{1000 + i}", model, first_seq)
        # Spread each device's first reading over one interval, as real monitors
        # switched on at different moments would be.
        phase = master.random() / rate
        runners.append(_DeviceRunner(device, plan, stats, stopped, connect_gate, started + phase))

    tasks = [asyncio.create_task(runner.run()) for runner in runners]
    # gather() fails as soon as one device fails, instead of after all finish.
    devices_done = asyncio.gather(*tasks)
    reporter: asyncio.Task[None] | None = None
    try:
        if progress is not None:
            reporter = asyncio.create_task(_report_progress(stats, progress, started))
            await asyncio.wait((devices_done, reporter), return_when=asyncio.FIRST_COMPLETED)
            if reporter.done():
                reporter.result()  # the progress callback raised
        await devices_done
    finally:
        helpers = [stopped] if reporter is None else [stopped, reporter]
        for task in (*tasks, *helpers):
            task.cancel()
        await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    stats.elapsed = loop.time() - started
    if stats.connections == 0:
        raise SimulationError(
            f"could not connect to {host}:{port}: {stats.last_connect_error or 'no connection'}"
        )
    return stats


def _check_arguments(
    devices: int,
    rate: float,
    duration: float | None,
    count: int | None,
    episode_probability: float,
    window: int,
    reply_timeout: float,
) -> None:
    if devices < 1:
        raise SimulationError(f"devices must be at least 1, not {devices}")
    if not (math.isfinite(rate) and rate > 0):
        raise SimulationError(f"rate must be a positive number of readings/s, not {rate}")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise SimulationError(f"duration must be a positive number of seconds, not {duration}")
    if count is not None and count < 1:
        raise SimulationError(f"count must be at least 1, not {count}")
    if not 0.0 <= episode_probability <= 1.0:
        raise SimulationError(
            f"episode_probability must be between 0 and 1, not {episode_probability}"
        )
    if window < 1:
        raise SimulationError(f"window must be at least 1, not {window}")
    if not reply_timeout >= 0:
        raise SimulationError(f"reply_timeout must not be negative, not {reply_timeout}")
