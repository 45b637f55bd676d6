"""Labelled readings for a scenario, generated in virtual time.

Why not :class:`healthsync.simulate.PatientModel`: its episodes start at random
readings, come in three kinds and last a random number of readings, and its
baseline distribution is fixed, so it cannot give episodes of a known start and
duration or the cohorts the scenario files describe. This generator keeps the
same idea (a personal baseline, a slow mean-reverting wander, per-sample noise)
but every episode and artefact is placed by the scenario's seed, and its label
is exact.

A label is the interval in which the episode's vital is, noise aside, beyond
its warning limit (the same bands the naive baseline and the engine's
threshold rules use). Outside episodes the noise-free value is kept inside the
band, so an out-of-band sample there is noise or an artefact, never an
unlabelled deterioration.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from healthsync.domain.alerts import DEFAULT_THRESHOLDS, Threshold
from healthsync.domain.readings import VITALS, Reading, reading_id_for
from healthsync.evaluation.scenario import (
    ALL_VITALS,
    EPISODE_VITAL,
    DropoutSpec,
    Scenario,
    ScenarioError,
    SpikeSpec,
)

__all__ = [
    "EPOCH",
    "Artefact",
    "Band",
    "Dataset",
    "LabelledEpisode",
    "generate",
    "warning_bands",
]

# Virtual time starts here (2026-01-01T00:00:00Z); nothing ever sleeps.
EPOCH: Final = 1_767_225_600.0
# Time constant of the slow wander of each vital around the patient's baseline.
_DRIFT_TAU_S: Final = 600.0
# No episode starts (reaches its limit) before this: rules that learn a
# patient's baseline get some history, as on a ward after admission.
_WARMUP_S: Final = 300.0
# Quiet time kept between two episodes of one patient, and around artefacts.
_EPISODE_GAP_S: Final = 120.0
_PLACEMENT_TRIES: Final = 200
# Monitors do not show a diastolic this close to the systolic.
_MIN_PULSE_PRESSURE: Final = 15.0

Band = tuple[float | None, float | None]


def warning_bands(thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS) -> dict[str, Band]:
    """Vital -> (low, high) warning limits: a value beyond one is an alarm for a threshold rule."""
    return {t.vital: (t.low, t.high) for t in thresholds}


@dataclass(frozen=True, slots=True)
class LabelledEpisode:
    """A true deterioration: the vital is beyond its limit from ``start`` to ``end``.

    ``onset_at`` is when it began to move from the patient's baseline
    (``== start`` for an abrupt episode); an alert between the two is an early
    detection, not a false one.
    """

    patient_id: str
    kind: str
    vital: str
    onset_at: float
    start: float
    end: float
    target: float
    # Vitals that move with it (a hypoxaemia's heart and respiratory rates): an alarm
    # on them during the episode is not false, though only its own vital detects it.
    related: tuple[str, ...] = ()
    # Its worst value is beyond the vital's critical limit.
    critical: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def vitals(self) -> tuple[str, ...]:
        return (self.vital, *self.related)


@dataclass(frozen=True, slots=True)
class Artefact:
    """A spike (samples replaced) or a dropout (nothing sent) from ``start`` to ``end``."""

    patient_id: str
    kind: str
    vital: str | None
    start: float
    end: float


@dataclass
class Dataset:
    """Everything one scenario produced: readings in time order and their labels."""

    scenario: Scenario
    readings: list[Reading]
    episodes: list[LabelledEpisode]
    artefacts: list[Artefact] = field(default_factory=list)

    @property
    def patient_hours(self) -> float:
        return self.scenario.patients * self.scenario.duration_s / 3600.0

    @property
    def patient_ids(self) -> list[str]:
        return [_patient_id(i) for i in range(self.scenario.patients)]


def _patient_id(index: int) -> str:
    return f"EV-{index + 1:04d}"


def _device_id(index: int) -> str:
    return f"eval-mon-{index + 1:04d}"


def _round(vital: str, value: float) -> float:
    spec = VITALS[vital]
    value = min(spec.maximum, max(spec.minimum, value))
    return round(value, spec.decimals) if spec.decimals else float(round(value))


def _check_bands(scenario: Scenario, bands: Mapping[str, Band]) -> None:
    """Baselines must lie inside the warning bands, episode targets beyond them."""
    for vital, spec in scenario.vitals.items():
        low, high = bands.get(vital, (None, None))
        if (low is not None and spec.min <= low) or (high is not None and spec.max >= high):
            raise ScenarioError(
                f"{scenario.name}: vitals.{vital}: baseline range {spec.min:g}..{spec.max:g} "
                f"must lie inside the warning band {_band_text(low, high)}"
            )
    for n, episode in enumerate(scenario.episodes):
        vital, direction = EPISODE_VITAL[episode.kind]
        limit = bands.get(vital, (None, None))[0 if direction == "low" else 1]
        worst = episode.target[1] if direction == "low" else episode.target[0]
        if limit is None or (worst >= limit if direction == "low" else worst <= limit):
            raise ScenarioError(
                f"{scenario.name}: episodes.{n}.target: {episode.kind} must take {vital} "
                f"{'below' if direction == 'low' else 'above'} its warning limit "
                f"{'none' if limit is None else f'{limit:g}'}"
            )


def _band_text(low: float | None, high: float | None) -> str:
    return f"{'-' if low is None else f'{low:g}'}..{'-' if high is None else f'{high:g}'}"


def _draw(rng: random.Random, bounds: tuple[float, float]) -> float:
    return rng.uniform(*bounds)


def _overlaps(start: float, end: float, busy: list[tuple[float, float]]) -> bool:
    return any(start < b_end and b_start < end for b_start, b_end in busy)


@dataclass(frozen=True, slots=True)
class _Placed:
    """An episode as placed: scenario seconds, the vital's limit and which way it goes."""

    kind: str
    vital: str
    direction: int  # -1: falls below the low limit, +1: rises above the high one
    limit: float
    start: float
    duration: float
    onset: float
    target: float

    def covers(self, t: float) -> bool:
        return self.start - self.onset <= t <= self.start + self.duration + self.onset


@dataclass(slots=True)
class _Plan:
    """One patient's episodes (with the interval each keeps clear) and artefacts."""

    episodes: list[_Placed] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)
    spikes: list[tuple[str, float, list[float]]] = field(default_factory=list)
    dropouts: list[tuple[float, float]] = field(default_factory=list)


def _place_episodes(
    scenario: Scenario, bands: Mapping[str, Band], rng: random.Random, plans: list[_Plan]
) -> None:
    horizon = scenario.duration_s
    for n, spec in enumerate(scenario.episodes):
        vital, way = EPISODE_VITAL[spec.kind]
        limit = bands[vital][0 if way == "low" else 1]
        if limit is None:
            raise ScenarioError(f"{scenario.name}: episodes.{n}: {vital} has no {way} limit")
        for _ in range(spec.count):
            for _try in range(_PLACEMENT_TRIES):
                duration = _draw(rng, spec.duration_s)
                onset = _draw(rng, spec.onset_s)
                target = _draw(rng, spec.target)
                # Recovery mirrors the onset, then the grace period must fit too.
                latest = horizon - duration - onset - scenario.grace_s
                earliest = max(_WARMUP_S, onset)
                if latest <= earliest:
                    continue
                start = rng.uniform(earliest, latest)
                plan = plans[rng.randrange(scenario.patients)]
                clear = (
                    start - onset - _EPISODE_GAP_S,
                    start + duration + onset + scenario.grace_s + _EPISODE_GAP_S,
                )
                if not _overlaps(*clear, plan.busy):
                    plan.busy.append(clear)
                    direction = -1 if way == "low" else 1
                    placed = _Placed(
                        spec.kind, vital, direction, limit, start, duration, onset, target
                    )
                    plan.episodes.append(placed)
                    break
            else:
                raise ScenarioError(
                    f"{scenario.name}: episodes.{n}: cannot place {spec.count} {spec.kind} "
                    f"episodes in {scenario.patients} patients x {horizon:g} s; "
                    "add patients or time, or shorten them"
                )


def _place_artefacts(scenario: Scenario, rng: random.Random, plans: list[_Plan]) -> None:
    """Poisson arrivals per patient; any that would touch an episode is dropped."""
    for spec in scenario.artefacts:
        rate = spec.per_patient_hour / 3600.0
        for plan in plans:
            t = rng.expovariate(rate)
            while t < scenario.duration_s:
                if isinstance(spec, SpikeSpec):
                    count = rng.randint(*spec.samples)
                    values = [_draw(rng, spec.value) for _ in range(count)]
                    end = t + count * scenario.interval_s
                    if not _overlaps(t, end, plan.busy):
                        plan.spikes.append((spec.vital, t, values))
                elif isinstance(spec, DropoutSpec):
                    end = t + _draw(rng, spec.duration_s)
                    if not _overlaps(t, end, plan.busy):
                        plan.dropouts.append((t, end))
                t += rng.expovariate(rate)


class _Patient:
    """Noise-free value of every vital over time, plus the measurement noise."""

    def __init__(self, scenario: Scenario, bands: Mapping[str, Band], rng: random.Random) -> None:
        self.rng = rng
        self.specs = scenario.vitals
        self.bands = bands
        self.baseline = {
            vital: min(spec.max, max(spec.min, rng.gauss(spec.mean, spec.sd)))
            for vital, spec in self.specs.items()
        }
        self.wander = dict.fromkeys(self.specs, 0.0)
        self.keep = math.exp(-scenario.interval_s / _DRIFT_TAU_S)
        self.kick = math.sqrt(1.0 - self.keep**2)

    def background(self, vital: str) -> float:
        """Baseline plus wander, held inside the band by one noise width."""
        spec = self.specs[vital]
        value = self.baseline[vital] + self.wander[vital]
        low, high = self.bands.get(vital, (None, None))
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


def _episode_value(t: float, background: float, e: _Placed) -> float:
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


_CRITICAL: Final = {t.vital: (t.critical_low, t.critical_high) for t in DEFAULT_THRESHOLDS}


def _beyond_critical(e: _Placed) -> bool:
    low, high = _CRITICAL.get(e.vital, (None, None))
    if e.direction < 0:
        return low is not None and e.target < low
    return high is not None and e.target > high


def generate(scenario: Scenario, bands: Mapping[str, Band] | None = None) -> Dataset:
    """Readings of every patient, merged in time order, and the episodes they contain."""
    bands = warning_bands() if bands is None else bands
    _check_bands(scenario, bands)
    master = random.Random(scenario.seed)
    plans = [_Plan() for _ in range(scenario.patients)]
    _place_episodes(scenario, bands, master, plans)
    _place_artefacts(scenario, master, plans)
    readings: list[Reading] = []
    episodes: list[LabelledEpisode] = []
    artefacts: list[Artefact] = []
    for index, plan in enumerate(plans):
        rng = random.Random(master.getrandbits(64))
        phase = rng.uniform(0.0, scenario.interval_s)
        readings.extend(_patient_readings(scenario, bands, index, plan, rng, phase))
        patient_id = _patient_id(index)
        for e in plan.episodes:
            episodes.append(
                LabelledEpisode(
                    patient_id,
                    e.kind,
                    e.vital,
                    EPOCH + e.start - e.onset,
                    EPOCH + e.start,
                    EPOCH + e.start + e.duration,
                    e.target,
                    critical=_beyond_critical(e),
                )
            )
        for vital, start, values in plan.spikes:
            end = start + len(values) * scenario.interval_s
            artefacts.append(Artefact(patient_id, "spike", vital, EPOCH + start, EPOCH + end))
        for start, end in plan.dropouts:
            artefacts.append(Artefact(patient_id, "dropout", None, EPOCH + start, EPOCH + end))
    readings.sort(key=lambda r: (r.ts, r.patient_id))
    episodes.sort(key=lambda e: (e.start, e.patient_id))
    artefacts.sort(key=lambda a: (a.start, a.patient_id))
    return Dataset(scenario, readings, episodes, artefacts)


def _patient_readings(
    scenario: Scenario,
    bands: Mapping[str, Band],
    index: int,
    plan: _Plan,
    rng: random.Random,
    phase: float,
) -> list[Reading]:
    patient = _Patient(scenario, bands, rng)
    device_id, patient_id = _device_id(index), _patient_id(index)
    # A spike replaces the samples taken from its start on: sample time -> vital -> value.
    spiked: dict[int, dict[str, float]] = {}
    for vital, start, values in plan.spikes:
        first = math.ceil((start - phase) / scenario.interval_s)
        for k, value in enumerate(values):
            spiked.setdefault(first + k, {})[vital] = value
    out: list[Reading] = []
    seq = 0
    while True:
        t = phase + seq * scenario.interval_s
        if t >= scenario.duration_s:
            return out
        patient.step()
        true: dict[str, float] = {vital: patient.background(vital) for vital in ALL_VITALS}
        for e in plan.episodes:
            if e.covers(t):
                vital = e.vital
                moved = _episode_value(t, true[vital], e)
                if vital == "bp_sys":
                    # Diastolic falls with systolic, by about half as much.
                    true["bp_dia"] += 0.5 * (moved - true["bp_sys"])
                true[vital] = moved
        measured = {
            vital: value + rng.gauss(0.0, patient.specs[vital].noise)
            for vital, value in true.items()
        }
        measured.update(spiked.get(seq, {}))
        vitals = {vital: _round(vital, value) for vital, value in measured.items()}
        vitals["bp_dia"] = min(vitals["bp_dia"], vitals["bp_sys"] - _MIN_PULSE_PRESSURE)
        if not any(start <= t < end for start, end in plan.dropouts):
            ts = EPOCH + t
            out.append(
                Reading(
                    reading_id=reading_id_for(device_id, seq, int(ts * 1000)),
                    device_id=device_id,
                    patient_id=patient_id,
                    ts=ts,
                    received_at=ts,
                    vitals=vitals,
                    seq=seq,
                    on_oxygen=False,
                    consciousness="A",
                )
            )
        seq += 1
