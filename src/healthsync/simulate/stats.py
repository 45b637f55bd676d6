"""What a simulation sent and what the server answered, and how fast it answered."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Final

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
