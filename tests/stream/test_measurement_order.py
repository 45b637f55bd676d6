"""Persistence judged in measurement order, as a monitor at the bedside sees its samples,
though the network delivers them out of order."""

from __future__ import annotations

from dataclasses import replace

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.readings import Reading
from tests.stream.engine_cases import T0, Run, kinds, reading
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


def pulse(t: float, value: float, arrives: float | None = None) -> Reading:
    """A heart rate of a monitor that sends every 15 s, measured at `t`, delivered at
    `arrives` (default `t`)."""
    measured = reading(t, heart_rate=value)
    return measured if arrives is None else replace(measured, received_at=T0 + arrives)


def test_a_late_critical_sample_just_before_the_run_confirms_it() -> None:
    run = Run()
    send(run, *(pulse(t, 112) for t in (-75, -60, -45, -30, -15)))
    # Above 140 at 0 and 15 s; the sample at 0 s is held up on the network and arrives
    # after the one at 15 s. On the monitor's 15 s schedule nothing was measured between
    # the two, so in measurement order the critical run has lasted 15 s: the critical
    # alert opens when the late sample arrives, not a sample (15 s) later.
    assert send(run, pulse(15, 146)) == []
    assert kinds(run.send(pulse(0, 145, arrives=20))) == [
        ("opened", "threshold:heart_rate", "critical")
    ]


def test_a_late_sample_further_back_than_the_schedule_allows_does_not_begin_the_run() -> None:
    run = Run()
    send(run, *(pulse(t, 112) for t in (-75, -60, -45, -30, -15)))
    # The late sample was measured two intervals before the run's first: the monitor
    # took one in between, not yet arrived, which may have been back inside.
    assert send(run, pulse(30, 146)) == []
    assert kinds(run.send(pulse(0, 145, arrives=35))) == []


def test_a_late_critical_sample_before_one_that_was_not_critical_confirms_nothing() -> None:
    run = Run()
    send(run, *(reading(t, heart_rate=112) for t in (-20, -15, -10, -5)))
    # A 5 s monitor: 145 at 0 s (late), 130 at 5 s, 145 at 10 s. The run above 120 has
    # lasted 10 s in measurement order, so a warning opens; the two critical samples are
    # not consecutive (130 lies between them), so it is not a critical one.
    send(run, reading(5, heart_rate=130), reading(10, heart_rate=145))
    late = replace(reading(0, heart_rate=145), received_at=T0 + 11)
    assert kinds(run.send(late)) == [("opened", "threshold:heart_rate", "warning")]


def test_a_late_sample_measured_before_one_back_inside_begins_no_run_that_goes_on() -> None:
    run = Run()
    send(run, spo2(-10, 93), spo2(-5, 93), spo2(5, 93))
    # 88 at 0 s arrives after the 93 measured at 5 s: its run ended there. The next low
    # sample, at 10 s, begins a run of its own, which has lasted 10 s at 20 s, not at
    # 10 s as if the two low samples had been consecutive.
    events = send(run, spo2(0, 88, arrives=6), spo2(10, 88), spo2(15, 88))
    assert opened(events) == []
    assert opened(run.send(spo2(20, 88))) == [("threshold:spo2", 20)]


def test_late_samples_measured_before_one_back_inside_still_make_their_run_last() -> None:
    run = Run()
    send(run, spo2(-10, 93), spo2(-5, 93), spo2(12, 93))
    # Below 90 at 0, 5 and 10 s, all three delivered after the 93 measured at 12 s: in
    # measurement order the fall lasted 10 s over three samples.
    assert opened(send(run, spo2(0, 88, arrives=13), spo2(5, 88, arrives=14))) == []
    assert opened(run.send(spo2(10, 88, arrives=15))) == [("threshold:spo2", 10)]


def test_a_late_critical_sample_escalates_an_open_alert_in_measurement_order() -> None:
    run = Run()
    send(run, *(reading(t, heart_rate=112) for t in (-20, -15, -10, -5)))
    opening = send(run, *(reading(t, heart_rate=130) for t in (0, 5, 10, 15)))
    assert kinds(opening) == [("opened", "threshold:heart_rate", "warning")]
    # Above 140 at 20, 25 and 30 s; the sample at 20 s arrives after the other two. In
    # measurement order the critical values have lasted 10 s: the alert escalates when
    # the late sample arrives, not a sample later.
    assert send(run, reading(25, heart_rate=145), reading(30, heart_rate=146)) == []
    late = replace(reading(20, heart_rate=145), received_at=T0 + 31)
    assert kinds(run.send(late)) == [("escalated", "threshold:heart_rate", "critical")]


def test_an_escalation_under_way_in_state_saved_by_the_earlier_layout_carries_on() -> None:
    run = Run()
    send(run, *(reading(t, heart_rate=112) for t in (-20, -15, -10, -5)))
    [opened] = send(run, *(reading(t, heart_rate=130) for t in (0, 5, 10, 15)))
    send(run, reading(20, heart_rate=145))
    # As saved when an escalation kept its own samples: their first and their count in
    # the fourth and fifth places, the critical samples' places empty, twelve in all.
    saved = dict(run.states)
    new = saved["P-1"]["trackers"]["threshold:heart_rate"]
    assert new[7:9] == [T0 + 20, 1]
    old = [*new[:3], new[7], new[8], *new[5:7], None, 0, *new[9:12]]
    saved["P-1"]["trackers"]["threshold:heart_rate"] = old
    restarted = Run(
        load_states=lambda patients: {p: saved[p] for p in (patients or saved)},
        load_open=lambda: [opened.alert],
    )
    escalated = restarted.send(reading(30, heart_rate=146))
    assert kinds(escalated) == [("escalated", "threshold:heart_rate", "critical")]


def test_a_late_sample_from_before_the_run_is_no_evidence_of_it() -> None:
    run = Run()
    send(run, spo2(-15, 93), spo2(-10, 93), spo2(-5, 93), spo2(0, 88), spo2(5, 93))
    # Below 90 from 10 s on. A sample of 88 measured at -7 s arrives meanwhile: 93 at -5
    # and at 5 s lie between it and the run, so it is not part of it, and the alert's
    # evidence (what a clinician reads) holds the run's samples alone.
    send(run, spo2(10, 88), spo2(15, 88), spo2(-7, 88, arrives=16))
    [event] = run.send(spo2(20, 88))
    assert [t - T0 for t, _value in event.alert.evidence] == [10, 15, 20]
