"""What a NEWS2 score says as an alert (RCP 2017 clinical response thresholds).

- high (7 or more): an emergency response, a critical alert;
- medium (5-6) and any single red score (one parameter scoring 3): an urgent
  response, a warning. A red score that only repeats a vital's own threshold
  alert (SpO2 84 is both) adds nothing; one inside the alert bands (SpO2
  90-91, systolic 90) or for consciousness does. A red part at its vital's
  alert limit (inside the band, or past it by less than the vital's margin:
  SpO2 89-91, systolic 86-90) lies within the measurement's own error (an
  oximeter's +-2 points, a cuff's +-5 mmHg), as the threshold rule's marginal
  values do, and like them it must be measured again: it counts as red once
  its vital has lain near the limit (not inside the band by the margin) on
  ``persist_readings`` samples in a row, and holds ``news2_persist_s`` from the
  first of them, or from the second if they lie further apart than that. A 5 s
  monitor's SpO2 of 91 still alerts at 30 s; a minute-by-minute monitor's
  needs a third 91 (two, then 93, is noise at the limit); a cuff's systolic of
  146, 91, 89 counts from its 89. Until then the score takes it as amber.
- new confusion (ACVPU other than A) is a nurse's observation, not a noisy
  sensor: it needs no persistence. A warning otherwise needs ``news2_persist_s``:
  the chart is for observations, and a monitor's values at a chart boundary
  come and go. A medium score made only of amber parts (several parameters each
  a little off, none red) needs ``news2_aggregate_persist_s``: a patient who
  sits there for minutes is what the score is about, one who drifts through it
  for half a minute is not. A red part's ``news2_persist_s`` counts from when
  the red part began, even within a run that began as such an amber sum: from
  its vital's first sample near the limit (the first of the two above), where
  the vital has an alert band.
- an open NEWS2 alert resolves once the score has been low for
  ``news2_resolve_hold_s``: a patient hovering at 4-5 keeps one alert, not a
  flapping one.

The score is re-computed from the samples the engine kept, so a sample held
or set aside as an artefact does not count, and from their median over the
last 15 s, so one noisy sample at a chart boundary does not either. It is
re-computed whenever any of the patient's devices sends, but a warning lasts
only on samples of the vitals that drive it (:func:`new_evidence`): a cuff's
reading, or a monitor's artefact held back, re-scores the SpO2 of a minute
ago without measuring it again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from healthsync.domain.alerts import AlertEvent, Severity, Threshold
from healthsync.domain.news2 import News2, rescore
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.lifecycle import Finding, Lifecycle, Subject
from healthsync.stream.state import PatientState, Sample, Tracker

RED = 3
# A tracker of no alert of its own: since when the score has had a red part, so that
# the red part holds ``news2_persist_s`` itself rather than inherit a run of amber sums.
RED_RUN = "news2:red"
# Trackers of no alert of their own, one per vital (``news2:near:spo2``): since when, and
# on how many samples in a row, the vital's level has lain near its limit or past it.
NEAR_LIMIT = "news2:near:"


def news2_events(
    life: Lifecycle,
    state: PatientState,
    patient: str,
    score: News2,
    bands: Mapping[str, Threshold],
) -> list[AlertEvent]:
    """What a patient's new score opens, escalates or resolves (its state must be loaded)."""
    levels = kept_levels(score, state)
    score = rescore(score, levels)
    if not score.total and not state.trackers and life.idle(state, patient, "news2"):
        return []  # most scores of most patients: no part scores, nothing to count or say
    standing = _reds(score) - track_near_limit(score, state, bands, life.cfg, levels)
    note_red(score, state, standing)
    severity = news2_severity(score, state, bands)
    if severity is None and life.idle(state, patient, "news2"):
        return []  # most scores of most patients: nothing to say, nothing to resolve
    finding = news2_finding(score, severity, state, life.cfg, standing)
    if not new_evidence(finding, score, state):
        return []  # a re-score of samples already counted: no sign that it lasted
    source = next(iter(score.sources.values()), "")
    sample = Sample(score.ts, float(score.total), source)
    life.decided_at = score.ts
    # The score changes as often as the patient's most frequent device sends: the
    # jitter of a 15-minute cuff whose reading asks is none of its samples'.
    intervals = [d.interval for d in state.devices.values() if d.interval is not None]
    life.interval = min(intervals, default=None)
    return life.track(state, Subject(patient, "news2", None), sample, finding)


def kept_levels(score: News2, state: PatientState) -> dict[str, float]:
    """The levels of the vitals `score` scored, from the samples the engine kept (their
    recent median): what the score is re-scored from."""
    levels = {v: state.level(v) for v in score.parts}
    return {v: level for v, level in levels.items() if level is not None}


def track_near_limit(
    score: News2,
    state: PatientState,
    bands: Mapping[str, Threshold],
    cfg: AnomalySettings,
    levels: Mapping[str, float],
) -> set[str]:
    """Count, per vital `score` scored, the kept samples in a row whose level (of
    `levels`, :func:`kept_levels`) has lain near its alert limit (not inside the band by
    the vital's margin) or past it: each new kept sample so is one, and one clear of it
    ends the count (a tracker in the state). A run whose first two samples lie further
    apart than ``news2_persist_s`` counts from its second.

    Returns the red parts of `score` that do not count as red yet: vitals whose level
    scores red at their alert limit (inside the band, or past it by less than the
    vital's margin) on fewer than ``persist_readings`` such samples. One pass does both,
    as every score of every patient comes here."""
    unconfirmed: set[str] = set()
    for name, points in score.parts.items():
        band, kept, level = bands.get(name), state.recent.get(name), levels.get(name)
        if band is None or not kept or level is None:
            continue  # consciousness, oxygen: a nurse's entry, not a noisy sensor
        margin = cfg.margins.get(name, 0.0)
        key = NEAR_LIMIT + name
        near = state.trackers.get(key)
        if band.inside(level, margin):
            if near is not None:
                del state.trackers[key]
            continue
        newest = kept[-1][0]
        if near is None:
            near = state.trackers[key] = Tracker(since=newest, count=1, last_ts=newest)
        elif newest > near.last_ts:
            near.count += 1
            near.last_ts = newest
            if near.count == 2 and newest - (near.since or newest) > cfg.news2_persist_s:
                near.since = newest  # a minute-by-minute monitor's: it lasts from here
        marginal = band.past(level) < margin
        if points >= RED and marginal and near.count < cfg.persist_readings:
            unconfirmed.add(name)
    return unconfirmed


def note_red(score: News2, state: PatientState, standing: set[str]) -> None:
    """Remember since when the score has had a red part that counts (of `standing`), from
    its vital's first sample near the limit where it has one (forget it once it has none)."""
    run = state.trackers.get(RED_RUN)
    if standing and run is None:
        starts = [score.ts]
        for name in standing:
            near = state.trackers.get(NEAR_LIMIT + name)
            if near is not None and near.since is not None:
                starts.append(near.since)
        state.trackers[RED_RUN] = Tracker(since=min(starts), last_ts=score.ts)
    elif standing and run is not None:
        run.last_ts = max(run.last_ts, score.ts)
    elif run is not None and score.ts > run.last_ts:
        del state.trackers[RED_RUN]  # a late score from before the red part ends nothing


def news2_severity(
    score: News2, state: PatientState, bands: Mapping[str, Threshold]
) -> Severity | None:
    """The alert the score calls for, if any."""
    if score.band == "high":
        return "critical"
    if score.band == "low":
        return None
    if score.band == "low-medium" and _red_covered(score, state, bands):
        return None  # the vital's own threshold alert says it already
    return "warning"


def _reds(score: News2) -> set[str]:
    return {name for name, points in score.parts.items() if points >= RED}


def news2_finding(
    score: News2,
    severity: Severity | None,
    state: PatientState,
    cfg: AnomalySettings,
    standing: set[str],
) -> Finding:
    """What the score says, with its `severity` (:func:`news2_severity`) and the red parts
    that count (`standing`: the others are yet to be confirmed, :func:`track_near_limit`);
    a medium score without one (a sum of amber parts) needs ``news2_aggregate_persist_s``,
    any other warning ``news2_persist_s`` from its red part's start, and lasts not at all
    while it has red parts but none that counts; an open alert resolves after
    ``news2_resolve_hold_s`` of low scores."""
    persist_s = cfg.news2_persist_s
    red = ", a single red score" if score.band == "low-medium" else ""
    rule = f"NEWS2 {score.total} ({score.band}{red}): " + ", ".join(
        f"{k} {v}" for k, v in sorted(score.parts.items()) if v
    )
    if score.band == "medium" and not standing:
        persist_s = cfg.news2_aggregate_persist_s
    elif severity == "warning":
        persist_s = _red_persist(state, cfg) if standing else math.inf
    return Finding(
        severity,
        score.band == "low",
        float(score.total),
        rule,
        "0..4",
        immediate=score.parts.get("consciousness", 0) > 0,
        drivers=tuple(sorted(k for k, v in score.parts.items() if v)),
        persist_s=persist_s,
        resolve_s=cfg.news2_resolve_hold_s,
    )


def _red_persist(state: PatientState, cfg: AnomalySettings) -> float:
    """``news2_persist_s`` counted from when the red part began, not from the start of
    the pending run (which may have begun as a sum of amber parts); never longer than
    the amber sum would have had to hold."""
    pending, red = state.trackers.get("news2"), state.trackers.get(RED_RUN)
    if pending is None or pending.since is None or red is None or red.since is None:
        return cfg.news2_persist_s
    later = max(0.0, red.since - pending.since)
    return min(cfg.news2_persist_s + later, max(cfg.news2_aggregate_persist_s, cfg.news2_persist_s))


def new_evidence(finding: Finding, score: News2, state: PatientState) -> bool:
    """Whether the score may count towards a pending warning lasting: always, unless
    it would join a pending run (or, late, complete one that ended) and no vital that
    drives the score was measured since that run's last sample."""
    tracker = state.trackers.get("news2")
    if finding.severity is None or finding.immediate or tracker is None:
        return True
    run = tracker.ended if tracker.completed_by(score.ts) else tracker
    if run is None or run.since is None:
        return True
    return remeasured(score, state, run.last_ts)


def remeasured(score: News2, state: PatientState, since: float) -> bool:
    """Whether a sample kept after `since` measured a vital that drives the score (a red
    part of a single red score, any scoring part of a medium or high one), and none of
    them has a newer sample held back as a possible artefact: the part it scores is then
    the level from before, which that sample may be about to replace. A score whose parts
    come from no kept samples (a nurse's entries) counts as measured."""
    floor = RED if score.band == "low-medium" else 1
    drivers = [name for name, points in score.parts.items() if points >= floor]
    if any(state.held.get(name) for name in drivers):
        return False
    newest = [kept[-1][0] for name in drivers if (kept := state.recent.get(name))]
    return not newest or max(newest) > since


def _red_covered(score: News2, state: PatientState, bands: Mapping[str, Threshold]) -> bool:
    """Whether every red parameter is a vital beyond its own alert band."""
    for name, points in score.parts.items():
        if points < RED:
            continue
        band, level = bands.get(name), state.level(name)
        if band is None or level is None or band.severity(level) is None:
            return False
    return True
