"""The engine's default rule tables: trend and baseline rules, and per-vital amounts for
artefact screening and hysteresis. Where each number comes from: :mod:`.rules`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrendRule(BaseModel):
    """A change of `delta` or more within `window_s`, in the given direction."""

    model_config = {"extra": "forbid", "frozen": True}

    name: str
    vital: str
    direction: Literal["rise", "fall"]
    delta: float = Field(gt=0)
    window_s: float = Field(gt=0)


class BaselineRule(BaseModel):
    """A patient's own baseline: a value `sigmas` standard deviations and at least
    `min_delta` away from the slowly learnt mean, once `min_samples` were seen."""

    model_config = {"extra": "forbid", "frozen": True}

    vital: str
    min_delta: float = Field(gt=0)
    sigmas: float = Field(4.0, gt=0)


DEFAULT_TRENDS: tuple[TrendRule, ...] = (
    TrendRule(name="spo2_fall", vital="spo2", direction="fall", delta=4, window_s=300),
    TrendRule(name="heart_rate_rise", vital="heart_rate", direction="rise", delta=30, window_s=600),
    TrendRule(name="resp_rate_rise", vital="resp_rate", direction="rise", delta=8, window_s=600),
)

DEFAULT_BASELINES: tuple[BaselineRule, ...] = (
    BaselineRule(vital="heart_rate", min_delta=25),
    BaselineRule(vital="resp_rate", min_delta=8),
    BaselineRule(vital="bp_sys", min_delta=30),
)

# How far a vital can really move between two of a monitor's samples seconds apart: a
# sample this far from the last kept one (however long ago) and from the vital's level is
# held until the samples after it decide.
DEFAULT_MAX_JUMP: dict[str, float] = {
    "spo2": 6,
    "heart_rate": 40,
    "resp_rate": 12,
    "temp": 1.5,
    "bp_sys": 50,
    "bp_dia": 35,
}

# How far apart the samples of a held run may lie and still read as a new level (a
# changed rhythm, pressure or saturation reads alike; artefacts scatter): half of what
# each vital may jump; for SpO2 the 4 points over which a steady saturation reads on an
# oximeter accurate to about +-2 (half its max_jump, 3, set real desaturations aside).
DEFAULT_STEADY_SPREAD: dict[str, float] = {
    "spo2": 4,
    "heart_rate": 20,
    "resp_rate": 6,
    "temp": 0.75,
    "bp_sys": 25,
    "bp_dia": 17.5,
}

# How far apart the samples of a held run may lie and still stand after the artefact hold
# (half the steady spread): a heart rhythm or breathing pattern that has changed reads alike
# on a monitor's averaged samples. Not for pressures (systolic swings with each breath) or
# saturation (an oximeter's +-2 already fills its steady spread).
DEFAULT_LEVEL_SPREAD: dict[str, float] = {"heart_rate": 10, "resp_rate": 3}

# A pending warning whose samples agree within the vital's level spread holds this long
# instead of the persistence: a heart rate is averaged over beats already, and the lead
# artefacts that scatter it are jumps, held before any rule sees them. Not the respiratory
# rate: talking moves it by less than a jump, two samples alike as often as not.
DEFAULT_STEADY_PERSIST: dict[str, float] = {"heart_rate": 5.0}

# The same below the band only, and only for a patient whose trusted baseline lies
# moved_baseline_margins inside the low limit: a breathing rate that has fallen from the
# patient's own reads alike on a monitor's breath-averaged samples, and talking, the
# artefact that makes two samples alike, raises the rate. A patient who breathes near the
# limit crosses it by noise, and waits as before.
DEFAULT_STEADY_FALL_PERSIST: dict[str, float] = {"resp_rate": 5.0}

# A marginal warning (within the margin of the limit) on a vital named here is noise
# around a patient sitting near the limit only while the patient's trusted baseline lies
# within this many margins of it; beyond, the patient has moved and the usual persistence
# holds. The heart and respiratory rates: a monitor averages them over beats and breaths.
# The systolic only from 5 margins (25 mmHg: a baseline of 115 or more against the 90
# limit): it swings with each breath, and a patient's pressure wanders far from a
# baseline learnt over 30 min (at 3 margins, patients learnt above 105 who had drifted to
# 95 raised false alerts).
DEFAULT_MOVED_BASELINE_MARGINS: dict[str, float] = {
    "heart_rate": 3.0,
    "resp_rate": 3.0,
    "bp_sys": 5.0,
}

# A jump up of a vital named here is held this long (a monitor's alarm delay), not the
# artefact hold: talking raises the breathing rate for a sentence or two, and three
# samples of it (31, 33, 34/min over 9.4 s) outlasted the 10 s hold with its jitter slack.
DEFAULT_RISE_HOLD: dict[str, float] = {"resp_rate": 15.0}

# Hysteresis: how far back inside the band a value must be before an alert may resolve.
DEFAULT_MARGIN: dict[str, float] = {
    "spo2": 2,
    "heart_rate": 5,
    "resp_rate": 2,
    "temp": 0.3,
    "bp_sys": 5,
    "bp_dia": 5,
}
