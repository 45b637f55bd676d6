"""Persistence judged in measurement order, as a monitor at the bedside sees its samples,
though the network delivers them out of order."""

from __future__ import annotations

from dataclasses import replace

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.readings import Reading
from tests.stream.engine_cases import T0, Run, reading
from tests.stream.test_alarm_rules import opened, restarted


def spo2(t: float, value: float, arrives: float | None = None) -> Reading:
    """An SpO2 sample of a 5 s monitor measured at `t`, delivered at `arrives` (default `t`)."""
    measured = reading(t, spo2=value, heart_rate=76)
    return measured if arrives is None else replace(measured, received_at=T0 + arrives)


def send(run: Run, *samples: Reading) -> list[AlertEvent]:
    return [e for s in samples for e in run.send(s)]


def test_a_late_sample_completes_the_run_a_later_sample_back_inside_ended() -> None:
    run = Run()
    send(run, spo2(-10, 93), spo2(-5, 93))
    # Below 90 at 0, 5 and 10 s, back at 93 at 12 s; the sample at 10 s is delayed and
    # arrives after the one at 12 s. In measurement order the fall lasted 10 s over
    # three samples: the alert opens when the late sample arrives, dated as measured.
    events = send(run, spo2(0, 88), spo2(5, 88), spo2(12, 93))
    assert opened(events) == []
    run = restarted(run)  # the run that ended is in the saved state
    assert opened(run.send(spo2(10, 88, arrives=13))) == [("threshold:spo2", 10)]


def test_a_late_sample_after_the_last_one_back_inside_begins_the_run_earlier() -> None:
    run = Run()
    send(run, spo2(-20, 93), spo2(-15, 93), spo2(-10, 88), spo2(-5, 93))
    # The samples at 0, 5 and 10 s are below; the one at 0 s arrives after the one at
    # 5 s. Nothing was back inside between -5 s and it, so the run began at 0 s and
    # has lasted 10 s at the sample measured at 10 s, as it has in measurement order.
    events = send(run, spo2(5, 88), spo2(0, 88, arrives=6))
    assert opened(events) == []
    assert opened(run.send(spo2(10, 88))) == [("threshold:spo2", 10)]


def test_a_late_sample_back_inside_breaks_the_run_where_it_was_measured() -> None:
    run = Run()
    send(run, spo2(-10, 93), spo2(-5, 93))
    # Below at 0 and 6 s; a sample at 3 s, back at 93, arrives after them. In
    # measurement order the run that goes on began at 6 s: it lasts 10 s at 16 s, not
    # at 22 s as if nothing before the late sample counted any more.
    events = send(run, spo2(0, 88), spo2(6, 88), spo2(3, 93, arrives=7), spo2(12, 88))
    assert opened(events) == []
    assert opened(run.send(spo2(16, 88))) == [("threshold:spo2", 16)]


def test_a_vital_flapping_at_its_limit_keeps_one_ended_run_in_the_saved_state() -> None:
    run = Run()
    sizes = []
    for cycle in range(30):
        t = cycle * 10
        send(run, spo2(t, 88), spo2(t + 5, 93))  # each run ends before it could last
        sizes.append(len(str(run.states["P-1"]["trackers"])))
    assert sizes[-1] <= sizes[5], "the state grows with every run that ended"
