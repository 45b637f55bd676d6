"""One simulated patient's vitals, and the bedside monitor that sends them.

Each device carries a :class:`PatientModel` that produces plausible vitals for
one patient: a personal baseline, slow drift that keeps returning towards it,
and now and then a clinical episode (hypoxaemia, tachycardia, fever) that ramps
in, holds and recovers, so the anomaly engine downstream has something real to
find.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from healthsync.domain.readings import VITALS
from healthsync.simulate.errors import SimulationError
from healthsync.wire import format_line

EpisodeKind = Literal["hypoxaemia", "tachycardia", "fever"]
EPISODE_KINDS: Final[tuple[EpisodeKind, ...]] = ("hypoxaemia", "tachycardia", "fever")

# Chance per reading that a patient who is not in an episode starts one. At one
# reading a second that is one episode per patient every ~8 minutes: often
# enough that a demo with a few dozen devices shows alerts within a minute.
DEFAULT_EPISODE_PROBABILITY: Final = 0.002


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
