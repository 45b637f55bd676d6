"""Scoring the technical alarms against the labelled dropouts: pure functions, no I/O.

A nurse is called for a device that stopped sending as for a patient whose
vitals moved, so the engine's `device_offline` alerts are scored too, apart
from the clinical ones (docs/ALARMS.md says the same):

- A *dropout* is a labelled stretch in which the patient's devices sent
  nothing. Seen from the ward, a device is silent from the dropout's start
  until the first reading it measured after the dropout arrives (which may be
  late, and for a cuff measuring every 15 minutes, long after): that is the
  dropout's *window* for that device. Dropouts with no reading measured
  between them are one silence, scored once. A dropout that runs past the end
  of the scenario is cut there; a device that never sends again is silent for
  good.
- It is *detected* by the first technical alarm for that patient that opens
  in the window of the device the alarm is about. Its *delay* is that alarm's
  opening time minus the dropout's start, so it includes the silence the
  engine waits for before it calls a device offline (three of the device's
  intervals, at least ``anomaly.offline_min_s``): a dropout shorter than
  that is not expected to be detected, and the report gives the long ones
  apart.
- A *false* technical alarm opened outside every dropout window of its
  device: a device called offline while its readings were arriving.

The bedside monitor and the naive threshold raise no technical alarms; only the
engine's row has these figures.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from healthsync.domain.readings import Reading
from healthsync.evaluation.detectors import Alarm
from healthsync.evaluation.generate import Artefact
from healthsync.evaluation.scoring import percentile

__all__ = ["DropoutScore", "score_dropouts"]


@dataclass(frozen=True, slots=True)
class DropoutScore:
    """The technical alarms of one detector on one scenario, against its dropouts."""

    dropouts: int
    detected: int
    long_dropouts: int  # lasting at least the scenario's long-episode duration
    long_detected: int
    median_delay: float | None
    p90_delay: float | None
    false_alerts: int  # technical alarms outside every dropout window of their device


Window = tuple[float, float]
# Patient -> device -> the readings it sent.
Sent = dict[str, dict[str, list[Reading]]]


def _sent(readings: Iterable[Reading]) -> Sent:
    sent: Sent = defaultdict(lambda: defaultdict(list))
    for reading in readings:
        sent[reading.patient_id][reading.device_id].append(reading)
    return sent


def _merged(dropouts: Iterable[Artefact], sent: Sent) -> list[Artefact]:
    """The dropouts, those of a patient with no reading measured between them made one."""
    merged: list[Artefact] = []
    for dropout in sorted(dropouts, key=lambda d: (d.patient_id, d.start)):
        last = merged[-1] if merged else None
        if last is not None and last.patient_id == dropout.patient_id:
            devices = sent[dropout.patient_id].values()
            between = any(last.end <= r.ts < dropout.start for rs in devices for r in rs)
            if not between:
                merged[-1] = replace(last, end=max(last.end, dropout.end))
                continue
        merged.append(dropout)
    return merged


def _windows(dropouts: Sequence[Artefact], sent: Sent, until: float) -> list[dict[str, Window]]:
    """Each dropout's window for each of its patient's devices: from its start until
    that device's first reading measured after it arrived (for good if none did)."""
    windows = []
    for dropout in dropouts:
        end = min(dropout.end, until)
        found = {}
        for device, readings in sent[dropout.patient_id].items():
            back = min((r.received_at for r in readings if r.ts >= end), default=math.inf)
            found[device] = (dropout.start, max(end, back))
        windows.append(found)
    return windows


def _inside(alarm: Alarm, windows: dict[str, Window]) -> bool:
    """Whether `alarm` opened while the device it is about was silent (any of the
    patient's devices, for an alarm that names none)."""
    if alarm.device_id is None:
        candidates = list(windows.values())
    elif alarm.device_id in windows:
        candidates = [windows[alarm.device_id]]
    else:
        return False  # a device that sent nothing was never seen, so never silent
    return any(low <= alarm.opened_at <= high for low, high in candidates)


def score_dropouts(
    artefacts: Sequence[Artefact],
    alarms: Sequence[Alarm],
    readings: Sequence[Reading],
    *,
    until: float,
    long_dropout_s: float = 60.0,
) -> DropoutScore:
    """Dropouts detected by a technical alarm, how soon, and technical alarms raised
    while their device's readings were arriving. `until` is when the scenario ends."""
    sent = _sent(readings)
    dropouts = _merged((a for a in artefacts if a.kind == "dropout"), sent)
    windows = _windows(dropouts, sent, until)
    technical: dict[str, list[Alarm]] = defaultdict(list)
    for alarm in sorted(alarms, key=lambda a: a.opened_at):
        if alarm.category == "technical":
            technical[alarm.patient_id].append(alarm)
    delays: list[float] = []
    long_dropouts = long_detected = 0
    by_patient: dict[str, list[dict[str, Window]]] = defaultdict(list)
    for dropout, window in zip(dropouts, windows, strict=True):
        by_patient[dropout.patient_id].append(window)
        first = next((a for a in technical[dropout.patient_id] if _inside(a, window)), None)
        long = min(dropout.end, until) - dropout.start >= long_dropout_s
        long_dropouts += long
        if first is not None:
            delays.append(first.opened_at - dropout.start)
            long_detected += long
    false = sum(
        not any(_inside(alarm, window) for window in by_patient[patient])
        for patient, raised in technical.items()
        for alarm in raised
    )
    return DropoutScore(
        dropouts=len(dropouts),
        detected=len(delays),
        long_dropouts=long_dropouts,
        long_detected=long_detected,
        median_delay=statistics.median(delays) if delays else None,
        p90_delay=percentile(delays, 0.9),
        false_alerts=false,
    )
