"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).

Each parameter scores 0-3 from the RCP chart; the aggregate and the risk band
follow the chart's clinical-response thresholds: low 0-4, low-medium when any
single parameter scores 3 (with an aggregate below 5), medium 5-6, high 7+.

A score is only as good as its inputs: each comes from the patient's latest
value within a freshness window, and a parameter with no fresh value is
reported as missing (the score is then marked incomplete), never assumed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from healthsync.domain.readings import Reading

Band = Literal["low", "low-medium", "medium", "high"]
PARAMETERS = ("resp_rate", "spo2", "on_oxygen", "bp_sys", "heart_rate", "consciousness", "temp")


def chart_value(value: float, decimals: int = 0) -> float:
    """`value` at the chart's precision (whole numbers; tenths for temperature), half up.

    The chart's bands leave gaps (SpO2 91 | 92): a device's 91.4 belongs to the band
    it rounds to, not to the band above the gap.
    """
    # Most values are already at the chart's precision (devices send whole numbers, and
    # temperature in tenths): they are their own answer, found without the Decimal
    # arithmetic every reading's score would pay. A whole number shows itself by its
    # remainder (never 0 for inf or nan); for tenths, Python's round is exact, so a value
    # it leaves unchanged reads, as its shortest decimal, with at most one place.
    if decimals == 0:
        if value % 1 == 0:
            return float(value)
    elif math.isfinite(value) and round(value, decimals) == value:
        return float(value)
    step = Decimal(1).scaleb(-decimals)
    return float(Decimal(str(value)).quantize(step, rounding=ROUND_HALF_UP))


def score_resp_rate(rate: float) -> int:
    rate = chart_value(rate)
    if rate <= 8:
        return 3
    if rate <= 11:
        return 1
    if rate <= 20:
        return 0
    if rate <= 24:
        return 2
    return 3


def score_spo2_scale1(spo2: float) -> int:
    spo2 = chart_value(spo2)
    if spo2 <= 91:
        return 3
    if spo2 <= 93:
        return 2
    if spo2 <= 95:
        return 1
    return 0


def score_spo2_scale2(spo2: float, on_oxygen: bool) -> int:
    """Scale 2, for patients with hypercapnic respiratory failure (target 88-92%).

    Above 92% only scores when the patient is on oxygen: over-oxygenation is the risk.
    """
    spo2 = chart_value(spo2)
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92 or not on_oxygen:
        return 0
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def score_air_or_oxygen(on_oxygen: bool) -> int:
    return 2 if on_oxygen else 0


def score_systolic(bp_sys: float) -> int:
    bp_sys = chart_value(bp_sys)
    if bp_sys <= 90:
        return 3
    if bp_sys <= 100:
        return 2
    if bp_sys <= 110:
        return 1
    if bp_sys <= 219:
        return 0
    return 3


def score_pulse(rate: float) -> int:
    rate = chart_value(rate)
    if rate <= 40:
        return 3
    if rate <= 50:
        return 1
    if rate <= 90:
        return 0
    if rate <= 110:
        return 1
    if rate <= 130:
        return 2
    return 3


def score_consciousness(level: str) -> int:
    """ACVPU: Alert scores 0; new Confusion, Voice, Pain or Unresponsive score 3."""
    return 0 if level == "A" else 3


def score_temperature(celsius: float) -> int:
    celsius = chart_value(celsius, 1)
    if celsius <= 35.0:
        return 3
    if celsius <= 36.0:
        return 1
    if celsius <= 38.0:
        return 0
    if celsius <= 39.0:
        return 1
    return 2


def band_for(total: int, parts: dict[str, int]) -> Band:
    if total >= 7:
        return "high"
    if total >= 5:
        return "medium"
    if any(points == 3 for points in parts.values()):
        return "low-medium"
    return "low"


@dataclass(frozen=True, slots=True)
class News2:
    """One NEWS2 result: the aggregate, its band, what each parameter scored, what was missing."""

    total: int
    band: Band
    parts: dict[str, int]
    missing: tuple[str, ...]
    scale: int
    ts: float
    # The reading each scored parameter's value came from, so the FHIR RiskAssessment
    # can point at the Observations behind the score.
    sources: dict[str, str] = field(default_factory=dict)
    complete: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "complete", not self.missing)

    def to_dict(self) -> dict[str, Any]:
        # What dataclasses.asdict gives, built directly: the processor stores a score per
        # patient and batch, and asdict's generic deep copy cost it 2% of its CPU.
        return {
            "total": self.total,
            "band": self.band,
            "parts": dict(self.parts),
            "missing": self.missing,
            "scale": self.scale,
            "ts": self.ts,
            "sources": dict(self.sources),
            "complete": self.complete,
        }


def news2(
    observed: dict[str, Any], ts: float, scale: int = 1, sources: dict[str, str] | None = None
) -> News2:
    """Score the parameters in `observed` (canonical names; absent ones are reported missing).

    SpO2 on scale 2 needs to know whether the patient is on oxygen; without that
    it is scored on the values alone where the chart allows, else left missing.
    `sources` (parameter -> reading id) is kept for the parameters that scored.
    """
    parts: dict[str, int] = {}
    if "resp_rate" in observed:
        parts["resp_rate"] = score_resp_rate(observed["resp_rate"])
    on_oxygen = observed.get("on_oxygen")
    if "spo2" in observed:
        spo2 = observed["spo2"]
        if scale == 1:
            parts["spo2"] = score_spo2_scale1(spo2)
        elif on_oxygen is not None or chart_value(spo2) <= 92:
            parts["spo2"] = score_spo2_scale2(spo2, bool(on_oxygen))
    if on_oxygen is not None:
        parts["on_oxygen"] = score_air_or_oxygen(bool(on_oxygen))
    if "bp_sys" in observed:
        parts["bp_sys"] = score_systolic(observed["bp_sys"])
    if "heart_rate" in observed:
        parts["heart_rate"] = score_pulse(observed["heart_rate"])
    if "consciousness" in observed:
        parts["consciousness"] = score_consciousness(observed["consciousness"])
    if "temp" in observed:
        parts["temp"] = score_temperature(observed["temp"])
    total = sum(parts.values())
    missing = tuple(p for p in PARAMETERS if p not in parts)
    used = {p: sources[p] for p in parts if p in sources} if sources else {}
    return News2(total, band_for(total, parts), parts, missing, scale, ts, used)


def rescore(score: News2, values: Mapping[str, float]) -> News2:
    """`score` with the vitals it scored re-scored from `values` (the anomaly engine's
    artefact-screened samples); other parameters, the scale and the sources stay."""
    parts = dict(score.parts)
    on_oxygen = parts.get("on_oxygen", 0) > 0
    for name, value in values.items():
        if name not in parts:
            continue
        if name == "spo2":
            if score.scale == 1:
                parts[name] = score_spo2_scale1(value)
            else:
                parts[name] = score_spo2_scale2(value, on_oxygen)
        elif name in _VITAL_SCORERS:
            parts[name] = _VITAL_SCORERS[name](value)
    if parts == score.parts:
        return score  # as most re-scores are: the same points, so the same total and band
    total = sum(parts.values())
    return replace(score, total=total, band=band_for(total, parts), parts=parts)


_VITAL_SCORERS = {
    "resp_rate": score_resp_rate,
    "bp_sys": score_systolic,
    "heart_rate": score_pulse,
    "temp": score_temperature,
}


# What a patient's latest observations look like: parameter -> (value, when measured, reading id).
Observed = dict[str, tuple[Any, float, str]]


def observed_in(reading: Reading) -> dict[str, Any]:
    """The NEWS2 parameters a reading carries."""
    values: dict[str, Any] = {k: v for k, v in reading.vitals.items() if k in PARAMETERS}
    if reading.on_oxygen is not None:
        values["on_oxygen"] = reading.on_oxygen
    if reading.consciousness is not None:
        values["consciousness"] = reading.consciousness
    return values
