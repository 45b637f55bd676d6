"""The level rule: a vital that hovers at its limit, past it by its level but never by
enough samples in a row for the threshold rule (``level:<vital>``).

A bradypnoea at 8-9/min against a limit of 9 reads 9, 8, 10, 9, 7, 8, 9, 8 ...:
each sample back at the limit ends the threshold rule's run, so neither it nor
a bedside monitor raises it, however long it lasts. Its level, the mean of the
vital's kept samples over the last minute (the trend window's buckets that
cover it, so 60-90 s), stays below 9 all the while. Samples set aside as
artefacts never reach the window.

A device too slow for that (a 60 s monitor's minute holds one sample, its
buckets up to four) has as its level the mean of its last three samples, so
8, 9, 7, 9 on a 60 s monitor is a level of 8.3.

Only for vitals with a trend rule (SpO2, heart and respiratory rates): their
window is kept anyway. Not for pressures, which swing with each breath: a
systolic hovering between 85 and 101 would alarm on a patient who is well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from healthsync.domain.alerts import AlertEvent, Threshold
from healthsync.domain.readings import VITALS
from healthsync.domain.rule_defaults import TrendRule
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.lifecycle import Finding, Lifecycle, Subject
from healthsync.stream.state import PatientState, Sample
from healthsync.stream.trends import TrendWindow

# The level is the mean over this long, once it holds this many samples (a 15 s monitor
# gives 6-9 over the 90-135 s its buckets cover; one sending every minute, too few).
LEVEL_SPAN_S = 60.0
LEVEL_SAMPLES = 6
# A device whose buckets over LEVEL_SPAN_S can never hold LEVEL_SAMPLES has as its level
# the mean of its last this many samples, once the buckets that cover its last this many
# intervals hold as many (3-6 intervals: no level across a dropout).
SLOW_SAMPLES = 3

_OVER_SPAN = f"mean over {LEVEL_SPAN_S:g} s"
_OVER_SLOW = f"mean of the last {SLOW_SAMPLES} samples"


# A vital's level (None: too few samples) and what it is the mean of. A plain tuple, not
# a NamedTuple: compiled, it is passed by value, for every sample of three vitals.
Level = tuple[float | None, str]


def level_kind(vital: str) -> str:
    return f"level:{vital}"


class LevelRule:
    """The level rule under the engine's settings, on the windows of `trends` (by vital)."""

    def __init__(
        self, cfg: AnomalySettings, life: Lifecycle, trends: Mapping[str, Sequence[TrendRule]]
    ) -> None:
        self.cfg = cfg
        self.life = life
        # The window each vital's level is read from (its first trend rule's), and the
        # open alerts a level alert would only repeat.
        self._window = {vital: rules[0].name for vital, rules in trends.items() if rules}
        self._louder = {
            vital: [f"threshold:{vital}", *(f"trend:{r.name}" for r in rules)]
            for vital, rules in trends.items()
        }
        self._kinds = {vital: level_kind(vital) for vital in trends}

    def track(
        self, state: PatientState, patient: str, vital: str, sample: Sample, band: Threshold | None
    ) -> list[AlertEvent]:
        """What `sample` (kept, and already in its trend window) changes."""
        name = self._window.get(vital)
        window = state.windows.get(name) if name is not None else None
        if band is None or self.cfg.level_persist_s is None or window is None:
            return []
        kind = self._kinds[vital]
        level = self.level(window, sample.ts)
        past = self.past(level[0], band, vital, sample)
        if not past and self.life.idle(state, patient, kind):
            return []
        holds = past and not self._said(patient, kind, vital)
        finding = self._finding(level, band, vital, sample, holds)
        return self.life.track(state, Subject(patient, kind, vital), sample, finding)

    def level(self, window: TrendWindow, at: float) -> Level:
        """The vital's level at `at`, from its trend `window`."""
        interval = self.life.interval
        if not interval or LEVEL_SPAN_S + window.bucket_width() >= LEVEL_SAMPLES * interval:
            return window.mean_over(LEVEL_SPAN_S, at, LEVEL_SAMPLES), _OVER_SPAN
        if window.mean_over(SLOW_SAMPLES * interval, at, SLOW_SAMPLES) is None:
            return None, _OVER_SLOW
        return window.latest_mean(SLOW_SAMPLES), _OVER_SLOW

    def past(self, level: float | None, band: Threshold, vital: str, sample: Sample) -> bool:
        """Whether the rule holds: the `level` past the band, and `sample` itself not back
        inside by the vital's margin (the mean lags a recovery)."""
        return (
            level is not None
            and band.severity(level) is not None
            and not band.inside(sample.value, self.cfg.margins.get(vital, 0.0))
        )

    def _said(self, patient: str, kind: str, vital: str) -> bool:
        """Whether a new level alert would only repeat an open alert about `vital`: its
        threshold or trend alert, or a NEWS2 alert it scored in."""
        if self.life.quiet(patient, kind, self._louder[vital]):
            return True
        news2 = self.life.open.get((patient, "news2"))
        return (
            (patient, kind) not in self.life.open and news2 is not None and vital in news2.drivers
        )

    def _finding(
        self, level: Level, band: Threshold, vital: str, sample: Sample, holds: bool
    ) -> Finding:
        """A warning if `holds`, cleared once the `level` is back inside by the vital's
        margin (a level that hovers at the limit would otherwise resolve and reopen)."""
        persist_s = self.cfg.level_persist_s or 0.0
        unit = VITALS[vital].ucum
        value, over = level
        shown = "unknown" if value is None else f"{value:.3g} {unit}"
        return Finding(
            "warning" if holds else None,
            value is None or band.inside(value, self.cfg.margins.get(vital, 0.0)),
            sample.value,
            f"{vital} level ({over}) {shown}, outside "
            f"{band.describe()} {unit} for >= {persist_s:g} s",
            band.describe(),
            persist_s=persist_s,
        )
