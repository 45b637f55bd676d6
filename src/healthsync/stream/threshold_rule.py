"""The threshold rule: what one sample of a vital says against its warning and critical
limits, as a :class:`.lifecycle.Finding` (the engine tracks it, :mod:`.lifecycle` decides).

A warning holds for the persistence; one whose samples sit, by their median,
within the vital's hysteresis margin of the limit holds ``marginal_persist_s``
instead; a heart or respiratory rate whose samples scatter wider than the vital's
steady spread holds ``scattered_hold_s`` (:func:`scattered_persist`); a heart rate
whose samples agree within its level spread holds ``steady_persist_s``
(:func:`steady_persist`: two samples of a 5 s monitor), and so does a respiratory rate
that fell from the patient's own to a steady one below the band
(``steady_fall_persist_s``); an SpO2 fall that the heart
and respiratory rates corroborate holds ``persist_readings`` samples only. A cuff's
measurement clearly past the limit stands alone. A late sample measured before one
known back inside carries when that was, for the lifecycle to place it in
measurement order.
"""

from __future__ import annotations

import statistics

from healthsync.domain.alerts import Severity, Threshold
from healthsync.domain.readings import VITALS
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.lifecycle import Finding, Lifecycle
from healthsync.stream.screening import steady_spread
from healthsync.stream.state import PatientState, Sample, Tracker


class ThresholdRule:
    """Findings of the threshold rule, under the engine's settings; `life` knows the
    interval of the device whose sample is judged (a cuff's measurements stand alone)."""

    def __init__(self, cfg: AnomalySettings, life: Lifecycle) -> None:
        self.cfg = cfg
        self.life = life

    def finding(
        self, state: PatientState, vital: str, sample: Sample, band: Threshold, corroborated: bool
    ) -> Finding:
        """What `sample` of `vital` says against `band`; `corroborated`: its reading's heart
        and respiratory rates corroborate an SpO2 fall."""
        cfg = self.cfg
        kind = f"threshold:{vital}"
        severity = band.severity(sample.value)
        unit = VITALS[vital].ucum
        if severity is None:
            rule = f"{vital} within {band.describe()} {unit}"
        elif severity == "critical":
            rule = (
                f"{vital} {limit_text(band, severity)} {unit} "
                f"(critical: confirmed over {cfg.critical_confirm_s:g} s)"
            )
        else:
            rule = f"{vital} {limit_text(band, severity)} {unit} for >= {persist_text(cfg)}"
        margin = cfg.margins.get(vital, 0.0)
        values = pending(state.trackers.get(kind), sample)
        marginal = None if corroborated else self._marginal(state, vital, values, band, margin)
        if corroborated:
            persist_s: float | None = 0.0
        elif marginal is not None:
            persist_s = marginal
        elif self.life.spot_check():
            persist_s = None  # a cuff's measurements stand alone, however far apart they read
        else:
            persist_s = scattered_persist(cfg, vital, values)
            if persist_s is None:
                persist_s = steady_persist(cfg, vital, values)
            if persist_s is None:
                persist_s = self._steady_fall(state, vital, values, band, margin)
        return Finding(
            severity,
            band.inside(sample.value, margin),
            sample.value,
            rule,
            band.describe(),
            persist_s=persist_s,
            # A cuff's measurement clearly past the limit stands alone; a marginal one waits.
            immediate=persist_s is None and self.life.spot_check(),
            # A marginal warning waits a monitor's whole alarm delay, not a jitter less.
            slack=marginal is None,
            ended_at=state.back_inside_after(kind, vital, sample.ts, band) if severity else None,
        )

    def _marginal(
        self, state: PatientState, vital: str, values: list[float], band: Threshold, margin: float
    ) -> float | None:
        """``marginal_persist_s`` while the pending condition's `values` lie, by their
        median, less far past the limit than the vital's margin: measurement noise around
        a patient who sits near a limit, not a patient past it. Not so on a monitor
        (a cuff's error is the margin) for a patient whose trusted baseline of the vital
        lies far inside that limit (:meth:`_moved`): they have moved there, and do not sit
        near it. None: the usual persistence."""
        cfg = self.cfg
        level = statistics.median(values)
        if band.severity(level) != "warning" or band.past(level) >= margin:
            return None
        if not self.life.spot_check() and self._moved(state, vital, band, level, margin):
            return None
        return max(cfg.persist_s, cfg.marginal_persist_s)

    def _steady_fall(
        self, state: PatientState, vital: str, values: list[float], band: Threshold, margin: float
    ) -> float | None:
        """``steady_fall_persist_s`` of `vital` while its pending `values` lie, by their
        median, below the band and within the vital's level spread of each other, on a
        patient whose trusted baseline lies far inside the low limit (:meth:`_moved`): a
        breathing rate that fell from the patient's own to a new one reads alike on a
        monitor's breath-averaged samples, and talking, which can make two samples alike,
        raises it (a sensor that reads low for two samples is not told apart:
        docs/ALARMS.md). A patient who breathes near the limit crosses it by noise.
        None: the usual persistence."""
        cfg = self.cfg
        persist = cfg.steady_fall_persist_s.get(vital)
        if persist is None or persist >= cfg.persist_s or band.low is None:
            return None
        level = statistics.median(values)
        if level >= band.low or not alike(cfg, vital, values):
            return None
        return persist if self._moved(state, vital, band, level, margin) else None

    def _moved(
        self, state: PatientState, vital: str, band: Threshold, level: float, margin: float
    ) -> bool:
        """Whether the patient's trusted baseline of `vital` lies ``moved_baseline_margins``
        margins or more inside the limit that `level` is past."""
        margins = self.cfg.moved_baseline_margins.get(vital)
        baseline = state.baselines.get(vital)
        if margins is None or baseline is None or baseline.n < self.cfg.baseline_min_samples:
            return False
        if band.low is not None and level < band.low:
            inside = baseline.mean - band.low
        elif band.high is not None:
            inside = band.high - baseline.mean
        else:
            return False
        return inside >= margins * margin


def pending(tracker: Tracker | None, sample: Sample) -> list[float]:
    """The values of the pending run's samples, and `sample`'s."""
    return (
        [*(v for _, v in tracker.evidence), sample.value] if tracker is not None else [sample.value]
    )


def scattered_persist(cfg: AnomalySettings, vital: str, values: list[float]) -> float | None:
    """``scattered_hold_s`` while a pending heart or respiratory rate's `values` (the
    run's samples and the newest, :func:`pending`) spread wider than the vital's steady
    spread: two lead or talking spikes back to back, not a rhythm or a breathing pattern
    that has changed, which reads alike sample after sample. None: the usual
    persistence."""
    if vital not in cfg.level_spread:
        return None
    if max(values) - min(values) > steady_spread(cfg, vital):
        return max(cfg.persist_s, cfg.scattered_hold_s)
    return None


def steady_persist(cfg: AnomalySettings, vital: str, values: list[float]) -> float | None:
    """``steady_persist_s`` of `vital` while its pending `values` lie within the vital's
    level spread of each other: a heart rate that reads alike on two samples of a
    monitor's beat-averaged rate is the rhythm, and most lead artefacts that could mimic
    it are jumps, held before they reach this rule (an undersensing lead that halves a
    slow rate is not, and reads as a sudden bradycardia does: docs/ALARMS.md). None:
    the usual persistence."""
    persist = cfg.steady_persist_s.get(vital)
    if persist is None or persist >= cfg.persist_s:
        return None
    return persist if alike(cfg, vital, values) else None


def alike(cfg: AnomalySettings, vital: str, values: list[float]) -> bool:
    """Whether `values` of `vital` lie within its level spread (its steady spread if it
    has none) of each other, as a rhythm or breathing rate that has changed reads."""
    return max(values) - min(values) <= cfg.level_spread.get(vital, steady_spread(cfg, vital))


def persist_text(cfg: AnomalySettings) -> str:
    return f"{cfg.persist_s:g} s and {cfg.persist_readings} readings"


def limit_text(band: Threshold, severity: Severity | None) -> str:
    if severity == "critical":
        if band.critical_low is not None:
            return (
                f"< {band.critical_low:g}"
                if band.critical_high is None
                else (f"< {band.critical_low:g} or > {band.critical_high:g}")
            )
        return f"> {band.critical_high:g}"
    if band.low is not None and band.high is not None:
        return f"outside {band.low:g}..{band.high:g}"
    return f"< {band.low:g}" if band.low is not None else f"> {band.high:g}"
