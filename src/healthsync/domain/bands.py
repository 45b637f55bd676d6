"""Threshold limits per vital: the adult defaults, one patient's overrides, and their merge.

Where the defaults come from is in :mod:`healthsync.domain.rules` (its notes on
threshold bands). An override is validated alone (its own limits in order) and
merged with the defaults (the patient's whole band in order), so a value can
never be critical and "back inside" at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from healthsync.domain.readings import VITALS

# A limit is a finite number: NaN passes every ordering check (it compares false), and
# either would be stored as null, which means the default.
Limit = Annotated[float, Field(allow_inf_nan=False)]


class BandOverride(BaseModel):
    """One vital's limits for one patient; absent limits keep the default."""

    model_config = {"extra": "forbid", "frozen": True}

    low: Limit | None = None
    high: Limit | None = None
    critical_low: Limit | None = None
    critical_high: Limit | None = None

    @model_validator(mode="after")
    def _ordered(self) -> BandOverride:
        lows = [v for v in (self.critical_low, self.low) if v is not None]
        highs = [v for v in (self.high, self.critical_high) if v is not None]
        if lows != sorted(lows) or highs != sorted(highs):
            raise ValueError("limits must satisfy critical_low <= low and high <= critical_high")
        if lows and highs and max(lows) >= min(highs):
            raise ValueError("low limits must be below the high limits")
        return self


# Adult bands per vital: (low, high, critical_low, critical_high). The warning band is
# where NEWS2 (RCP 2017) scores the parameter 2-3 points (SpO2 <= 91 is 3 points on
# Scale 1, HR <= 40 or >= 131 is 3, ...); the critical limits are well past the
# 3-point band, where waiting is unsafe. ``alerts.DEFAULT_THRESHOLDS`` is built from it.
Limits = tuple[float | None, float | None, float | None, float | None]
DEFAULT_LIMITS: dict[str, Limits] = {
    "spo2": (90, None, 85, None),
    "heart_rate": (45, 120, 40, 140),
    "temp": (35.0, 38.5, 34.0, 39.5),
    "resp_rate": (9, 24, 6, 30),
    "bp_sys": (90, 200, 80, 220),
    "bp_dia": (40, 120, 30, 130),
}
_LIMIT_NAMES = ("low", "high", "critical_low", "critical_high")


class PatientRules(BaseModel):
    """What differs for one patient: limits per vital, and the NEWS2 SpO2 scale.

    ``spo2_scale = 2`` is for patients with hypercapnic respiratory failure
    whose prescribed SpO2 target is 88-92% (RCP NEWS2 Scale 2): NEWS2 scores
    SpO2 on that scale, and the SpO2 alert band becomes ``spo2_target``.
    """

    model_config = {"extra": "forbid", "frozen": True}

    spo2_scale: Literal[1, 2] = 1
    spo2_target: tuple[float, float] = (88.0, 92.0)
    bands: dict[str, BandOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_vitals(self) -> PatientRules:
        unknown = sorted(set(self.bands) - set(VITALS))
        if unknown:
            raise ValueError(f"unknown vital(s) {unknown}; expected some of {sorted(VITALS)}")
        low, high = self.spo2_target
        if not 50 <= low < high <= 100:
            raise ValueError("spo2_target must be (low, high) with 50 <= low < high <= 100")
        # An override is only half the band: the merged limits must be in order too,
        # or a value can be critical and "back inside" at once.
        for vital, limits in merged_limits(self).items():
            problem = _disorder(limits)
            if problem:
                raise ValueError(f"{vital}: with the defaults merged in, {problem}")
        return self


def merged_limits(rules: PatientRules | None) -> dict[str, Limits]:
    """The limits for one patient: the defaults with the patient's overrides applied."""
    merged = dict(DEFAULT_LIMITS)
    if rules is None:
        return merged
    if rules.spo2_scale == 2:
        low = rules.spo2_target[0]
        # Scale 2: below the prescribed target is the concern; NEWS2 scores the high side.
        merged["spo2"] = (low, None, min(low - 4, 85), None)
    for vital, override in rules.bands.items():
        current = merged.get(vital, (None, None, None, None))
        named = (override.low, override.high, override.critical_low, override.critical_high)
        merged[vital] = tuple(  # type: ignore[assignment]
            new if new is not None else old for new, old in zip(named, current, strict=True)
        )
    return merged


def _disorder(limits: Limits) -> str:
    """Why the limits are not critical_low <= low < high <= critical_high, or ''."""
    named = dict(zip(_LIMIT_NAMES, limits, strict=True))
    for lower, upper, strict in (
        ("critical_low", "low", False),
        ("low", "high", True),
        ("high", "critical_high", False),
        ("critical_low", "critical_high", True),
        ("low", "critical_high", True),
        ("critical_low", "high", True),
    ):
        a, b = named[lower], named[upper]
        if a is not None and b is not None and (a >= b if strict else a > b):
            return f"{lower} {a:g} must be {'below' if strict else 'at most'} {upper} {b:g}"
    return ""
