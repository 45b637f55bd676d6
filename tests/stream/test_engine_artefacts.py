"""The anomaly engine's artefacts: probe dips and samples of poor signal are set aside,
and a real fall is neither taken for one nor raised late."""

from __future__ import annotations

import pytest

from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from healthsync.wire import WireError, parse_line
from tests.stream.engine_cases import T0, Run, reading, series


def test_one_sample_dip_is_an_artefact_not_an_alarm() -> None:
    run = Run()
    run.send(reading(0, spo2=97), reading(5, spo2=96))
    assert run.send(reading(10, spo2=72)) == [], "held until the next sample"
    assert run.send(reading(15, spo2=96)) == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 72)]


def test_a_sudden_fall_that_stays_is_confirmed_once_it_stands_for_15_s() -> None:
    run = Run()
    run.send(reading(0, spo2=97))
    assert run.send(reading(5, spo2=78)) == []
    assert run.send(reading(10, spo2=79)) == []
    assert run.send(reading(15, spo2=78)) == [], "a slipping probe dips for up to 3 samples"
    [opened] = run.send(reading(20, spo2=78))
    assert (opened.alert.kind, opened.alert.severity) == ("threshold:spo2", "critical")
    assert opened.alert.opened_at == T0 + 20, "raised when the new level had stood for 15 s"
    assert opened.alert.evidence[0] == (T0 + 5, 78)
    assert run.artefacts == []


def test_a_jump_nothing_contradicts_stands_once_the_artefact_window_passes() -> None:
    run = Run()
    run.send(reading(0, spo2=97))
    assert run.send(reading(5, spo2=78)) == []
    assert run.send(now=15) == [], "still inside the 15 s artefact window"
    assert run.send(now=21) == [], "the jump stands, but one sample confirms no critical value"
    # It stood: the next sample is no jump from it, and confirms it at once.
    [opened] = run.send(reading(25, spo2=79))
    assert (opened.alert.severity, opened.alert.opened_at) == ("critical", T0 + 25)
    assert opened.alert.window_s == 20


def test_a_dip_of_up_to_10_s_is_an_artefact_not_a_critical_alarm() -> None:
    run = Run()
    assert series(run, 0, 5, [97, 96, 72, 74, 96, 97]) == [], "2 samples, 5 s apart"
    assert series(run, 30, 2, [97, 80, 78, 81, 79, 82, 96, 97]) == [], "5 samples over 8 s"
    assert [a.value for a in run.artefacts] == [72, 74, 80, 78, 81, 79, 82]


def test_a_fast_real_fall_is_neither_an_artefact_nor_late() -> None:
    run = Run()
    # The heart rate climbs with the falling saturation, as it does in hypoxaemia.
    events = [
        e
        for i, (spo2, hr) in enumerate([(97, 80), (97, 80), (86, 90), (75, 100), (64, 110)])
        for e in run.send(reading(i * 5, spo2=spo2, heart_rate=hr))
    ]
    events += series(run, 25, 5, [64, 64], heart_rate=110)
    assert run.artefacts == []
    # Below 90 from 10 s: a monitor with a 15 s delay alarms at 25 s.
    [opened] = [e.alert for e in events if e.type == "opened"]
    assert (opened.kind, opened.opened_at) == ("threshold:spo2", T0 + 20)
    assert [e.alert.updated_at for e in events if e.alert.severity == "critical"] == [T0 + 25]


def test_a_slow_device_gets_artefact_screening_too() -> None:
    run = Run()
    events = series(run, 0, 60, [97, 96, 97, 72, 96, 97])
    assert events == []
    assert [a.value for a in run.artefacts] == [72]
    # A real fall on that device alarms at its second sample, as a monitor would.
    [opened] = [e.alert for e in series(run, 360, 60, [80, 80]) if e.type == "opened"]
    assert opened.opened_at == T0 + 420


def test_a_late_sample_from_before_a_fall_does_not_make_the_fall_an_artefact() -> None:
    run = Run()
    events = series(run, 0, 5, [97, 97])
    # The network delivers the fall's first sample before the last normal one.
    events += run.send(reading(12, spo2=81)) + run.send(reading(9, spo2=97))
    events += series(run, 17, 5, [81, 80, 80])
    assert run.artefacts == []
    # Held 15 s as a possible probe dip: raised with a monitor's 15 s delay, no later.
    [opened] = [e.alert for e in events if e.type == "opened"]
    assert (opened.severity, opened.opened_at) == ("critical", T0 + 27)


def test_a_sample_the_oximeter_marks_as_poor_signal_is_set_aside() -> None:
    run = Run(AnomalySettings(persist_s=0, persist_readings=1, critical_confirm_s=0))
    lines = [
        b"device_id=ox-1 patient_id=P-1 ts=1700000000 spo2=97 sqi=0.95",
        b"device_id=ox-1 patient_id=P-1 ts=1700000005 spo2=88 sqi=0.2",
        b'{"device": "ox-1", "patient": "P-1", "ts": 1700000010, "spo2": 87, "pi": 0.1}',
        b"device_id=ox-1 patient_id=P-1 ts=1700000015 spo2=97 perfusion_index=2.5",
    ]
    readings = [parse_line(line, T0 + 20) for line in lines]
    assert [r.quality for r in readings] == [{"sqi": 0.95}, {"sqi": 0.2}, {"pi": 0.1}, {"pi": 2.5}]
    assert Reading.from_json(readings[1].to_json()) == readings[1]
    # Small enough a change (97 -> 88 -> 87) to pass the jump screen: only quality tells.
    assert [e for r in readings for e in run.send(r)] == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 88), ("spo2", 87)]
    with pytest.raises(WireError, match=r"sqi: 1\.5 outside 0\.\.1"):
        parse_line(b"device_id=ox-1 patient_id=P-1 spo2=97 sqi=1.5", T0)


def test_the_first_sample_after_a_dropout_is_no_level_for_the_next_to_jump_from() -> None:
    # A monitor sending every minute drops out for five minutes, and its first sample
    # after that is a probe dip. Taken as the new level, it made the 99 after it a jump,
    # held as a probable artefact, and the next dip confirmed a critical alert across
    # the 99. A monitor at the bedside, which starts over at the 99, raises nothing.
    run = Run()
    events = series(run, 0, 60, [97, 98, 97])
    events += series(run, 420, 60, [83, 99, 82, 98, 97])
    assert [e.alert.kind for e in events if e.type == "opened"] == []
    assert [a.value for a in run.artefacts] == [83, 82]


def test_a_jump_after_a_dropout_is_held_as_any_jump_and_raised_with_a_monitor() -> None:
    run = Run()
    series(run, 0, 5, [96] * 8)
    # Two minutes without data, then a fall of 8 points: held as a possible probe dip,
    # and raised when it has stood 15 s, when a monitor's alarm delay ends.
    events = series(run, 155, 5, [88, 88, 88])
    assert [e.alert.kind for e in events if e.type == "opened"] == []
    [opened] = [e.alert for e in series(run, 170, 5, [88]) if e.type == "opened"]
    assert (opened.kind, opened.opened_at, opened.evidence[0]) == (
        "threshold:spo2",
        T0 + 170,
        (T0 + 155, 88),
    )
