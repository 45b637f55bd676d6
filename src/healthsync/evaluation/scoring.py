"""Scoring alarms against labelled episodes: pure functions, no I/O.

Definitions (README "Alarm quality" says the same):

- An episode's *window* runs from its onset (when the vital began to move;
  its start for an abrupt one) to its end plus the grace period.
- An episode is *detected* by the first clinical alarm for that patient that
  opens inside its window. Its *delay* is that alarm's opening time minus the
  episode's start (when the vital crossed its limit), and 0 for an alarm that
  opened during the onset: warning before the limit is reached is early, not
  false. An alert that opened before the window does not detect the episode,
  even if it is still open: it was raised for something else, and counting it
  would reward alerts that never resolve.
- A *false alarm* is a clinical alarm that opened outside every window of
  that patient. Technical alarms (device offline) are counted apart and are
  neither detections nor false alarms.
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
        if self.detected_at is None:
            return None
        return max(0.0, self.detected_at - self.episode.start)


def _window(episode: LabelledEpisode, grace: float) -> tuple[float, float]:
    return episode.onset_at, episode.end + grace


def _clinical_by_patient(alarms: Iterable[Alarm]) -> dict[str, list[float]]:
    opened: dict[str, list[float]] = defaultdict(list)
    for alarm in alarms:
        if alarm.category == "clinical":
            opened[alarm.patient_id].append(alarm.opened_at)
    for times in opened.values():
        times.sort()
    return opened


def match_episodes(
    episodes: Iterable[LabelledEpisode], alarms: Iterable[Alarm], grace: float
) -> list[EpisodeOutcome]:
    """Each episode with the opening time of the first clinical alarm in its window, if any."""
    opened = _clinical_by_patient(alarms)
    outcomes = []
    for episode in episodes:
        low, high = _window(episode, grace)
        first = next((t for t in opened.get(episode.patient_id, ()) if low <= t <= high), None)
        outcomes.append(EpisodeOutcome(episode, first))
    return outcomes


def false_alarms(
    episodes: Iterable[LabelledEpisode], alarms: Iterable[Alarm], grace: float
) -> list[Alarm]:
    """Clinical alarms that opened outside every episode window of their patient."""
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for episode in episodes:
        windows[episode.patient_id].append(_window(episode, grace))
    return [
        alarm
        for alarm in alarms
        if alarm.category == "clinical"
        and not any(low <= alarm.opened_at <= high for low, high in windows[alarm.patient_id])
    ]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1): always one of the values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Score:
    """One detector on one scenario."""

    episodes: int
    detected: int
    long_episodes: int
    long_detected: int
    median_delay: float | None
    p90_delay: float | None
    alerts: int
    false_alerts: int
    technical_alerts: int
    patient_hours: float
    missed: list[LabelledEpisode] = field(default_factory=list)
    # Kind of alert (threshold:spo2, news2, ...) -> false alarms of that kind.
    false_by_kind: dict[str, int] = field(default_factory=dict)
    # Kind of episode -> (detected, total, median delay of those detected).
    by_episode_kind: dict[str, tuple[int, int, float | None]] = field(default_factory=dict)

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
        alerts=sum(a.category == "clinical" for a in alarms),
        false_alerts=len(false),
        technical_alerts=sum(a.category == "technical" for a in alarms),
        patient_hours=patient_hours,
        missed=[o.episode for o in outcomes if o.detected_at is None],
        false_by_kind=dict(Counter(a.kind for a in false).most_common()),
        by_episode_kind=_by_episode_kind(outcomes),
    )


def _by_episode_kind(
    outcomes: Sequence[EpisodeOutcome],
) -> dict[str, tuple[int, int, float | None]]:
    grouped: dict[str, list[EpisodeOutcome]] = defaultdict(list)
    for outcome in outcomes:
        grouped[outcome.episode.kind].append(outcome)
    result: dict[str, tuple[int, int, float | None]] = {}
    for kind in sorted(grouped):
        delays = [o.delay for o in grouped[kind] if o.delay is not None]
        median = statistics.median(delays) if delays else None
        result[kind] = (len(delays), len(grouped[kind]), median)
    return result


def alert_reduction(engine_alerts: int, naive_alerts: int) -> float | None:
    """1 - engine/naive: the share of the naive baseline's alarms the engine does not raise."""
    if naive_alerts == 0:
        return None
    return 1.0 - engine_alerts / naive_alerts
