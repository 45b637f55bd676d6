"""Readings, an engine driven as the processor drives it, and the helpers that the
anomaly engine's tests share."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import orjson

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from healthsync.stream.rulebook import RuleBook

T0 = 1_700_000_000.0
_ids = itertools.count()


def reading(
    t: float, patient: str = "P-1", device: str = "d1", **vitals: float | str | bool
) -> Reading:
    extra: dict[str, Any] = {}
    for key in ("on_oxygen", "consciousness"):
        if key in vitals:
            extra[key] = vitals.pop(key)
    return Reading(
        reading_id=f"r{next(_ids)}",
        device_id=device,
        patient_id=patient,
        ts=T0 + t,
        received_at=T0 + t,
        vitals={k: float(v) for k, v in vitals.items()},
        **extra,
    )


class Run:
    """An engine with NEWS2 in front of it, fed one reading per batch, as the processor does."""

    def __init__(self, settings: AnomalySettings | None = None, **kwargs: Any) -> None:
        self.settings = settings or AnomalySettings()
        self.book = RuleBook(self.settings.patients, kwargs.pop("load_rules", None))
        self.engine = AnomalyEngine(self.settings, self.book, **kwargs)
        self.news2 = News2Scores(lambda _p: {}, 900, scale_for=self.book.scale_for)
        self.states: dict[str, dict[str, Any]] = {}
        self.artefacts: list[Any] = []

    def send(self, *readings: Reading, now: float | None = None) -> list[AlertEvent]:
        batch = Batch(list(readings), now=None if now is None else T0 + now)
        self.book.process(batch)
        self.news2.process(batch)
        self.engine.process(batch)
        self.states.update({p: orjson.loads(state) for p, state in batch.states.items()})
        self.artefacts.extend(batch.artefacts)
        return batch.alert_events


def kinds(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.alert.kind, e.alert.severity) for e in events]


NORMAL: dict[str, Any] = {"resp_rate": 16, "spo2": 97, "heart_rate": 75, "temp": 37, "bp_sys": 125}


def series(
    run: Run,
    start: float,
    step: float,
    values: Sequence[float],
    vital: str = "spo2",
    **fixed: Any,
) -> list[Any]:
    """Send one reading of `vital` per value, `step` s apart from `start`, with the `fixed`
    vitals; every event they raised."""
    events: list[AlertEvent] = []
    for i, value in enumerate(values):
        events += run.send(reading(start + i * step, **dict(fixed, **{vital: value})))
    return events
