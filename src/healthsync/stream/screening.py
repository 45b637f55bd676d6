"""Artefact screening: what the alert rules may see of a vital's samples, and when.

A jump larger than the vital can physically make between two samples (a probe
moved, ECG leads disturbed, a cuff knocked) is held rather than believed. Time
decides, not the next sample alone, because motion artefacts often last two or
three samples:

- a later sample nearer the level before the jump than the held run's level,
  or nearer the vital's recent level than the run (after a jump from a kept
  sample away from that level), sets the whole held run aside as artefacts;
- once the new level has stood for ``artefact_hold_s`` (give or take the
  device's timing jitter), the run is released in order, each sample with its
  own time, so timers count from the jump, provided its recent samples agree as
  a level does (artefacts scatter); a run that scatters more than a level but
  less than artefacts do (an irregular rhythm, or two spikes back to back)
  stands only after ``scattered_hold_s``, a monitor's alarm delay; a sudden fall
  in SpO2 and a jump up of a vital in ``rise_hold_s`` (the breathing rate:
  talking) hold as long as a monitor waits, without the jitter slack;
- on a device sending more often than a monitor waits (a 10 s monitor), a run
  needs two samples after the jump unless one already lasts that long;
- a run that the device goes quiet after stays held until the vital's next
  sample decides: silence confirms nothing (a probe dip just before the probe
  came off stood at the clock's tick and drove NEWS2 and the trends);
- a late sample measured between the old level and the jump that reads as the
  new level makes the held run begin earlier, and so stand sooner;
- a run set aside because the vital came back still stands if a sample measured
  before the return, but delayed past it, shows that the run lasted after all.

A real fast fall moves away from the old level sample after sample, so it is
released after the hold, never set aside. What counts as consecutive adapts to
each device: a monitor that sends every minute is screened over its own interval.
The first sample after a dropout is judged against the level before it; a
sample back at the vital's recent level is no jump, whatever the last sample
was; a spot-check device's measurements (a cuff every 15 minutes) are not
screened.
A sample whose signal quality the device reports as poor is set aside at once
(:mod:`healthsync.stream.signal_quality`).
"""

from __future__ import annotations

import bisect
import math
import operator
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from healthsync.domain.alerts import Artefact
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.state import PatientState, Sample, SetAside

_TS = operator.attrgetter("ts")

# Two samples this many of the device's intervals apart are still consecutive
# (one lost sample between them included).
INTERVALS_APART = 2.5
# A span of samples counts as lasting a time if it falls short of it by no more than
# this share of the device's interval: its timing jitter. Without it, a 5 s monitor
# whose third sample comes at 9.8 s waits for a fourth, 5 s later.
JITTER_SLACK = 0.25
# A held run of a vital without a steady_spread stands only once its recent samples lie
# within this share of the vital's max_jump of each other: a level, not a scatter.
STEADY_SHARE = 0.5


def lasted(span: float, needed: float, interval: float | None) -> bool:
    """Whether samples `span` seconds apart show something lasting `needed` seconds."""
    return span >= needed - JITTER_SLACK * (interval or 0.0)


def aside_window(cfg: AnomalySettings, interval: float | None) -> float:
    """How long a run set aside may still be completed by a late sample: the artefact
    window, or 2.5 of the device's intervals."""
    if interval is None:
        return cfg.artefact_window_s
    return max(cfg.artefact_window_s, INTERVALS_APART * interval)


def sends_a_signal(cfg: AnomalySettings, interval: float | None) -> bool:
    """Whether the device's samples are screened for jumps: a monitor's are, however long
    since its last one (the first sample after a dropout is judged against the level
    before it: taken as the level on its own, a probe dip there made the sample back at
    the old level a jump, and the next dip continued a run across it). A spot-check
    device's (a cuff every 15 minutes) are not: its measurements minutes apart may
    differ by anything, and each is judged on its own."""
    return interval is None or interval < cfg.spot_check_s


@dataclass(frozen=True, slots=True)
class Hold:
    """How long a held run must stand, and whether it may fall short of that by the
    device's jitter (JITTER_SLACK of its interval)."""

    seconds: float
    slack: bool


def hold_for(cfg: AnomalySettings, vital: str, run: list[Sample], before: Sample) -> Hold:
    """How long a held run must stand: longer for a sudden fall in SpO2, since a slipping
    probe gives dips of up to three samples (a fall the other vitals corroborate is not
    held), and for a jump up of a vital in ``rise_hold_s`` (when longer than the artefact
    hold): talking raises the breathing rate for a sentence or two, longer than the hold.
    Those two count as a monitor does, without the jitter slack: a probe's dips come in
    clusters, and four samples 14 s apart are two of them as often as a real fall."""
    if vital == "spo2" and run[0].value < before.value:
        return Hold(cfg.desaturation_hold_s, slack=False)
    rise = cfg.rise_hold_s.get(vital)
    if rise is not None and rise >= cfg.artefact_hold_s and run[0].value > before.value:
        return Hold(rise, slack=False)
    return Hold(cfg.artefact_hold_s, slack=True)


def _aside_hold(cfg: AnomalySettings, aside: SetAside) -> Hold:
    """The hold a run set aside had to last. One saved before a hold carried its slack is
    judged as it was then, by the hold's length."""
    if aside.slack is not None:
        return Hold(aside.hold, aside.slack)
    unslacked = aside.hold == cfg.desaturation_hold_s or aside.hold in cfg.rise_hold_s.values()
    return Hold(aside.hold, not unslacked)


def steady_spread(cfg: AnomalySettings, vital: str) -> float:
    """How far apart a vital's samples may lie and still read as one level: its
    ``steady_spread``, or STEADY_SHARE of its ``max_jump`` (no limit without either)."""
    return cfg.steady_spread.get(vital, STEADY_SHARE * cfg.max_jump.get(vital, math.inf))


def _stood(
    cfg: AnomalySettings, vital: str, run: list[Sample], held: Hold, interval: float | None
) -> bool:
    """Whether a held run (in time order) has lasted its hold as a level does, or as long as
    a monitor waits (``scattered_hold_s``) within the vital's steady spread; on a device
    sending more often than a monitor waits, on two samples after the jump at least (a
    10 s monitor's two-sample lead spike lasts the hold; a monitor alarms at the third)."""
    hold = held.seconds
    slack = interval if held.slack else None
    spread = steady_spread(cfg, vital)
    level = min(cfg.level_spread.get(vital, spread), spread)
    span = run[-1].ts - run[0].ts
    if not lasted(span, hold, slack) or (
        len(run) < 3 and not _as_long_as_a_monitor(cfg, span, interval)
    ):
        return False
    if steady(run, hold, level, slack):
        return True
    # Wider than a level, within the steady spread: an irregular rhythm, or two spikes
    # back to back. It stands once it has lasted as long as a monitor waits.
    scattered = max(hold, cfg.scattered_hold_s)
    return (
        level < spread and lasted(span, scattered, slack) and steady(run, scattered, spread, slack)
    )


def _as_long_as_a_monitor(cfg: AnomalySettings, span: float, interval: float | None) -> bool:
    """Whether one sample after a jump lasts as long as a monitor waits to alarm: the
    device sends that seldom, or the two lie that far apart."""
    wait = cfg.scattered_hold_s
    return lasted(span, wait, interval) or (
        interval is not None and lasted(interval, wait, interval)
    )


def steady(run: list[Sample], hold: float, spread: float, interval: float | None) -> bool:
    """Whether the held run's samples that show its last `hold` seconds agree as a new
    level does: a heart rhythm, a pressure or a saturation that has changed reads alike
    sample after sample, while lead, motion and probe artefacts scatter."""
    newest = run[-1].ts
    start = max((s.ts for s in run if lasted(newest - s.ts, hold, interval)), default=0.0)
    values = [s.value for s in run if s.ts >= start]
    return max(values) - min(values) <= spread


def screen(
    state: PatientState,
    cfg: AnomalySettings,
    vital: str,
    sample: Sample,
    interval: float | None,
) -> tuple[list[Sample], list[Sample]]:
    """The samples the rules may see now (none, this one, or a released run, in order),
    and those now found to be artefacts."""
    jump = cfg.max_jump.get(vital)
    last = state.last.get(vital)
    if jump is None or last is None:
        state.last[vital] = sample
        return [sample], []
    set_aside: list[Sample] = []
    held = state.held.get(vital)
    if held is not None:
        away = _of_the_run(sample, held, last) and not _back_from(state, vital, sample, held)
        if sample.ts < held[0].ts and not (away and sample.ts > last.ts):
            return _before_the_jump(state, vital, sample, jump)
        if away:
            # Still away. A late sample measured between the old level and the jump
            # shows the new level began earlier.
            bisect.insort(held, sample, key=_TS)
            stood = _stood(cfg, vital, held, hold_for(cfg, vital, held, last), interval)
            return (release(state, vital) if stood else []), []
        set_aside = _unhold(state, vital)  # back where it was: they were artefacts
        hold = hold_for(cfg, vital, set_aside, last)
        state.aside[vital] = SetAside(set_aside, hold.seconds, sample.ts, hold.slack)
    if sample.ts < last.ts:
        # Late and out of order: it may inform the rules, never move the level.
        if abs(sample.value - last.value) > jump:
            run = _reinstated(state, cfg, vital, sample, interval)
            return (run, set_aside) if run else ([], [*set_aside, sample])
        return [sample], set_aside
    aside = state.aside.get(vital)
    if aside is not None and sample.ts - aside.until > aside_window(cfg, interval):
        del state.aside[vital]  # no late sample of it is still to come
    if (
        abs(sample.value - last.value) > jump
        and sends_a_signal(cfg, interval)
        and not _back_to_level(state, vital, sample, jump)
    ):
        state.held[vital] = [sample]
        hold = hold_for(cfg, vital, [sample], last)
        return (release(state, vital) if hold.seconds <= 0 else []), set_aside
    state.last[vital] = sample
    return [sample], set_aside


def _back_to_level(state: PatientState, vital: str, sample: Sample, jump: float) -> bool:
    """Whether `sample`, though a jump from the last kept sample, is no jump from the
    vital's level (the median of its recent kept samples): back where the patient was
    before a single sample that other vitals seemed to corroborate."""
    level = state.level(vital)
    return level is not None and abs(sample.value - level) <= jump


def _back_from(state: PatientState, vital: str, sample: Sample, run: list[Sample]) -> bool:
    """Whether `sample` reads nearer the vital's recent level than the held `run` does: the
    run was held as a jump from a kept sample that was itself away from that level (a dip
    corroborated by chance), and the vital has come back past the run to where the
    patient was."""
    level = state.level(vital)
    run_level = statistics.median(s.value for s in run)
    return level is not None and abs(sample.value - level) < abs(sample.value - run_level)


def _reinstated(
    state: PatientState, cfg: AnomalySettings, vital: str, sample: Sample, interval: float | None
) -> list[Sample]:
    """The run set aside before `sample` came, with it, if `sample` was measured within
    that run (before the vital came back), reads as the run does, and makes it last its
    hold steadily: the run was no artefact, only its last samples arrived after the
    return. The late sample is kept with the run either way, for a later one to complete."""
    aside = state.aside.get(vital)
    if aside is None or not aside.run[0].ts < sample.ts < aside.until:
        return []
    if not _of_the_run(sample, aside.run, state.last[vital]):
        return []
    bisect.insort(aside.run, sample, key=_TS)
    if not _stood(cfg, vital, aside.run, _aside_hold(cfg, aside), interval):
        return []
    del state.aside[vital]
    return aside.run


def _of_the_run(sample: Sample, run: list[Sample], last: Sample) -> bool:
    """Whether `sample` reads nearer the run's level (its median) than the level `last`
    stands for: away with the run, not back."""
    level = statistics.median(s.value for s in run)
    return abs(sample.value - last.value) > abs(sample.value - level)


def corroborated_fall(
    state: PatientState, cfg: AnomalySettings, ts: float, vitals: Mapping[str, float]
) -> set[str]:
    """The vitals whose change in this reading the others confirm: SpO2, when it jumps
    below its level while every corroborating vital the reading carries (with a level to
    rise from) rises above its own recent level: the heart AND the respiratory rate from
    a monitor, the pulse alone from an oximeter that measures nothing else. Hypoxaemia
    drives both; a slipping probe neither, and one of them alone rises that far by noise
    or talking now and then. A rise larger than that vital can make between two samples
    is a lead or talking artefact itself, and corroborates nothing; nor is a sample back
    near the level before a held fall a fall."""
    spo2, before = vitals.get("spo2"), state.last.get("spo2")
    if spo2 is None or before is None or ts <= before.ts:
        return set()
    if before.value - spo2 <= cfg.max_jump.get("spo2", 0.0):
        return set()
    levels = _levels(state, cfg)
    carried = {v for v in cfg.corroborating_rise if v in vitals and v in levels}
    risen = _risen(levels, levels, cfg, vitals)
    return {"spo2"} if risen and risen == carried else set()


def corroborated_desaturation(
    state: PatientState, cfg: AnomalySettings, ts: float, vitals: Mapping[str, float]
) -> bool:
    """Whether this reading shows SpO2 below its level with the heart AND the respiratory
    rate both risen above theirs: three sensors (oximeter, ECG, impedance) agreeing on a
    hypoxaemia, which no single probe, lead or talking artefact makes.

    While such a fall goes on, its readings may also agree with the levels from before
    it (:attr:`PatientState.fall_from`), not only with recent levels the fall itself has
    pulled along: samples set aside just before it (a failing perfusion reads as a poor
    signal) would otherwise leave only the fall to compare the fall with."""
    spo2, last = vitals.get("spo2"), state.last.get("spo2")
    if spo2 is None or last is None or ts <= last.ts:
        return False
    level = state.level("spo2")
    if not state.fall_from and (level is None or level - spo2 < cfg.corroborated_fall):
        return False  # the common case, every reading: no fall, none going on
    current = _levels(state, cfg)

    def agree(levels: Mapping[str, float]) -> bool:
        level = levels.get("spo2")
        return (
            level is not None
            and level - spo2 >= cfg.corroborated_fall
            and _risen(levels, current, cfg, vitals) == cfg.corroborating_rise.keys()
        )

    agreed = agree(current) or (bool(state.fall_from) and agree(state.fall_from))
    state.fall_from = (state.fall_from or current) if agreed else {}
    return agreed


def _levels(state: PatientState, cfg: AnomalySettings) -> dict[str, float]:
    """The current levels of SpO2 and of the vitals that corroborate its fall."""
    levels = {vital: state.level(vital) for vital in ("spo2", *cfg.corroborating_rise)}
    return {vital: level for vital, level in levels.items() if level is not None}


def _risen(
    levels: Mapping[str, float],
    current: Mapping[str, float],
    cfg: AnomalySettings,
    vitals: Mapping[str, float],
) -> set[str]:
    """The vitals of ``corroborating_rise`` that rose in this reading by at least their
    amount above their `levels`, and by no more above their `current` levels than they
    can between two samples (a bigger rise is a lead or talking artefact itself)."""
    risen = set()
    for vital, rise in cfg.corroborating_rise.items():
        value, level, now = vitals.get(vital), levels.get(vital), current.get(vital)
        if (
            value is not None
            and level is not None
            and now is not None
            and value - level >= rise
            and value - now <= cfg.max_jump.get(vital, math.inf)
        ):
            risen.add(vital)
    return risen


def corroborated(state: PatientState, vital: str, sample: Sample) -> list[Sample]:
    """A change the reading's other vitals confirm (they moved with it, as in a real
    desaturation) is no artefact: it stands at once, and so does a run held before it."""
    run = _unhold(state, vital)
    state.last[vital] = sample
    return [*run, sample]


def _before_the_jump(
    state: PatientState, vital: str, sample: Sample, jump: float
) -> tuple[list[Sample], list[Sample]]:
    """Measured before a held jump but arrived after it, and either reading as the old
    level does or older than the sample the jump was from: it says nothing about the jump."""
    last = state.last[vital]
    if abs(sample.value - last.value) > jump:
        return [], [sample]
    if sample.ts > last.ts:
        state.last[vital] = sample
    return [sample], []


def release(state: PatientState, vital: str) -> list[Sample]:
    """The vital's held run stands: it becomes the vital's level, and the rules see it."""
    run = _unhold(state, vital)
    state.last[vital] = run[-1]
    return run


def _unhold(state: PatientState, vital: str) -> list[Sample]:
    """The vital's held run (empty if none), no longer held."""
    return state.held.pop(vital, [])


def artefacts_of(patient: str, vital: str, samples: list[Sample]) -> list[Artefact]:
    return [Artefact(patient, vital, s.ts, s.value, s.reading_id) for s in samples]
