"""The level rule: a vital that hovers at its limit, past it by its level but never by
enough samples in a row for the threshold rule (``level:<vital>``).

A bradypnoea at 8-9/min against a limit of 9 reads 9, 8, 10, 9, 7, 8, 9, 8 ...:
each sample back at the limit ends the threshold rule's run, so neither it nor
a bedside monitor raises it, however long it lasts. Its level, the mean of the
vital's kept samples over the last minute (the trend window's buckets that
cover it, so 60-90 s), stays below 9 all the while. Samples set aside as
artefacts never reach the window.

Only for vitals with a trend rule (SpO2, heart and respiratory rates): their
window is kept anyway. Not for pressures, which swing with each breath: a
systolic hovering between 85 and 101 would alarm on a patient who is well.
"""

from __future__ import annotations

from healthsync.domain.alerts import Threshold
from healthsync.domain.readings import VITALS
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.lifecycle import Finding
from healthsync.stream.state import Sample
from healthsync.stream.trends import TrendWindow

# The level is the mean over this long, once it holds this many samples (a 15 s monitor
# gives 6-9 over the 90-135 s its buckets cover; one sending every minute, too few).
LEVEL_SPAN_S = 60.0
LEVEL_SAMPLES = 6


class LevelRule:
    """Findings of the level rule, under the engine's settings."""

    def __init__(self, cfg: AnomalySettings) -> None:
        self.cfg = cfg

    def past(self, window: TrendWindow, band: Threshold, vital: str, sample: Sample) -> bool:
        """Whether the rule holds now that `sample` (kept) joined `window`: the level past
        the band, and the sample itself not back inside by the vital's margin (the mean
        lags a recovery)."""
        level = window.mean_over(LEVEL_SPAN_S, sample.ts, LEVEL_SAMPLES)
        return (
            level is not None
            and band.severity(level) is not None
            and not band.inside(sample.value, self.cfg.margins.get(vital, 0.0))
        )

    def finding(
        self, window: TrendWindow, band: Threshold, vital: str, sample: Sample, holds: bool
    ) -> Finding:
        """The finding for `sample`: a warning if `holds` (:meth:`past`, and no open alert
        says as much already), cleared once the level is back inside by the vital's margin
        (a level that hovers at the limit would otherwise resolve and reopen)."""
        persist_s = self.cfg.level_persist_s or 0.0
        level = window.mean_over(LEVEL_SPAN_S, sample.ts, LEVEL_SAMPLES)
        unit = VITALS[vital].ucum
        shown = "unknown" if level is None else f"{level:.3g} {unit}"
        return Finding(
            "warning" if holds else None,
            level is None or band.inside(level, self.cfg.margins.get(vital, 0.0)),
            sample.value,
            f"{vital} level (mean over {LEVEL_SPAN_S:g} s) {shown}, outside "
            f"{band.describe()} {unit} for >= {persist_s:g} s",
            band.describe(),
            persist_s=persist_s,
        )
