"""A device's usual interval is the one it measures at, whatever the network does with its
readings: a device that uploads a backlog at once (a wearable back in range, a gateway
back online) still measures every minute, or every 15 minutes, and is judged so."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from healthsync.domain.alerts import AlertEvent
from tests.stream.engine_cases import T0, Run, reading
from tests.stream.test_alarm_rules import opened


def uploaded(
    run: Run, device: str, measured: range, at: float, **vitals: float
) -> list[AlertEvent]:
    """Readings measured at `measured` (s), all received a millisecond apart from `at`."""
    events: list[AlertEvent] = []
    for i, t in enumerate(measured):
        sent = replace(reading(t, "P-1", device, **vitals), received_at=T0 + at + i / 1000)
        events += run.send(sent)
    return events


def offline_opened(events: list[AlertEvent]) -> list[float]:
    return [at for kind, at in opened(events) if kind.startswith("device_offline:")]


def test_a_wearable_that_uploads_its_backlog_is_not_missed_between_its_next_readings() -> None:
    run = Run()
    events: list[AlertEvent] = []
    for t in range(0, 660, 60):
        events += run.send(reading(t, device="wr-1", heart_rate=72), now=t)
    events += run.send(now=900)
    assert offline_opened(events) == [900], "out of range: missed"
    # Back in range at 4200 s: the hour it kept arrives at once.
    uploaded(run, "wr-1", range(660, 4200, 60), at=4200, heart_rate=72)
    # Then a reading a minute as before, with the engine's clock ticking between them.
    events = []
    for t in range(4200, 5400, 60):
        events += run.send(reading(t, device="wr-1", heart_rate=72), now=t)
        events += run.send(now=t + 50)
    assert offline_opened(events) == [], "a device a minute apart is missed after 3 minutes"


def test_a_cuff_that_uploads_its_backlog_is_still_a_cuff() -> None:
    # A cuff cycling every 15 minutes whose gateway was down for 8 hours: its next
    # measurement past the limit is one of its own, with no second one soon to wait for.
    run = Run()
    cycle = 900
    for t in (7, 7 + cycle):
        run.send(reading(t, device="cuff-1", bp_sys=118))
    back = 7 + 34 * cycle
    uploaded(run, "cuff-1", range(7 + 2 * cycle, back, cycle), at=back, bp_sys=118)
    events = run.send(reading(back, device="cuff-1", bp_sys=80))
    assert opened(events) == [("threshold:bp_sys", back)]


def test_a_device_clock_saved_without_its_measured_time_still_loads() -> None:
    # Saved before the measured time was kept: [received, interval, count].
    store: dict[str, Any] = {"P-1": {"devices": {"d1": [T0 + 60, 5.0, 13]}}}
    run = Run(load_states=lambda ps: {p: store[p] for p in (ps or store) if p in store})
    for t in (65, 75):
        run.send(reading(t, heart_rate=72))
    last, interval, count, *_ = run.states["P-1"]["devices"]["d1"]
    assert (last, count) == (T0 + 75, 15)
    # The first reading gives the measured time, the second a 10 s step: the interval
    # learnt before moves a fifth of the way towards it.
    assert abs(interval - 6.0) < 1e-6, "the interval learnt before goes on"


def test_a_device_whose_clock_stands_still_is_learnt_from_its_arrivals() -> None:
    # Its readings all carry the same time (told apart by their sequence numbers):
    # when they arrive is all that says how often it sends, and when it stops.
    run = Run()
    for t in range(0, 600, 60):
        run.send(replace(reading(0, device="wr-2", heart_rate=72), received_at=T0 + t))
    assert offline_opened(run.send(now=700)) == [], "within 3 minutes of its last reading"
    assert offline_opened(run.send(now=800)) == [800]
