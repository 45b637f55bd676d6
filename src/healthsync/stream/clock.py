"""A device's clock as the engine learns it: when it last sent, how often it measures, and
how much the network's delays vary.

Part of the engine's state (:mod:`healthsync.stream.state`), saved with it as a list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A gap between a device's measurements counts towards its usual interval as at most this
# many of them: longer is a dropout (a loose cable, a patient off the ward), not its interval.
# A reading measured longer than this before the newest one is part of a backlog, not late.
DROPOUT_INTERVALS = 3.0
# How much of the last delay range the next reading's delay keeps (per reading): the range
# follows the network over about twenty readings.
_DELAY_MEMORY = 0.95


@dataclass(slots=True)
class DeviceClock:
    """When a device last sent (receive time), and its usual interval between measurements.

    The interval is learnt from the times the device measured at, not the times its
    readings arrived: a device that uploads a backlog at once (a wearable back in range)
    still measures every minute. It is the moving average of the advances of the newest
    measurement time over that of the readings sharing them: the network reorders
    readings, and a late one, arriving after a newer one, split a gap already counted.

    The delays (receive time less measurement time, the device's clock offset included)
    are followed too, as a range that widens at once and narrows slowly: a reading
    delayed more than the one before it arrives that much later, so the silence before
    it says less about the device (see :mod:`healthsync.stream.devices`).
    """

    last: float
    interval: float | None = None
    count: int = 1
    measured: float | None = None  # the newest measurement time (None: saved without it)
    share: float = 1.0  # readings per advance of `measured` (moving average)
    # The range of recent delays (None: not known yet, or saved without it).
    delay_low: float | None = None
    delay_high: float | None = None

    def heard(self, at: float, ts: float) -> None:
        """A reading received `at`, measured at `ts`."""
        previous, self.last = self.last, max(self.last, at)
        self.count += 1
        newest = self.measured
        if newest is None:
            self.measured = ts
            self._delayed(at - ts)
        elif ts > newest:
            self.measured = ts
            self._advanced(ts - newest)
            self._delayed(at - ts)
        elif ts < newest:
            if self._late(newest - ts):
                self._delayed(at - ts)
        elif at > previous:
            # A clock that stands still (readings told apart by their sequence numbers):
            # only when they arrive says how often the device sends.
            self._advanced(at - previous)

    @property
    def delay_range(self) -> float:
        """How much the recent delays differ (0 while unknown)."""
        if self.delay_low is None or self.delay_high is None:
            return 0.0
        return self.delay_high - self.delay_low

    def _advanced(self, gap: float) -> None:
        """The newest measurement time moved on by `gap`. A dropout is no interval: a gap
        counts as at most three usual intervals, so a device reconfigured to send less
        often is still learnt within minutes."""
        interval = self.interval
        if interval is None:
            self.interval = gap
            return
        span = 0.8 * interval * self.share + 0.2 * min(gap, DROPOUT_INTERVALS * interval)
        self.share = 0.8 * self.share + 0.2
        self.interval = span / self.share

    def _late(self, before: float) -> bool:
        """A late reading, measured `before` s before the newest: it shares the advance it
        was measured in, unless measured long before the newest (a backlog sent newest
        first). True if it was late, not part of a backlog."""
        interval = self.interval
        if interval is None or before >= DROPOUT_INTERVALS * interval:
            return False
        span = interval * self.share
        self.share += 0.2
        self.interval = span / self.share
        return True

    def _delayed(self, delay: float) -> None:
        """A reading's delay. One longer than the recent ones by more than a dropout is a
        backlog uploaded at once (a gateway back online), not the network: it is left out.
        One shorter than them by as much says the device's clock was set forward: the
        range starts again from it."""
        low, high, interval = self.delay_low, self.delay_high, self.interval
        if low is None or high is None:
            self.delay_low = self.delay_high = delay
            return
        if interval is not None:
            if delay > high + DROPOUT_INTERVALS * interval:
                return
            if delay < low - DROPOUT_INTERVALS * interval:
                self.delay_low = self.delay_high = delay
                return
        keep = _DELAY_MEMORY
        self.delay_high = max(delay, keep * high + (1 - keep) * delay)
        self.delay_low = min(delay, keep * low + (1 - keep) * delay)

    def to_list(self) -> list[Any]:
        return [
            self.last,
            self.interval,
            self.count,
            self.measured,
            self.share,
            self.delay_low,
            self.delay_high,
        ]

    @classmethod
    def from_list(cls, data: list[Any]) -> DeviceClock:
        """A saved clock: [last, interval, count, measured, share, delay_low, delay_high],
        or its first five if saved before the delays were kept, or its first three if
        saved before the measurement time was."""
        last, interval, count, *rest = data
        clock = cls(float(last), interval, int(count))
        if len(rest) >= 2:
            clock.measured = _optional(rest[0])
            clock.share = float(rest[1])
        if len(rest) >= 4:
            clock.delay_low, clock.delay_high = _optional(rest[2]), _optional(rest[3])
        return clock


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)
