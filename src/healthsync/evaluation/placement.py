"""Where a scenario's episodes and artefacts go: per patient, by the scenario's seed.

Episodes keep a quiet gap between each other, so each is scored on its own.
Artefacts do not keep away from episodes (a probe slips during a desaturation
as often as at any other time), except that a spike never replaces the
episode's own vital while it is labelled, and a dropout never hides a labelled
interval: either would change what the label says.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from healthsync.evaluation.scenario import (
    EPISODE_VITAL,
    DropoutSpec,
    EpisodeSpec,
    Scenario,
    ScenarioError,
    SpikeSpec,
)

Band = tuple[float | None, float | None]

# No episode starts (reaches its limit) before this: rules that learn a
# patient's baseline get some history, as on a ward after admission.
_WARMUP_S: Final = 300.0
# Quiet time kept between two episodes of one patient.
_EPISODE_GAP_S: Final = 120.0
_PLACEMENT_TRIES: Final = 200


def draw(rng: random.Random, bounds: tuple[float, float]) -> float:
    return rng.uniform(*bounds)


def overlaps(start: float, end: float, busy: list[tuple[float, float]]) -> bool:
    return any(start < b_end and b_start < end for b_start, b_end in busy)


@dataclass(frozen=True, slots=True)
class Placed:
    """An episode as placed: scenario seconds, the vital's limit and which way it goes."""

    kind: str
    vital: str
    direction: int  # -1: falls below the low limit, +1: rises above the high one
    limit: float
    start: float
    duration: float
    onset: float
    target: float
    correlated: bool = False

    def covers(self, t: float) -> bool:
        return self.start - self.onset <= t <= self.start + self.duration + self.onset

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True, slots=True)
class Spike:
    vital: str
    start: float
    values: list[float]
    low_quality: list[bool]


@dataclass(slots=True)
class Plan:
    """One patient's episodes (with the interval each keeps clear) and artefacts."""

    episodes: list[Placed] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)
    spikes: list[Spike] = field(default_factory=list)
    dropouts: list[tuple[float, float]] = field(default_factory=list)

    def labelled(self, vital: str | None = None) -> list[tuple[float, float]]:
        """The labelled intervals of this patient's episodes (of one vital, if given)."""
        return [(e.start, e.end) for e in self.episodes if vital is None or e.vital == vital]


def place_episodes(
    scenario: Scenario, bands: Mapping[str, Band], rng: random.Random, plans: list[Plan]
) -> None:
    for n, spec in enumerate(scenario.episodes):
        vital, way = EPISODE_VITAL[spec.kind]
        limit = bands[vital][0 if way == "low" else 1]
        if limit is None:
            raise ScenarioError(f"{scenario.name}: episodes.{n}: {vital} has no {way} limit")
        for _ in range(spec.count):
            if not any(
                _try_place(scenario, spec, limit, rng, plans) for _ in range(_PLACEMENT_TRIES)
            ):
                raise ScenarioError(
                    f"{scenario.name}: episodes.{n}: cannot place {spec.count} {spec.kind} "
                    f"episodes in {scenario.patients} patients x {scenario.duration_s:g} s; "
                    "add patients or time, or shorten them"
                )


def _try_place(
    scenario: Scenario, spec: EpisodeSpec, limit: float, rng: random.Random, plans: list[Plan]
) -> bool:
    vital, way = EPISODE_VITAL[spec.kind]
    duration = draw(rng, spec.duration_s)
    onset = draw(rng, spec.onset_s)
    target = draw(rng, spec.target)
    # Recovery mirrors the onset, then the grace period must fit too.
    latest = scenario.duration_s - duration - onset - scenario.grace_s
    earliest = max(_WARMUP_S, onset)
    if latest <= earliest:
        return False
    start = rng.uniform(earliest, latest)
    plan = plans[rng.randrange(scenario.patients)]
    clear = (
        start - onset - _EPISODE_GAP_S,
        start + duration + onset + scenario.grace_s + _EPISODE_GAP_S,
    )
    if overlaps(*clear, plan.busy):
        return False
    plan.busy.append(clear)
    direction = -1 if way == "low" else 1
    plan.episodes.append(
        Placed(spec.kind, vital, direction, limit, start, duration, onset, target, spec.correlated)
    )
    return True


def place_artefacts(scenario: Scenario, rng: random.Random, plans: list[Plan]) -> None:
    """Poisson arrivals per patient; one that would change a label is dropped."""
    for spec in scenario.artefacts:
        rate = spec.per_patient_hour / 3600.0
        for plan in plans:
            t = rng.expovariate(rate)
            while t < scenario.duration_s:
                if isinstance(spec, SpikeSpec):
                    _spike(scenario, spec, rng, plan, t)
                elif isinstance(spec, DropoutSpec):
                    end = t + draw(rng, spec.duration_s)
                    if not overlaps(t, end, plan.labelled()):
                        plan.dropouts.append((t, end))
                t += rng.expovariate(rate)


def _spike(scenario: Scenario, spec: SpikeSpec, rng: random.Random, plan: Plan, t: float) -> None:
    count = rng.randint(*spec.samples)
    values = [draw(rng, spec.value) for _ in range(count)]
    poor = [rng.random() < spec.low_quality for _ in range(count)]
    # Long enough for the slowest monitor's samples it replaces.
    longest = max([scenario.interval_s, *scenario.intervals])
    if not overlaps(t, t + count * longest, plan.labelled(spec.vital)):
        plan.spikes.append(Spike(spec.vital, t, values, poor))
