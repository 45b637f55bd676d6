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
from healthsync.evaluation.physiology import CORRELATED_RISE, Patient
from healthsync.evaluation.placement import Band, Placed, Plan, place_artefacts, place_episodes
from healthsync.evaluation.scenario import EPISODE_VITAL, Scenario, ScenarioError

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
# Monitors do not show a diastolic this close to the systolic.
_MIN_PULSE_PRESSURE: Final = 15.0


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


_CRITICAL: Final = {t.vital: (t.critical_low, t.critical_high) for t in DEFAULT_THRESHOLDS}


def _beyond_critical(e: Placed) -> bool:
    low, high = _CRITICAL.get(e.vital, (None, None))
    if e.direction < 0:
        return low is not None and e.target < low
    return high is not None and e.target > high


def _related(e: Placed) -> tuple[str, ...]:
    """The vitals that move with the episode's own."""
    if e.vital == "bp_sys":
        return ("bp_dia",)
    return tuple(CORRELATED_RISE) if e.correlated else ()


@dataclass(frozen=True, slots=True)
class _Devices:
    """One patient's devices: the monitor's interval and phase, a cuff, signal quality."""

    index: int
    interval: float
    phase: float
    sqi: bool

    @property
    def monitor_id(self) -> str:
        return _device_id(self.index)

    @property
    def cuff_id(self) -> str:
        return f"eval-cuff-{self.index + 1:04d}"


def _devices(scenario: Scenario, index: int, rng: random.Random) -> _Devices:
    # Draw only what the scenario uses, so older scenario files keep their readings.
    interval = rng.choice(scenario.intervals) if scenario.intervals else scenario.interval_s
    phase = rng.uniform(0.0, interval)
    sqi = scenario.sqi_share > 0 and rng.random() < scenario.sqi_share
    return _Devices(index, interval, phase, sqi)


def generate(scenario: Scenario, bands: Mapping[str, Band] | None = None) -> Dataset:
    """Readings of every patient, merged in arrival order, and the episodes they contain."""
    bands = warning_bands() if bands is None else bands
    _check_bands(scenario, bands)
    master = random.Random(scenario.seed)
    plans = [Plan() for _ in range(scenario.patients)]
    place_episodes(scenario, bands, master, plans)
    place_artefacts(scenario, master, plans)
    readings: list[Reading] = []
    episodes: list[LabelledEpisode] = []
    artefacts: list[Artefact] = []
    for index, plan in enumerate(plans):
        rng = random.Random(master.getrandbits(64))
        devices = _devices(scenario, index, rng)
        readings.extend(_Emitter(scenario, bands, plan, devices, rng).run())
        episodes.extend(_labels(_patient_id(index), plan))
        artefacts.extend(_artefact_labels(_patient_id(index), plan, devices.interval))
    readings.sort(key=lambda r: (r.received_at, r.patient_id, r.ts))
    episodes.sort(key=lambda e: (e.start, e.patient_id))
    artefacts.sort(key=lambda a: (a.start, a.patient_id))
    return Dataset(scenario, readings, episodes, artefacts)


def _labels(patient_id: str, plan: Plan) -> list[LabelledEpisode]:
    return [
        LabelledEpisode(
            patient_id,
            e.kind,
            e.vital,
            EPOCH + e.start - e.onset,
            EPOCH + e.start,
            EPOCH + e.start + e.duration,
            e.target,
            related=_related(e),
            critical=_beyond_critical(e),
        )
        for e in plan.episodes
    ]


def _artefact_labels(patient_id: str, plan: Plan, interval: float) -> list[Artefact]:
    found = [
        Artefact(
            patient_id,
            "spike",
            spike.vital,
            EPOCH + spike.start,
            EPOCH + spike.start + len(spike.values) * interval,
        )
        for spike in plan.spikes
    ]
    found += [
        Artefact(patient_id, "dropout", None, EPOCH + start, EPOCH + end)
        for start, end in plan.dropouts
    ]
    return found


_CUFF_VITALS: Final = ("bp_sys", "bp_dia")


class _Emitter:
    """One patient's readings: the monitor's samples (and the cuff's), as they arrive."""

    def __init__(
        self,
        scenario: Scenario,
        bands: Mapping[str, Band],
        plan: Plan,
        devices: _Devices,
        rng: random.Random,
    ) -> None:
        self.scenario, self.plan, self.devices, self.rng = scenario, plan, devices, rng
        self.patient = Patient(scenario, bands, rng, devices.interval)
        self.patient_id = _patient_id(devices.index)
        # A spike replaces the samples taken from its start on: sample -> vital -> (value, poor).
        self.spiked: dict[int, dict[str, tuple[float, bool]]] = {}
        for spike in plan.spikes:
            first = math.ceil((spike.start - devices.phase) / devices.interval)
            for k, value in enumerate(spike.values):
                self.spiked.setdefault(first + k, {})[spike.vital] = (value, spike.low_quality[k])
        self.out: list[Reading] = []

    def run(self) -> list[Reading]:
        scenario, devices = self.scenario, self.devices
        cuff = scenario.bp_cuff_s
        next_cuff = devices.phase if cuff is not None else math.inf
        seq = 0
        while (t := devices.phase + seq * devices.interval) < scenario.duration_s:
            self.patient.step()
            true = self.patient.true_values(t, self.plan.episodes)
            measured = {
                v: x + self.rng.gauss(0.0, self.patient.specs[v].noise) for v, x in true.items()
            }
            spiked = self.spiked.get(seq, {})
            poor = any(p for _, p in spiked.values())
            measured.update({v: x for v, (x, _) in spiked.items()})
            vitals = {vital: _round(vital, value) for vital, value in measured.items()}
            vitals["bp_dia"] = min(vitals["bp_dia"], vitals["bp_sys"] - _MIN_PULSE_PRESSURE)
            if t >= next_cuff:
                self._send(devices.cuff_id, seq, next_cuff, {v: vitals[v] for v in _CUFF_VITALS})
                next_cuff += cuff or math.inf
            if cuff is not None:
                vitals = {v: x for v, x in vitals.items() if v not in _CUFF_VITALS}
            quality = {"sqi": self._sqi(poor)} if devices.sqi else {}
            self._send(devices.monitor_id, seq, t, vitals, quality)
            seq += 1
        return self.out

    def _sqi(self, poor: bool) -> float:
        return round(self.rng.uniform(0.05, 0.4) if poor else self.rng.uniform(0.7, 1.0), 2)

    def _send(
        self,
        device_id: str,
        seq: int,
        t: float,
        vitals: dict[str, float],
        quality: dict[str, float] | None = None,
    ) -> None:
        if any(start <= t < end for start, end in self.plan.dropouts):
            return
        scenario = self.scenario
        jitter = 0.0
        if scenario.jitter_s > 0:
            bound = self.devices.interval / 3
            jitter = max(-bound, min(bound, self.rng.gauss(0.0, scenario.jitter_s)))
        ts = EPOCH + t + jitter
        delay = 0.0
        if scenario.arrival_delay_s[1] > 0:
            delay = self.rng.uniform(*scenario.arrival_delay_s)
        self.out.append(
            Reading(
                reading_id=reading_id_for(device_id, seq, int(ts * 1000)),
                device_id=device_id,
                patient_id=self.patient_id,
                ts=ts,
                received_at=ts + delay,
                vitals=vitals,
                seq=seq,
                on_oxygen=False,
                consciousness="A",
                quality=quality or {},
            )
        )
