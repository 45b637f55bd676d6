"""The simulated devices: a fixed offered rate, some of them raising alerts on a schedule.

Each device keeps one connection and one line in flight; an unanswered or
refused line is sent again, with the same `seq` and `ts`, on a new connection
after a backoff, as docs/OPERATIONS.md asks of real devices. Every `OK` is
kept with the phase it arrived in, so a reading that goes missing later is
charged to the fault of its phase.

The first `alerting` devices alternate between a critical heart rate (150/min)
for `episode_s` and a normal one for `calm_s`. The engine holds a jump that
large until the new level has stood for 10 s (artefact screening), then opens
a `threshold:heart_rate` alert; it resolves 30 s after the rate is back. So
each episode should open exactly one alert, if its acknowledged critical
readings span those 10 s. Their cycles are
staggered so alerts open all through the run. The device's own timestamp
(`ts`) goes with each line, so the engine sees the same times however late
a reading is processed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

_RECONNECT_S = 0.5
_REPLY_TIMEOUT_S = 10.0
CRITICAL_HR = 150
PATIENT = "B-{n}"


@dataclass(frozen=True)
class Load:
    devices: int
    rate: float  # readings/s, all devices together
    alerting: int
    episode_s: float = 15.0
    calm_s: float = 50.0

    @property
    def cycle_s(self) -> float:
        return self.episode_s + self.calm_s


@dataclass
class Episode:
    """One alerting device's critical stretch, in the device's time."""

    device: int
    start: float
    end: float
    phase: str | None = None  # when its first critical reading was acknowledged
    first: float | None = None  # device times of the first and last critical readings acked
    last: float | None = None

    @property
    def acked_span(self) -> float:
        return 0.0 if self.first is None or self.last is None else self.last - self.first


@dataclass
class Fleet:
    port: int
    load: Load
    phase: str = "warm-up"
    # reading id -> (phase, device), for every OK
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)
    fresh: list[tuple[str, str, int]] = field(default_factory=list)  # for the confirmer
    episodes: dict[tuple[int, int], Episode] = field(default_factory=dict)
    stopping: bool = False
    t0: float = field(default_factory=time.time)

    async def run(self) -> None:
        await asyncio.gather(*(self._device(n) for n in range(self.load.devices)))

    def _episode(self, device: int, ts: float) -> tuple[int, int] | None:
        """The (device, cycle) of the episode `ts` falls in, or None outside one."""
        load = self.load
        if device >= load.alerting:
            return None
        since = ts - self.t0 - device * load.cycle_s / load.alerting
        if since < 0 or since % load.cycle_s >= load.episode_s:
            return None
        cycle = int(since // load.cycle_s)
        if (device, cycle) not in self.episodes:
            start = ts - since % load.cycle_s
            self.episodes[(device, cycle)] = Episode(device, start, start + load.episode_s)
        return device, cycle

    def _line(self, number: int, seq: int) -> tuple[bytes, float, tuple[int, int] | None]:
        ts = time.time()
        episode = self._episode(number, ts)
        hr = CRITICAL_HR if episode is not None else 70 + seq % 5
        patient = PATIENT.format(n=number)
        line = f"device_id=bench-{number} patient_id={patient} seq={seq} ts={ts:.3f} hr={hr}\n"
        return line.encode(), ts, episode

    def _acked(
        self, reading_id: str, number: int, ts: float, episode: tuple[int, int] | None
    ) -> None:
        self.acked[reading_id] = (self.phase, number)
        self.fresh.append((reading_id, self.phase, number))
        if episode is not None:
            found = self.episodes[episode]
            found.phase = found.phase or self.phase
            found.first = ts if found.first is None else min(found.first, ts)
            found.last = ts if found.last is None else max(found.last, ts)

    async def _device(self, number: int) -> None:
        interval = self.load.devices / self.load.rate
        seq = 0
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pending: tuple[bytes, float, tuple[int, int] | None] | None = None
        next_at = time.monotonic()
        while not self.stopping:
            pending = pending or self._line(number, seq)
            line, ts, episode = pending
            try:
                connection = connection or await asyncio.open_connection("127.0.0.1", self.port)
                connection[1].write(line)
                reply = await asyncio.wait_for(connection[0].readline(), _REPLY_TIMEOUT_S)
            except (OSError, TimeoutError):
                reply = b""
            if reply.startswith(b"OK "):
                self._acked(reply.split()[1].decode(), number, ts, episode)
                seq += 1
                pending = None
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                continue
            if connection is not None:  # resend the same line on a new connection
                connection[1].close()
                connection = None
            await asyncio.sleep(_RECONNECT_S)
            next_at = time.monotonic()
        if connection is not None:
            connection[1].close()
