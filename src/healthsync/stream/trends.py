"""Per-patient memory for the trend and baseline rules, small enough to store with each batch.

A :class:`TrendWindow` keeps a vital's mean per coarse time bucket over the
last minutes, so "SpO2 fell 4 points within 5 minutes" costs a few
numbers per patient rather than every sample. A :class:`Baseline` learns a
patient's usual value and spread as an exponentially weighted mean and
variance, so "heart rate 30/min above this patient's normal" means something
for an athlete and for a patient with a resting tachycardia alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from healthsync.domain.alerts import Threshold

# A window is kept as up to this many buckets (plus the one being filled)...
_BUCKETS = 20
# ... each wide enough for this many of the device's samples: a bucket holding one
# noisy sample makes the highest (or lowest) bucket mean an outlier, and a trend.
_PER_BUCKET = 3
# A reference level is the mean over at least this long (several buckets if they are narrower).
_LEVEL_S = 30.0
# The current level is the median of this many latest samples, so one or two odd samples
# move nothing (with 3, two noisy samples of five made a 4-point SpO2 "fall" on stable patients).
_RECENT = 5
# How far below a rule's delta a bound on the change must stay for the change itself to be
# skipped (see TrendWindow.may_reach): far above the rounding of the change and any error
# of the float sums behind it.
_BOUND_SLACK = 0.01
Bucket = tuple[float, float, float, float, float]


def median(values: Iterable[float]) -> float:
    """The median, as statistics.median computes it (the same value, bit for bit), minus
    the generality: it runs for every sample of every vital."""
    ordered = sorted(values)
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@dataclass(slots=True)
class TrendWindow:
    """The mean value per time bucket over `window_s`, and the latest samples.

    Bucket means (not extremes) are the reference, so the ordinary beat-to-beat
    noise of a stable patient does not read as a trend.
    """

    window_s: float
    # (start, sum, count, low, high); a bucket is replaced, not changed, as samples arrive.
    buckets: list[Bucket] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)
    width: float = 0.0  # 0: window_s / _BUCKETS
    # The lowest and highest sample of the buckets (None: to be found again), not stored.
    _span: tuple[float, float] | None = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def width_for(window_s: float, interval: float | None) -> float:
        """Bucket width for a device sending every `interval` seconds."""
        return max(window_s / _BUCKETS, _PER_BUCKET * (interval or 0.0))

    def bucket_width(self) -> float:
        """This window's bucket width (a window saved without one: window_s / _BUCKETS)."""
        return self.width or self.window_s / _BUCKETS

    def suits(self, window_s: float, interval: float | None) -> bool:
        """Still right for this rule and device (within a factor 1.5, so jitter keeps it)."""
        wanted = self.width_for(window_s, interval)
        width = self.width or window_s / _BUCKETS
        return self.window_s == window_s and wanted / 1.5 <= width <= wanted * 1.5

    def add(self, ts: float, value: float) -> None:
        width = self.bucket_width()
        start = ts - ts % width
        if self.buckets and self.buckets[-1][0] == start:
            _, total, count, low, high = self.buckets[-1]
            self.buckets[-1] = (start, total + value, count + 1, min(low, value), max(high, value))
            self._widen(value)
        elif not self.buckets or start > self.buckets[-1][0]:
            self.buckets.append((start, value, 1, value, value))
            self._widen(value)
        # (an out-of-order sample older than the newest bucket only updates `recent`)
        cutoff = ts - self.window_s
        while self.buckets and self.buckets[0][0] + width <= cutoff:
            self.buckets.pop(0)
            self._span = None
        recent = self.recent
        recent.append(value)
        if len(recent) > _RECENT:
            del recent[: len(recent) - _RECENT]

    def _widen(self, value: float) -> None:
        span = self._span
        if span is not None:
            self._span = (min(span[0], value), max(span[1], value))

    def may_reach(self, direction: Literal["rise", "fall"], delta: float) -> bool:
        """False when :meth:`change` is sure to be below `delta` (> 0), found without it.

        A reference is a mean of bucket means, so it lies within the window's lowest
        and highest sample: the current level's distance from that sample bounds the
        change. On a stable patient the bound stays well below the rule's delta, and
        the means of every run of buckets need not be computed for each sample.
        """
        if len(self.recent) < _RECENT or not self.buckets:
            return False
        if self._span is None:
            self._span = (min(b[3] for b in self.buckets), max(b[4] for b in self.buckets))
        current = median(self.recent)
        lowest, highest = self._span
        bound = highest - current if direction == "fall" else current - lowest
        return bound >= delta - _BOUND_SLACK

    def mean_over(self, span_s: float, at: float, least: int) -> float | None:
        """The mean of the samples in the buckets that cover the last `span_s` before `at`
        (whole buckets, so up to a bucket more); None with fewer than `least` samples."""
        width = self.bucket_width()
        total = count = 0.0
        for start, bucket_sum, bucket_count, _low, _high in reversed(self.buckets):
            if start + width <= at - span_s:
                break
            total += bucket_sum
            count += bucket_count
        return total / count if count >= least and count > 0 else None

    def latest_mean(self, n: int) -> float | None:
        """The mean of the `n` samples added last (None with fewer)."""
        recent = self.recent
        return sum(recent[-n:]) / n if len(recent) >= n else None

    def change(self, direction: Literal["rise", "fall"]) -> tuple[float, float]:
        """How far the current level has risen above the window's lowest bucket mean (or
        fallen below its highest), and that reference. (0, 0) until there are enough samples."""
        if len(self.recent) < _RECENT or not self.buckets:
            return 0.0, 0.0
        current = median(self.recent)
        # A bucket of one sample (after a gap, or the one just begun) is one noisy sample,
        # not a level: it is no reference while fuller buckets are there.
        full = [b for b in self.buckets if b[2] >= 2] or self.buckets
        # A reference is a level held for _LEVEL_S: the mean of as many neighbouring
        # buckets as span it. One 15 s bucket's mean at a noise peak is no level.
        width = self.bucket_width()
        span = min(len(full), max(1, math.ceil(_LEVEL_S / width - 1e-9)))
        # Each sample of each trend rule pays for this: sums over slices of plain lists
        # (the same additions in the same order as summing each run's buckets). Summed from
        # 0.0, the same floats: compiled (healthsync.compiled), a sum from the int 0 of
        # counts held as ints is taken for an int.
        totals = [b[1] for b in full]
        counts = [b[2] for b in full]
        means = [
            sum(totals[i : i + span], 0.0) / sum(counts[i : i + span], 0.0)
            for i in range(len(full) - span + 1)
        ]
        if direction == "fall":
            reference = max(means)
            return round(reference - current, 3), round(reference, 3)
        reference = min(means)
        return round(current - reference, 3), round(reference, 3)

    def extremes(self) -> tuple[float, float] | None:
        """The lowest and the highest sample in the window, if any."""
        if not self.buckets:
            return None
        return min(b[3] for b in self.buckets), max(b[4] for b in self.buckets)

    def to_list(self) -> list[Any]:
        """What the state's JSON holds of it (encoded at once: nothing here is copied)."""
        return [self.window_s, self.buckets, self.recent, self.width]

    @classmethod
    def from_list(cls, data: list[Any]) -> TrendWindow:
        window_s, buckets, recent = data[:3]
        width = float(data[3]) if len(data) > 3 else 0.0  # older state: the fixed width
        return cls(float(window_s), [_bucket(b) for b in buckets], list(recent), width)


def _bucket(data: list[Any]) -> Bucket:
    """A stored bucket; one saved without its extremes gets its mean as both."""
    start, total, count = map(float, data[:3])
    if len(data) >= 5:
        return (start, total, count, float(data[3]), float(data[4]))
    return (start, total, count, total / count, total / count)


@dataclass(slots=True)
class Baseline:
    """An exponentially weighted mean and variance with time constant `tau_s`."""

    mean: float = 0.0
    var: float = 0.0
    n: int = 0
    last_ts: float = 0.0

    def update(self, ts: float, value: float, tau_s: float) -> None:
        if self.n == 0:
            self.mean, self.var, self.n, self.last_ts = value, 0.0, 1, ts
            return
        # Weight by elapsed time, so irregular sampling does not skew the baseline;
        # early on, by count, so the first samples settle it quickly.
        dt = max(ts - self.last_ts, 0.0)
        alpha = max(1.0 - math.exp(-dt / tau_s), 1.0 / (self.n + 1))
        delta = value - self.mean
        self.mean += alpha * delta
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)
        self.n += 1
        self.last_ts = max(self.last_ts, ts)

    def skip(self, ts: float) -> None:
        """A sample not learnt from: the time up to it weighs nothing in the next update
        (else the first normal sample after an excursion outweighs many before it)."""
        if self.n:
            self.last_ts = max(self.last_ts, ts)

    def deviation_limit(self, sigmas: float, min_delta: float) -> float:
        return max(sigmas * math.sqrt(self.var), min_delta)

    def to_list(self) -> list[float]:
        return [self.mean, self.var, self.n, self.last_ts]

    @classmethod
    def from_list(cls, data: list[float]) -> Baseline:
        mean, var, n, last_ts = data
        return cls(float(mean), float(var), int(n), float(last_ts))


def recovery(
    window: TrendWindow,
    band: Threshold | None,
    direction: Literal["rise", "fall"],
    reference: float,
    margin: float,
) -> bool:
    """Whether a change is the way back from beyond the band, not a deterioration: a rise
    from below the band or from within its margin of the low limit, or one in a window
    that held a sample below the low limit (the bucket means mix the episode and the
    return); a fall likewise from above or near the high limit."""
    if band is None:
        return False
    if not band.inside(reference, margin):
        return True
    extremes = window.extremes()
    if extremes is None:
        return False
    lowest, highest = extremes
    if direction == "rise":
        return band.low is not None and lowest < band.low
    return band.high is not None and highest > band.high


def homeward(
    baseline: Baseline | None,
    min_samples: int,
    direction: Literal["rise", "fall"],
    reference: float,
    change: float,
) -> bool:
    """Whether a change brings the vital nearer the patient's own learnt `baseline` (once
    it has `min_samples`) than the level it came from: the way back to their normal (the
    climb back after a bradypnoea, say), not a deterioration."""
    if baseline is None or baseline.n < min_samples:
        return False
    level = reference + change if direction == "rise" else reference - change
    return abs(level - baseline.mean) < abs(reference - baseline.mean)
