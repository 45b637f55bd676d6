"""The anomaly engine over recorded readings, in virtual time (``healthsync eval``, the
reprocess job)."""

from __future__ import annotations

from collections.abc import Iterable

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from healthsync.stream.rulebook import RuleBook


def replay(
    readings: Iterable[Reading],
    settings: AnomalySettings | None = None,
    tick_s: float = 1.0,
    id_key: bytes | None = None,
) -> list[AlertEvent]:
    """Run the engine (with NEWS2 scoring) over readings in arrival order, as the processor
    would, and return every alert event. The clock ticks every `tick_s` of the readings'
    receive times in between, so devices that go quiet raise their offline alerts. With
    the processor's `id_key` (the keyring's, when encryption at rest is on) the alerts
    have the ids the processor gives them."""
    return [event for _, event in replay_timed(readings, settings, tick_s, id_key)]


def replay_timed(
    readings: Iterable[Reading],
    settings: AnomalySettings | None = None,
    tick_s: float = 1.0,
    id_key: bytes | None = None,
) -> list[tuple[float, AlertEvent]]:
    """:func:`replay`, each event with the receive-clock time it was raised at: a reading
    that arrives late raises its alert when it arrives, not when it was measured."""
    cfg = settings or AnomalySettings()
    book = RuleBook(cfg.patients)
    engine = AnomalyEngine(cfg, book, id_key=id_key)
    scores = News2Scores(lambda _patients: {}, freshness_s=900.0, scale_for=book.scale_for)
    events: list[tuple[float, AlertEvent]] = []
    next_tick: float | None = None
    last: float | None = None
    for reading in readings:
        if next_tick is None:
            next_tick = reading.received_at + tick_s
        while reading.received_at >= next_tick:
            events.extend((next_tick, e) for e in engine.tick(next_tick))
            next_tick += tick_s
        batch = Batch([reading])
        scores.process(batch)
        engine.process(batch)
        events.extend((reading.received_at, e) for e in batch.alert_events)
        last = reading.received_at
    if last is not None:
        events.extend((last + tick_s, e) for e in engine.tick(last + tick_s))
    return events
