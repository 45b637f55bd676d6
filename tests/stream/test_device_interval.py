"""A device's usual interval is the one it measures at, whatever the network does with its
readings: a device that uploads a backlog at once (a wearable back in range, a gateway
back online) still measures every minute, or every 15 minutes, and is judged so."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

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


def saved(devices: dict[str, list[Any]]) -> Run:
    """An engine that loads P-1's state as saved with these device clocks."""
    store: dict[str, Any] = {"P-1": {"devices": devices}}
    return Run(load_states=lambda ps: {p: store[p] for p in (ps or store) if p in store})


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
    run = saved({"d1": [T0 + 60, 5.0, 13]})
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


def late_monitor(delays: list[float]) -> list[tuple[float, float]]:
    """A 15 s monitor whose i-th reading is delayed `delays[i]` s, then silent, the engine's
    clock ticking every second until two minutes after the last arrival. For each offline
    alert: when it opened, as seconds after that last arrival, and the silence it saw."""
    run = Run()
    arrivals = sorted((15 * i + d, 15 * i) for i, d in enumerate(delays))
    alerts: list[tuple[float, float]] = []
    heard = 0.0
    arriving = iter(arrivals)
    upcoming = next(arriving, None)
    for tick in range(int(arrivals[-1][0]) + 120):
        while upcoming is not None and upcoming[0] <= tick:
            at, measured = upcoming
            late = replace(reading(measured, device="mon-1", heart_rate=72), received_at=T0 + at)
            run.send(late, now=at)
            heard, upcoming = at, next(arriving, None)
        opened_now = offline_opened(run.send(now=tick))
        alerts += [(tick - arrivals[-1][0], tick - heard) for _ in opened_now]
    return alerts


# Delays of 1-29 s, which reorder the readings, then a reading delayed 0.2 s followed
# by two delayed 31.5 and 20 s: 46.3 s of silence on the receive clock.
_DELAYS = [3, 27, 12, 22, 6, 29, 1, 18, 25, 9] * 4 + [3, 0.2, 31.5, 20] + [3, 27, 12, 22] * 3


def test_a_monitor_whose_readings_arrive_late_is_not_called_offline_between_them() -> None:
    alerts = late_monitor(_DELAYS)
    assert [a for a in alerts if a[0] < 0] == [], "offline while its readings come"


def test_a_monitor_on_a_slow_network_that_stops_is_still_called_offline() -> None:
    # Three intervals (45 s) widened by half its delays' range (up to 31.3 s): 61 s at most.
    ((after, silence),) = late_monitor(_DELAYS)
    assert after > 0
    assert 45 < silence <= 61


def test_a_new_monitor_on_a_slow_network_is_not_called_offline_between_its_readings() -> None:
    # Its first two readings came at once, and the third spent 31.5 s on the network: 46 s
    # of silence, past three intervals (45 s), before anything about its delays was known.
    alerts = late_monitor([0.5, 0.5, 31.5, 20, *_DELAYS])
    assert [a for a in alerts if a[0] < 0] == [], "offline while its first readings come"
    # Once they are known, it is called offline within the limit they set when it stops.
    ((after, silence),) = alerts
    assert after > 0
    assert 45 < silence <= 61


def test_a_backlog_does_not_widen_the_offline_limit_of_a_wearable() -> None:
    # Its hour of readings arrives at once, up to an hour late: those delays are left out
    # (learnt, they would double the limit to 6 minutes). Its last minute's delays count.
    run = Run()
    for t in range(0, 660, 60):
        run.send(reading(t, device="wr-1", heart_rate=72), now=t)
    uploaded(run, "wr-1", range(660, 4200, 60), at=4200, heart_rate=72)
    for t in range(4200, 5400, 60):
        run.send(reading(t, device="wr-1", heart_rate=72), now=t)
    silent = [t - 5340 for t in range(5340, 5800, 10) if offline_opened(run.send(now=t))]
    assert len(silent) == 1
    assert 180 < silent[0] <= 240


def test_a_device_clock_saved_without_its_delays_learns_them() -> None:
    # Saved before the delays were kept: [received, interval, count, measured, share].
    run = saved({"d1": [T0 + 60, 5.0, 13, T0 + 60, 1.0]})
    for t, delay in ((65, 2.0), (70, 8.0)):
        run.send(replace(reading(t, heart_rate=72), received_at=T0 + t + delay))
    *_, measured, _share, low, high = run.states["P-1"]["devices"]["d1"]
    # The range takes in the longer delay at once and lets go of the shorter slowly.
    assert (measured, high) == (T0 + 70, 8.0)
    assert low == pytest.approx(0.95 * 2.0 + 0.05 * 8.0)


def test_a_wearable_whose_clock_is_set_an_hour_forward_is_still_offline_in_minutes() -> None:
    # Its readings then look measured an hour after they arrive. The delays start again
    # from there (kept as a range, an hour wide, they would double the limit to 6 minutes).
    run = Run()
    for t in range(0, 1200, 60):
        run.send(replace(reading(t, device="wr-1", heart_rate=72), received_at=T0 + t + 1))
    for t in range(1200, 2400, 60):
        moved = replace(reading(t + 3600, device="wr-1", heart_rate=72), received_at=T0 + t + 1)
        run.send(moved, now=t + 1)
    silent = [t - 2341 for t in range(2341, 2800, 10) if offline_opened(run.send(now=t))]
    assert len(silent) == 1
    assert 180 < silent[0] <= 200
