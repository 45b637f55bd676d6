"""Scoring alarms against labelled episodes: pure functions, no I/O.

Definitions (docs/ALARMS.md says the same):

- An episode's *window* runs from its onset (when the vital began to move;
  its start for an abrupt one) to its end plus the grace period.
- An episode is *detected* by the first clinical alarm for that patient that
  opens inside its window and is about the episode's vital: a threshold,
  trend or baseline alert on it, or a NEWS2 alert it scored in. An alarm on
  another vital says nothing about this episode. Its *delay* is that alarm's
  opening time minus the episode's start (when the vital crossed its limit),
  negative for an alarm that opened during the onset (early, not false). An
  alert that opened before the window does not detect the episode, even if it
  is still open: it was raised for something else, and counting it would
  reward alerts that never resolve.
- A *false alarm* is a clinical alarm that opened outside every episode of
  that patient whose vitals it is about (an episode's vitals are its own and
  the ones that move with it; it lasts from its onset to its end plus the
  grace period or, if longer, the recovery, which mirrors the onset).
  Technical alarms (device offline) are neither detections nor false
  alarms; they count in the total of alerts and apart.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from healthsync.evaluation.detectors import Alarm
from healthsync.evaluation.generate import LabelledEpisode

__all__ = [
    "EpisodeOutcome",
    "KindScore",
    "Score",
    "alert_reduction",
    "false_alarms",
    "match_episodes",
    "percentile",
    "score",
]


@dataclass(frozen=True, slots=True)
class EpisodeOutcome:
    episode: LabelledEpisode
    detected_at: float | None

    @property
    def delay(self) -> float | None:
        """Seconds from the episode's start to its detection; negative: found in the onset."""
        if self.detected_at is None:
            return None
        return self.detected_at - self.episode.start


def _affected(episode: LabelledEpisode, grace: float) -> tuple[float, float]:
    """When the patient is not at baseline: a gradual episode recovers as slowly as it
    came on, and an alert about it while it does is late, not false."""
    recovery = episode.start - episode.onset_at
    return episode.onset_at, episode.end + max(grace, recovery)


def _window(episode: LabelledEpisode, grace: float) -> tuple[float, float]:
    return episode.onset_at, episode.end + grace


def _clinical_by_patient(alarms: Iterable[Alarm]) -> dict[str, list[Alarm]]:
    opened: dict[str, list[Alarm]] = defaultdict(list)
    for alarm in alarms:
        if alarm.category == "clinical":
            opened[alarm.patient_id].append(alarm)
    for found in opened.values():
        found.sort(key=lambda a: a.opened_at)
    return opened


def _about(alarm: Alarm, vitals: Iterable[str]) -> bool:
    return not alarm.vitals.isdisjoint(vitals)


def match_episodes(
    episodes: Iterable[LabelledEpisode], alarms: Iterable[Alarm], grace: float
) -> list[EpisodeOutcome]:
    """Each episode with the opening time of the first clinical alarm about its vital in
    its window, if any."""
    opened = _clinical_by_patient(alarms)
    outcomes = []
    for episode in episodes:
        low, high = _window(episode, grace)
        first = next(
            (
                a.opened_at
                for a in opened.get(episode.patient_id, ())
                if low <= a.opened_at <= high and _about(a, (episode.vital,))
            ),
            None,
        )
        outcomes.append(EpisodeOutcome(episode, first))
    return outcomes


def false_alarms(
    episodes: Iterable[LabelledEpisode], alarms: Iterable[Alarm], grace: float
) -> list[Alarm]:
    """Clinical alarms outside every window of their patient that is about their vitals."""
    windows: dict[str, list[tuple[float, float, tuple[str, ...]]]] = defaultdict(list)
    for episode in episodes:
        windows[episode.patient_id].append((*_affected(episode, grace), episode.vitals))
    return [
        alarm
        for alarm in alarms
        if alarm.category == "clinical"
        and not any(
            low <= alarm.opened_at <= high and _about(alarm, vitals)
            for low, high, vitals in windows[alarm.patient_id]
        )
    ]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1): always one of the values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class KindScore:
    """One kind of episode: how many were detected, and how fast."""

    detected: int
    episodes: int
    median_delay: float | None
    p90_delay: float | None


@dataclass(frozen=True, slots=True)
class Score:
    """One detector on one scenario."""

    episodes: int
    detected: int
    long_episodes: int
    long_detected: int
    median_delay: float | None
    p90_delay: float | None
    alerts: int  # every alert opened, technical ones included
    false_alerts: int
    technical_alerts: int
    patient_hours: float
    missed: list[LabelledEpisode] = field(default_factory=list)
    outcomes: list[EpisodeOutcome] = field(default_factory=list)
    # Kind of alert (threshold:spo2, news2, ...) -> false alarms of that kind.
    false_by_kind: dict[str, int] = field(default_factory=dict)
    # Kind of episode -> (detected, total, median and p90 delay of those detected).
    by_episode_kind: dict[str, KindScore] = field(default_factory=dict)

    @property
    def sensitivity(self) -> float | None:
        return self.detected / self.episodes if self.episodes else None

    @property
    def sensitivity_long(self) -> float | None:
        return self.long_detected / self.long_episodes if self.long_episodes else None

    @property
    def false_per_patient_hour(self) -> float:
        return self.false_alerts / self.patient_hours if self.patient_hours else 0.0


def score(
    episodes: Sequence[LabelledEpisode],
    alarms: Sequence[Alarm],
    *,
    patient_hours: float,
    grace: float,
    long_episode_s: float = 60.0,
) -> Score:
    """Sensitivity, delays and false alarms of ``alarms`` against the labelled ``episodes``."""
    outcomes = match_episodes(episodes, alarms, grace)
    delays = [o.delay for o in outcomes if o.delay is not None]
    long = [o for o in outcomes if o.episode.duration >= long_episode_s]
    false = false_alarms(episodes, alarms, grace)
    return Score(
        episodes=len(outcomes),
        detected=len(delays),
        long_episodes=len(long),
        long_detected=sum(o.detected_at is not None for o in long),
        median_delay=statistics.median(delays) if delays else None,
        p90_delay=percentile(delays, 0.9),
        alerts=len(alarms),
        false_alerts=len(false),
        technical_alerts=sum(a.category == "technical" for a in alarms),
        patient_hours=patient_hours,
        missed=[o.episode for o in outcomes if o.detected_at is None],
        outcomes=list(outcomes),
        false_by_kind=dict(Counter(a.kind for a in false).most_common()),
        by_episode_kind=_by_episode_kind(outcomes),
    )


def _by_episode_kind(outcomes: Sequence[EpisodeOutcome]) -> dict[str, KindScore]:
    grouped: dict[str, list[EpisodeOutcome]] = defaultdict(list)
    for outcome in outcomes:
        grouped[outcome.episode.kind].append(outcome)
    result: dict[str, KindScore] = {}
    for kind in sorted(grouped):
        delays = [o.delay for o in grouped[kind] if o.delay is not None]
        median = statistics.median(delays) if delays else None
        result[kind] = KindScore(len(delays), len(grouped[kind]), median, percentile(delays, 0.9))
    return result


def alert_reduction(engine_alerts: int, naive_alerts: int) -> float | None:
    """1 - engine/naive: the share of the naive baseline's alarms (clinical and technical)
    the engine does not raise."""
    if naive_alerts == 0:
        return None
    return 1.0 - engine_alerts / naive_alerts
