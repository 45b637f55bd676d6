"""The detectors compared: the clinical anomaly engine, a bedside monitor, a naive threshold.

Each is reduced to the same thing, a list of :class:`Alarm` (an alert that
opened: who, when, about which vitals, clinical or technical), which is all the
scoring needs.

- *naive*: every sample beyond a warning limit after one inside it alarms.
- *monitor*: what bedside monitors do (and what Görges et al., Anesth Analg
  2009, measured): a plain threshold with an alarm delay. A vital alarms once
  it has been beyond its high or its low warning limit for ``delay_s``
  (critical values included), judged on the device's own clock, as the
  monitor at the bedside sees its samples in order. Its alarm reaches the
  ward's central station over the same network as the reading that raised it,
  so it is timed at that reading's arrival, as the engine's alarms are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from healthsync.config import Settings
from healthsync.domain.alerts import AlertEvent
from healthsync.domain.readings import Reading
from healthsync.evaluation.generate import Band

__all__ = ["MONITOR_DELAY_S", "Alarm", "EngineRun", "monitor_alarms", "naive_alarms", "run_engine"]

Category = Literal["clinical", "technical"]

# The usual alarm delay of bedside monitors (14-19 s in Görges et al. 2009).
MONITOR_DELAY_S = 15.0


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alert that opened: what a nurse would have been called for, and about what."""

    patient_id: str
    opened_at: float
    kind: str
    category: Category = "clinical"
    vitals: frozenset[str] = frozenset()  # the parameters behind it
    device_id: str | None = None  # the device the alert names (a technical one is about it)


def _outside(band: Band, value: float) -> bool:
    low, high = band
    return (low is not None and value < low) or (high is not None and value > high)


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
            outside = _outside(band, value)
            key = (reading.patient_id, vital)
            if outside and was_inside.get(key, True):
                alarms.append(
                    Alarm(
                        reading.patient_id, reading.ts, f"naive:{vital}", vitals=frozenset({vital})
                    )
                )
            was_inside[key] = not outside
    return alarms


def monitor_alarms(
    readings: Iterable[Reading], bands: Mapping[str, Band], delay_s: float = MONITOR_DELAY_S
) -> list[Alarm]:
    """A plain threshold with an alarm delay, as bedside monitors alarm.

    An excursion starts at the first sample beyond the warning limit; the alarm
    sounds at the first sample of it taken ``delay_s`` or more later (so one
    excursion alarms once). A sample back inside ends the excursion. The high and
    the low limit are separate alarm conditions, as a monitor's "HR high" and "HR
    low" are: a sample beyond the other limit ends the excursion and starts one
    of its own.
    """
    since: dict[tuple[str, str], tuple[bool, float]] = {}
    alarmed: set[tuple[str, str]] = set()
    alarms: list[Alarm] = []
    for reading in sorted(readings, key=lambda r: r.ts):
        for vital, value in reading.vitals.items():
            band = bands.get(vital)
            if band is None:
                continue
            key = (reading.patient_id, vital)
            if not _outside(band, value):
                since.pop(key, None)
                alarmed.discard(key)
                continue
            low = band[0] is not None and value < band[0]
            if key in since and since[key][0] != low:
                del since[key]
                alarmed.discard(key)
            start = since.setdefault(key, (low, reading.ts))[1]
            if key not in alarmed and reading.ts - start >= delay_s:
                alarmed.add(key)
                alarms.append(
                    Alarm(
                        reading.patient_id,
                        reading.received_at,
                        f"monitor:{vital}",
                        vitals=frozenset({vital}),
                    )
                )
    alarms.sort(key=lambda a: a.opened_at)
    return alarms


@dataclass(frozen=True, slots=True)
class EngineRun:
    """What the engine raised, and which engine it was (the table says so)."""

    engine: str
    alarms: list[Alarm]


def _opened(events: Iterable[tuple[float, AlertEvent]]) -> list[Alarm]:
    alarms = []
    for at, event in events:
        if event.type != "opened":
            continue
        alert = event.alert
        drivers = frozenset(alert.drivers) | ({alert.vital} if alert.vital else set())
        alarms.append(
            Alarm(alert.patient_id, at, alert.kind, alert.category, drivers, alert.device_id)
        )
    return alarms


def run_engine(readings: list[Reading], settings: Settings) -> EngineRun:
    """Replay the readings through the clinical anomaly engine in virtual time.

    The one place that knows the engine's interface; it runs with the
    ``[anomaly]`` settings, so a changed rule can be measured before it ships.
    An alarm's time is when the engine raised it on the receive clock: a reading
    that arrived late cannot have raised anything earlier.
    """
    from healthsync.stream.replay import replay_timed

    events = replay_timed(readings, settings.anomaly)
    return EngineRun("anomaly engine (stream.replay)", _opened(events))
