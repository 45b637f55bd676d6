"""The two detectors compared: the clinical anomaly engine and a naive per-sample threshold.

Both are reduced to the same thing, a list of :class:`Alarm` (an alert that
opened: who, when, what, clinical or technical), which is all the scoring needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from healthsync.config import Settings
from healthsync.domain.alerts import AlertEvent
from healthsync.domain.readings import Reading
from healthsync.evaluation.generate import Band

__all__ = ["Alarm", "EngineRun", "naive_alarms", "run_engine"]

Category = Literal["clinical", "technical"]


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alert that opened: what a nurse would have been called for."""

    patient_id: str
    opened_at: float
    kind: str
    category: Category = "clinical"


def naive_alarms(readings: Iterable[Reading], bands: Mapping[str, Band]) -> list[Alarm]:
    """Per-sample thresholds, as a monitor without any anomaly logic alarms.

    Each sample of a vital outside its warning band raises one alarm when the
    previous sample of that vital for that patient was inside (or there was
    none): one alarm per excursion, however long it lasts. A dropout does not
    reset this; the last sample before it counts as the previous one.
    """
    was_inside: dict[tuple[str, str], bool] = {}
    alarms: list[Alarm] = []
    for reading in readings:
        for vital, value in reading.vitals.items():
            band = bands.get(vital)
            if band is None:
                continue
            low, high = band
            outside = (low is not None and value < low) or (high is not None and value > high)
            key = (reading.patient_id, vital)
            if outside and was_inside.get(key, True):
                alarms.append(Alarm(reading.patient_id, reading.ts, f"naive:{vital}"))
            was_inside[key] = not outside
    return alarms


@dataclass(frozen=True, slots=True)
class EngineRun:
    """What the engine raised, and which engine it was (the table says so)."""

    engine: str
    alarms: list[Alarm]


def _opened(events: Iterable[AlertEvent]) -> list[Alarm]:
    alarms = []
    for event in events:
        if event.type != "opened":
            continue
        alert = event.alert
        alarms.append(Alarm(alert.patient_id, alert.opened_at, alert.kind, alert.category))
    return alarms


def run_engine(readings: list[Reading], settings: Settings) -> EngineRun:
    """Replay the readings through the clinical anomaly engine in virtual time.

    The one place that knows the engine's interface; it runs with the
    ``[anomaly]`` settings, so a changed rule can be measured before it ships.
    """
    from healthsync.stream.engine import replay

    events = replay(readings, settings.anomaly)
    return EngineRun("anomaly engine (stream.engine.replay)", _opened(events))
