"""Scenario files: what a labelled evaluation run simulates, as data.

A scenario is a TOML file (see the repository's ``scenarios/``): a seed, a
cohort (patient count, baseline distribution of each vital), how long and how
often the monitors report, and templates for the clinical episodes and
artefacts to place in it. The files are validated here with pydantic; a bad
file raises :class:`ScenarioError` naming the file and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from healthsync.errors import HealthSyncError

__all__ = [
    "ALL_VITALS",
    "EPISODE_VITAL",
    "ArtefactSpec",
    "DropoutSpec",
    "EpisodeKind",
    "EpisodeSpec",
    "Scenario",
    "ScenarioError",
    "SpikeSpec",
    "Targets",
    "VitalSpec",
    "default_scenario_dir",
    "load_scenario",
    "scenario_paths",
]

EpisodeKind = Literal[
    "hypoxaemia", "tachycardia", "bradycardia", "fever", "hypotension", "bradypnoea"
]

# The vital each kind of deterioration moves, and which way: the episode is
# labelled for the time that vital's noise-free value is beyond its warning limit.
EPISODE_VITAL: dict[str, tuple[str, Literal["low", "high"]]] = {
    "hypoxaemia": ("spo2", "low"),
    "tachycardia": ("heart_rate", "high"),
    "bradycardia": ("heart_rate", "low"),
    "fever": ("temp", "high"),
    "hypotension": ("bp_sys", "low"),
    "bradypnoea": ("resp_rate", "low"),
}

VitalName = Literal["heart_rate", "spo2", "temp", "resp_rate", "bp_sys", "bp_dia"]
ALL_VITALS: tuple[VitalName, ...] = ("heart_rate", "spo2", "temp", "resp_rate", "bp_sys", "bp_dia")


class ScenarioError(HealthSyncError):
    """A scenario file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    # A misspelt key is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


def _check_range(name: str, value: Range) -> None:
    low, high = value
    if low > high:
        raise ValueError(f"{name} range [{low:g}, {high:g}] is reversed")


class VitalSpec(_Strict):
    """One vital across the cohort: where patients sit and how their readings move.

    Each patient's baseline is drawn from N(mean, sd) clipped to [min, max];
    the true value wanders around it (``drift``: standard deviation of a slow
    Ornstein-Uhlenbeck walk with a 10-minute time constant) and each sample adds
    measurement noise (``noise``: standard deviation per sample).
    """

    mean: float
    sd: float = Field(ge=0)
    min: float
    max: float
    drift: float = Field(ge=0)
    noise: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> VitalSpec:
        _check_range("baseline min/max", (self.min, self.max))
        return self


class EpisodeSpec(_Strict):
    """A template for ``count`` deteriorations of one kind, placed at random.

    ``duration_s`` is how long the vital is beyond its warning limit (the
    labelled episode); ``onset_s`` how long it takes to move from the patient's
    baseline to the limit before that (0: abrupt); ``target`` the worst value it
    reaches. Each is a [low, high] range drawn uniformly per episode.
    """

    kind: EpisodeKind
    count: int = Field(ge=1)
    duration_s: Range
    onset_s: Range = (0.0, 0.0)
    target: Range
    # Hypoxaemia only: the heart and respiratory rates rise with the fall in SpO2
    # (by CORRELATED_RISE per point), as in a real respiratory deterioration.
    correlated: bool = False

    @model_validator(mode="after")
    def _ranges(self) -> EpisodeSpec:
        for name in ("duration_s", "onset_s", "target"):
            _check_range(name, getattr(self, name))
        if self.duration_s[0] <= 0 or self.onset_s[0] < 0:
            raise ValueError("duration_s must be positive and onset_s not negative")
        if self.correlated and self.kind != "hypoxaemia":
            raise ValueError("only hypoxaemia can be correlated")
        return self


class SpikeSpec(_Strict):
    """Artefact: ``samples`` consecutive readings of ``vital`` replaced by ``value``.

    A probe moving on a finger (SpO2 dips), ECG leads disturbed (heart-rate
    spikes): the patient is fine, one to three samples are not. Spikes fall
    anywhere, also during and next to episodes (not on the episode's own vital
    while it is labelled). On a monitor that reports signal quality, the share
    ``low_quality`` of spiked samples carries a poor ``sqi``.
    """

    kind: Literal["spike"]
    vital: VitalName
    per_patient_hour: float = Field(gt=0)
    value: Range
    samples: tuple[int, int] = (1, 1)
    low_quality: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> SpikeSpec:
        _check_range("value", self.value)
        _check_range("samples", (self.samples[0], self.samples[1]))
        if self.samples[0] < 1:
            raise ValueError("samples must be at least 1")
        return self


class DropoutSpec(_Strict):
    """Artefact: the monitor sends nothing for ``duration_s`` (cable off, Wi-Fi gap).

    Dropouts may come next to an episode, but never over its labelled interval:
    an episode nobody could see is not a measure of the engine.
    """

    kind: Literal["dropout"]
    per_patient_hour: float = Field(gt=0)
    duration_s: Range

    @model_validator(mode="after")
    def _ranges(self) -> DropoutSpec:
        _check_range("duration_s", self.duration_s)
        if self.duration_s[0] <= 0:
            raise ValueError("duration_s must be positive")
        return self


ArtefactSpec = Annotated[SpikeSpec | DropoutSpec, Field(discriminator="kind")]


class Targets(_Strict):
    """What the engine must achieve on this scenario for ``healthsync eval --check``."""

    # Share of episodes lasting `long_episode_s` or more that must be detected.
    min_sensitivity_long: float = Field(default=1.0, ge=0, le=1)
    long_episode_s: float = Field(default=60.0, gt=0)
    max_median_delay_s: float | None = Field(default=15.0, ge=0)
    # False where the devices' own intervals put the delay out of reach (TOML has no null).
    check_median_delay: bool = True
    max_false_per_patient_hour: float | None = Field(default=1.0, ge=0)
    # Fewer false alerts than the bedside monitor (none is enough if it has none).
    fewer_false_than_monitor: bool = True
    # Every episode beyond a critical limit that the monitor caught, caught no later.
    critical_not_slower_than_monitor: bool = True
    # 1 - engine alerts / naive alerts; only meaningful where artefacts abound.
    min_alert_reduction: float | None = Field(default=None, le=1)


class Scenario(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int
    patients: int = Field(ge=1, le=10_000)
    duration_s: float = Field(gt=0, le=7 * 24 * 3600)
    interval_s: float = Field(gt=0, le=3600)
    # Monitors of several kinds: each patient's monitor interval is drawn from these
    # (empty: every monitor sends every interval_s).
    intervals: list[float] = Field(default_factory=list)
    # Timing jitter of each sample (standard deviation, seconds, within a third of the
    # interval), and the network delay each reading takes to arrive (uniform range):
    # a spread wider than the interval delivers readings out of order.
    jitter_s: float = Field(default=0.0, ge=0)
    arrival_delay_s: Range = (0.0, 0.0)
    # Blood pressure from a cuff every this many seconds (its own device), not the monitor.
    bp_cuff_s: float | None = Field(default=None, gt=0)
    # Share of monitors that report a signal-quality index (sqi) with each reading.
    sqi_share: float = Field(default=0.0, ge=0, le=1)
    # Seconds after an episode ends in which an alert still counts as detecting it.
    grace_s: float = Field(default=30.0, ge=0)
    # The bedside-monitor baseline's alarm delay.
    monitor_delay_s: float = Field(default=15.0, ge=0)
    vitals: dict[str, VitalSpec]
    episodes: list[EpisodeSpec] = []
    artefacts: list[ArtefactSpec] = []
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _all_vitals(self) -> Scenario:
        missing = sorted(set(ALL_VITALS) - set(self.vitals))
        unknown = sorted(set(self.vitals) - set(ALL_VITALS))
        if missing or unknown:
            raise ValueError(
                f"vitals: need exactly {', '.join(ALL_VITALS)}"
                f"{'; missing ' + ', '.join(missing) if missing else ''}"
                f"{'; unknown ' + ', '.join(unknown) if unknown else ''}"
            )
        if self.interval_s > self.duration_s:
            raise ValueError("interval_s is longer than duration_s")
        if any(not 0 < i <= 3600 for i in self.intervals):
            raise ValueError("intervals must be in (0, 3600] seconds")
        _check_range("arrival_delay_s", self.arrival_delay_s)
        if self.arrival_delay_s[0] < 0:
            raise ValueError("arrival_delay_s must not be negative")
        return self


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario file; :class:`ScenarioError` says what is wrong where."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from exc
    doc.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(file)"
            problems.append(f"{where}: {error['msg']}")
        raise ScenarioError(f"{path}: invalid scenario: " + "; ".join(problems)) from exc


def default_scenario_dir() -> Path | None:
    """The repository's ``scenarios/`` (next to ``src/``), else ``./scenarios``."""
    for candidate in (Path(__file__).resolve().parents[3] / "scenarios", Path("scenarios")):
        if candidate.is_dir():
            return candidate
    return None


def scenario_paths(paths: list[Path] | None) -> list[Path]:
    """The files to run: those given (a directory means its ``*.toml``), else the default's."""
    if not paths:
        directory = default_scenario_dir()
        if directory is None:
            raise ScenarioError("no scenarios/ directory found: pass --scenario PATH")
        paths = [directory]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            files = sorted(path.glob("*.toml"))
            if not files:
                raise ScenarioError(f"{path}: no *.toml scenario files in this directory")
            found.extend(files)
        else:
            found.append(path)
    return found
