"""A generated patient's noise-free vitals over time, and what an episode does to them.

Each vital wanders slowly (an Ornstein-Uhlenbeck walk, 10-minute time constant)
around the patient's baseline. Outside episodes the noise-free value stays where
no rule has a clinical reason to call: inside the warning band, and out of the
range NEWS2 scores 3 (SpO2 <= 91 and systolic <= 90 score 3 inside the warning
band, and a patient sitting there would rightly raise an urgent alert), and
with a NEWS2 total below 5: a medium score calls for an urgent response too
(RCP 2017), so a patient whose amber parts add up to it is not stable. So an
out-of-range sample or score outside an episode is noise or an artefact, never
an unlabelled deterioration.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Final

from healthsync.domain.news2 import news2
from healthsync.evaluation.placement import Band, Placed
from healthsync.evaluation.scenario import Scenario

# Time constant of the slow wander of each vital around the patient's baseline.
_DRIFT_TAU_S: Final = 600.0
# The lowest values NEWS2 scores below 3 (RCP 2017 chart): a stable patient stays above.
_NEWS2_AMBER_LOW: Final = {"spo2": 92.0, "bp_sys": 91.0}
# A correlated hypoxaemia: per point of SpO2 lost, the heart rate rises by this
# much (/min) and the respiratory rate by this much (/min).
CORRELATED_RISE: Final = {"heart_rate": 2.0, "resp_rate": 0.6}
# A stable patient's NEWS2 total, from noise-free values, stays below this (medium: 5-6).
_NEWS2_MEDIUM: Final = 5
# A baseline scoring more than this is drawn again, leaving the wander some room.
_NEWS2_BASELINE_MAX: Final = 3
_BASELINE_TRIES: Final = 100
# How much of its wander a vital keeps when the whole would reach a medium NEWS2.
_WANDER_SHARES: Final = (1.0, 0.75, 0.5, 0.25, 0.0)


def _news2_total(values: Mapping[str, float]) -> int:
    return news2(dict(values), 0.0).total


class Patient:
    """Noise-free value of every vital over time, plus the measurement noise."""

    def __init__(
        self, scenario: Scenario, bands: Mapping[str, Band], rng: random.Random, interval: float
    ) -> None:
        self.rng = rng
        self.specs = scenario.vitals
        self.bands = bands
        self.wander = dict.fromkeys(self.specs, 0.0)
        for _ in range(_BASELINE_TRIES):
            self.baseline = {
                vital: min(spec.max, max(spec.min, rng.gauss(spec.mean, spec.sd)))
                for vital, spec in self.specs.items()
            }
            if _news2_total(self.backgrounds()) <= _NEWS2_BASELINE_MAX:
                break
        self.keep = math.exp(-interval / _DRIFT_TAU_S)
        self.kick = math.sqrt(1.0 - self.keep**2)

    def backgrounds(self) -> dict[str, float]:
        """Every vital's background, with the wander pulled back towards the baseline
        as far as it takes to keep the NEWS2 total below medium."""
        for share in _WANDER_SHARES:
            values = {vital: self.background(vital, share) for vital in self.specs}
            if _news2_total(values) < _NEWS2_MEDIUM:
                break
        return values

    def background(self, vital: str, share: float = 1.0) -> float:
        """Baseline plus (a `share` of) the wander, held inside the normal range by one
        noise width."""
        spec = self.specs[vital]
        value = self.baseline[vital] + share * self.wander[vital]
        low, high = self.bands.get(vital, (None, None))
        amber = _NEWS2_AMBER_LOW.get(vital)
        if amber is not None:
            low = amber if low is None else max(low, amber)
        margin = max(spec.noise, 1e-6)
        if low is not None:
            value = max(value, low + margin)
        if high is not None:
            value = min(value, high - margin)
        return value

    def step(self) -> None:
        gauss = self.rng.gauss
        for vital, spec in self.specs.items():
            self.wander[vital] = self.wander[vital] * self.keep + gauss(0.0, spec.drift * self.kick)

    def true_values(self, t: float, episodes: list[Placed]) -> dict[str, float]:
        """Every vital's noise-free value at scenario time `t`."""
        true = self.backgrounds()
        for e in episodes:
            if not e.covers(t):
                continue
            moved = episode_value(t, true[e.vital], e)
            if e.vital == "bp_sys":
                # Diastolic falls with systolic, by about half as much.
                true["bp_dia"] += 0.5 * (moved - true["bp_sys"])
            if e.correlated:
                lost = max(0.0, true[e.vital] - moved)
                for vital, rise in CORRELATED_RISE.items():
                    true[vital] += rise * lost
            true[e.vital] = moved
        return true


def episode_value(t: float, background: float, e: Placed) -> float:
    """Noise-free value during an episode: a trapezoid beyond the limit, ramps either side.

    ``beyond`` is how far past the limit the vital is (negative: inside the
    band). It rises at the onset's slope, holds at the target and falls back
    at the same slope, and never sits closer to normal than the background.
    """
    depth = abs(e.target - e.limit)
    inside = e.direction * (background - e.limit)  # negative
    end = e.start + e.duration
    if e.onset <= 0:
        beyond = depth if e.start <= t <= end else -math.inf
    else:
        slope = -inside / e.onset
        beyond = min(slope * (t - e.start), slope * (end - t), depth)
    return e.limit + e.direction * max(beyond, inside)
