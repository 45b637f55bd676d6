"""The anomaly engine's artefacts: probe dips and samples of poor signal are set aside,
and a real fall is neither taken for one nor raised late."""

from __future__ import annotations

from dataclasses import replace

import pytest

from healthsync.domain.alerts import AlertEvent
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


def test_a_jump_followed_by_silence_is_decided_by_the_next_sample() -> None:
    run = Run()
    run.send(reading(0, spo2=97))
    assert run.send(reading(5, spo2=78)) == []
    assert run.send(now=15) == []
    assert run.send(now=21) == [], "silence confirms nothing"
    # The next sample stays with the jump: the run has stood 20 s, and is critical.
    [opened] = run.send(reading(25, spo2=79))
    assert (opened.alert.severity, opened.alert.opened_at) == ("critical", T0 + 25)
    assert opened.alert.window_s == 20
    # And a sample back at the old level, however late it comes, makes the jump an
    # artefact: the clock's ticks in between did not let it stand.
    run = Run()
    run.send(reading(0, spo2=97))
    run.send(reading(5, spo2=78))
    assert run.send(now=30) == []
    assert run.send(reading(33, spo2=97)) == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 78)]


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
    # An oximeter's pulse comes from the same probe: set aside with its SpO2.
    line = b"device_id=ox-1 patient_id=P-1 ts=1700000020 spo2=86 pulse=131 sqi=0.1"
    assert run.send(parse_line(line, T0 + 20)) == []
    assert [(a.vital, a.value) for a in run.artefacts[2:]] == [("spo2", 86), ("heart_rate", 131)]
    with pytest.raises(WireError, match=r"sqi: 1\.5 outside 0\.\.1"):
        parse_line(b"device_id=ox-1 patient_id=P-1 spo2=97 sqi=1.5", T0)


def test_a_monitors_ecg_heart_rate_is_kept_when_its_oximeter_probe_reads_poorly() -> None:
    # Recorded: a tachycardia (65 -> 150/min) began in the reading where the probe slipped
    # (SpO2 72, sqi 0.14). The monitor counts the heart rate from its ECG leads (it also
    # measures the breathing across them): the probe says nothing of it. Set aside with
    # the SpO2, the 150 was lost, the jump was held from the next sample, and the alert
    # opened at the fifth sample (24.8 s) instead of the third; the monitor's at 19.1 s.
    run = Run()
    for t in (-20.1, -15.1, -11.1, -5.5, -0.1):
        run.send(reading(t, heart_rate=65, spo2=94, resp_rate=16))
    events: list[AlertEvent] = []
    for t, heart_rate, spo2, sqi in [
        (4.0, 150, 72, 0.14),
        (10.8, 150, 93, 0.77),
        (14.7, 148, 94, 0.79),
        (19.1, 152, 94, 0.8),
    ]:
        sample = reading(t, heart_rate=heart_rate, spo2=spo2, resp_rate=16)
        events += run.send(replace(sample, quality={"sqi": sqi}))
    changes = [(e.type, e.alert.kind, e.alert.severity) for e in events]
    assert changes == [
        ("opened", "threshold:heart_rate", "warning"),
        ("escalated", "threshold:heart_rate", "critical"),
    ]
    assert {round(e.alert.updated_at - T0, 1) for e in events} == {14.7}, "the third sample"
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 72)]


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


# A pulse oximeter's samples (measured, arrived, SpO2, signal quality), recorded from
# scenarios/artefacts.toml seed 49: a probe dip (83, 72, then 86 of poor signal) just
# before the probe came off for two and a half minutes, and more dips as it went back on.
DIP_BEFORE_A_DROPOUT = [
    (203.8, 204.1, 96, 0.98),
    (209.1, 211.4, 98, 0.78),
    (213.9, 219.1, 99, 0.8),
    (219.8, 221.3, 83, 0.96),
    (224.3, 225.0, 72, 0.79),
    (228.7, 231.0, 86, 0.36),
    (369.7, 373.2, 79, 0.77),
    (373.5, 379.1, 85, 0.96),
    (383.0, 384.5, 97, 0.7),
    (379.0, 384.8, 75, 0.35),
    (389.6, 391.7, 97, 0.77),
    (394.5, 400.0, 98, 0.89),
    (398.8, 402.7, 98, 0.76),
    (405.0, 408.7, 97, 0.75),
]


def test_a_dip_before_the_probe_comes_off_is_not_believed_for_the_silence() -> None:
    # Taken as standing when the clock ticked past it in silence, the dip became SpO2's
    # level: the samples back at 97-98 were held as a jump from it, and the trend rule
    # found a 12.5-point fall while the patient read 98.
    run = Run()
    events: list[AlertEvent] = []
    clock = DIP_BEFORE_A_DROPOUT[0][1]
    for measured, arrived, spo2, sqi in DIP_BEFORE_A_DROPOUT:
        while clock + 1 <= arrived:
            clock += 1
            events += run.send(now=clock)
        sample = replace(
            reading(measured, spo2=spo2), received_at=T0 + arrived, quality={"sqi": sqi}
        )
        events += run.send(sample)
    assert [e.alert.kind for e in events if e.type == "opened"] == ["device_offline:d1"]
    assert sorted(a.value for a in run.artefacts) == [72, 75, 79, 83, 85, 86]


def test_a_sample_back_at_the_patients_level_is_no_jump_from_a_lone_dip() -> None:
    # A probe dip (72) in the same reading as a talking spike of the respiratory rate
    # (22 -> 30) and a heart rate 13/min up reads as a corroborated desaturation, and is
    # kept (either rise alone no longer corroborates a fall). The next sample, 95,
    # was then held as a jump up from 72, and set aside when the next dip came: the two
    # dips made a critical run across it. The patient's level was 94-96 throughout.
    run = Run()
    events: list[AlertEvent] = []
    rows = [
        (0, 96, 76, 22),
        (5, 94, 77, 21),
        (10, 95, 79, 21),
        (15, 94, 76, 21),
        (20, 93, 74, 22),
        (25, 96, 76, 23),
        (30, 72, 89, 30),
        (35, 95, 75, 22),
        (40, 76, 75, 20),
        (45, 94, 72, 20),
        (50, 94, 76, 23),
    ]
    for t, spo2, heart_rate, resp_rate in rows:
        events += run.send(reading(t, spo2=spo2, heart_rate=heart_rate, resp_rate=resp_rate))
    assert [e.alert.kind for e in events if e.type == "opened"] == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 76)]


def test_a_return_to_the_patients_level_ends_a_run_held_after_a_kept_dip() -> None:
    # Recorded: a probe dip of three samples (74, 85, 83). The first came with the
    # respiratory rate 4/min up (12 -> 16) and, here, the heart rate 11/min up (the
    # recording's 81 made 92: either rise alone no longer corroborates a fall), read as
    # corroborated, and was kept. The
    # next two were held as a jump up from 74, and the 95 after them as more of that
    # run, away from 74: the run stood 20 s later and opened an SpO2 alert for a dip
    # the patient had left 11 s before, at 95. Back at the level the patient was at,
    # as back at the level before the jump, the held run is set aside.
    run = Run()
    events: list[AlertEvent] = []
    rows = [
        (-36.3, 96, 78, 13),
        (-30.8, 94, 76, 11),
        (-25.1, 95, 78, 12),
        (-20.2, 96, 78, 10),
        (-15.2, 97, 80, 12),
        (-9.6, 95, 82, 12),
        (-5.0, 96, 81, 11),
        (0, 74, 92, 16),
        (4.5, 85, 75, 12),
        (9.9, 83, 77, 12),
        (13.9, 95, 77, 11),
        (20.2, 94, 81, 13),
        (25.2, 95, 79, 12),
        (29.7, 95, 82, 12),
    ]
    for t, spo2, heart_rate, resp_rate in rows:
        events += run.send(reading(t, spo2=spo2, heart_rate=heart_rate, resp_rate=resp_rate))
    assert [e.alert.kind for e in events if e.type == "opened"] == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 85), ("spo2", 83)]


def test_two_lead_spikes_back_to_back_are_held_as_long_as_a_monitor_waits() -> None:
    # Recorded: two ECG lead spikes next to each other make three samples of 158-175/min
    # over 10.3 s, then the patient's 65. They stood as a new rhythm at the third sample
    # and opened a critical tachycardia that a monitor with a 15 s delay never raised.
    # They agree within the heart rate's steady spread (20/min), but not as a changed
    # rhythm reads: 17/min apart, more than half of it.
    run = Run()
    events: list[AlertEvent] = []
    for t, heart_rate in [(-20.3, 69), (-15.5, 72), (-9.9, 69), (-5.7, 70), (0, 158)]:
        events += run.send(reading(t, heart_rate=heart_rate))
    for t, heart_rate in [(5.5, 165), (10.3, 175), (15.6, 65), (19.7, 70)]:
        events += run.send(reading(t, heart_rate=heart_rate))
    assert [e.alert.kind for e in events if e.type == "opened"] == []
    assert [(a.vital, a.value) for a in run.artefacts] == [
        ("heart_rate", 158),
        ("heart_rate", 165),
        ("heart_rate", 175),
    ]


def test_an_irregular_fast_rhythm_is_raised_when_a_monitor_would_raise_it() -> None:
    # A rapid irregular rhythm scatters from one averaged sample to the next as those
    # spikes do. It is held for a monitor's 15 s, give or take the device's jitter: it
    # opens at 14.2 s, before the sample at 19.8 s that a monitor alarms at.
    run = Run()
    for before in (-20, -15, -10, -5):
        run.send(reading(before, heart_rate=78))
    events: list[AlertEvent] = []
    for t, heart_rate in [(0, 152), (5, 168), (10, 155), (14.2, 171), (19.8, 160)]:
        events += run.send(reading(t, heart_rate=heart_rate))
    opened = [(e.alert.kind, e.alert.severity, round(e.alert.opened_at - T0, 1)) for e in events]
    assert opened == [("threshold:heart_rate", "critical", 14.2)]
    assert run.artefacts == []


def test_two_talking_spikes_back_to_back_are_not_raised_sooner_than_a_monitor() -> None:
    # Recorded: a patient breathing at 16-20/min talks; two spikes of the respiratory
    # rate next to each other read 29, 39 and 28 over 8.9 s, then the patient's 19.
    # None is a jump (12/min), so no artefact hold: three samples past the band over
    # the persistence opened a warning that a monitor, needing a fourth, never raised.
    # Their spread (11/min) is wider than a breathing pattern that has changed reads (the
    # respiratory rate's steady spread, 6/min).
    run = Run()
    events: list[AlertEvent] = []
    warm_up = [16, 18, 20, 19, 17, 18, 20, 18, 16, 19] * 4  # 200 s: a trusted baseline
    for i, resp_rate in enumerate(warm_up):
        events += run.send(reading(-205.0 + 5 * i, resp_rate=resp_rate))
    for t, resp_rate in [(0, 29), (4.3, 39), (8.9, 28), (14.5, 19), (19.0, 19), (24.1, 18)]:
        events += run.send(reading(t, resp_rate=resp_rate))
    assert [e.alert.kind for e in events if e.type == "opened"] == []


def test_a_scattered_tachypnoea_is_raised_when_a_monitor_would_raise_it() -> None:
    # The same spread, lasting: raised once it has lasted a monitor's 15 s, give or take
    # the device's jitter, at 14.1 s. A steadier one is raised at 10 s, as before.
    scattered, steady = Run(), Run()
    for before in (-20, -15, -10, -5):
        scattered.send(reading(before, resp_rate=18))
        steady.send(reading(before, resp_rate=18))
    events: dict[str, list[AlertEvent]] = {"scattered": [], "steady": []}
    for t, wide, narrow in [(0, 26, 26), (5, 33, 28), (10, 27, 27), (14.1, 29, 29)]:
        events["scattered"] += scattered.send(reading(t, resp_rate=wide))
        events["steady"] += steady.send(reading(t, resp_rate=narrow))
    opened = {
        name: [(e.alert.kind, round(e.alert.opened_at - T0, 1)) for e in found]
        for name, found in events.items()
    }
    assert opened == {
        "scattered": [("threshold:resp_rate", 14.1)],
        "steady": [("threshold:resp_rate", 10.0)],
    }


def test_talking_that_jumps_the_breathing_rate_is_held_as_long_as_a_monitor_waits() -> None:
    # Recorded (artefacts.toml seed 23): a patient breathing at 11-13/min talks, and the
    # rate reads 31, 33, 34 over 9.4 s (a jump: 12/min or more), then 29, then 13. The
    # three samples agree as a changed breathing pattern reads, and stood after the 10 s
    # hold with its jitter slack: a critical alert that a monitor, needing 15 s, never
    # raised. A jump up of the breathing rate is held for the monitor's 15 s.
    run = Run()
    events: list[AlertEvent] = []
    for t, resp_rate in [(-20.0, 12), (-15.0, 11), (-10.0, 11), (-5.0, 13)]:
        events += run.send(reading(t, resp_rate=resp_rate))
    for t, resp_rate in [(0, 31), (3.4, 33), (9.4, 34), (13.0, 29), (18.9, 13), (24.0, 12)]:
        events += run.send(reading(t, resp_rate=resp_rate))
    assert [e.alert.kind for e in events if e.type == "opened"] == []
    assert [a.value for a in run.artefacts] == [31, 33, 34, 29]


def test_a_breathing_rate_that_jumped_and_stays_is_raised_with_a_monitor() -> None:
    # The same jump lasting: raised at the sample 15 s after the first, as a monitor
    # raises it (no jitter slack: at 14.6 s it is not yet). A rise of less than a jump
    # (18 -> 26) is not held at all (test_a_scattered_tachypnoea_is_...: 10 s).
    lasting = [(0.0, 31.0), (5.0, 33.0), (10.0, 34.0), (14.6, 32.0), (19.8, 33.0)]
    assert opened_after_12(AnomalySettings(), lasting) == [("threshold:resp_rate", 19.8)]
    unheld = AnomalySettings(rise_hold_s={})
    assert opened_after_12(unheld, lasting[:3]) == [("threshold:resp_rate", 10.0)]


def opened_after_12(
    settings: AnomalySettings, rates: list[tuple[float, float]]
) -> list[tuple[str, float]]:
    """A patient breathing at 12/min for 20 s, then `rates` (time, rate): what opened,
    and when."""
    run = Run(settings)
    for t in (-20.0, -15.0, -10.0, -5.0):
        run.send(reading(t, resp_rate=12))
    events = [e for t, rate in rates for e in run.send(reading(t, resp_rate=rate))]
    return [(e.alert.kind, round(e.alert.opened_at - T0, 1)) for e in events if e.type == "opened"]


def test_a_10_s_monitors_two_sample_lead_spike_is_an_artefact_not_an_alarm() -> None:
    # On a 10 s monitor the second sample of a jump is already 10 s on: a lead spike of
    # two samples read 187, 186 and stood as a new rhythm, where a monitor, waiting
    # 15 s, needs a third sample and raises nothing.
    run = Run()
    assert series(run, 0, 10, [78, 74, 76, 187, 186, 73, 74], "heart_rate") == []
    assert [a.value for a in run.artefacts] == [187, 186]


def test_a_10_s_monitors_sudden_tachycardia_is_raised_with_its_third_sample() -> None:
    # Two samples after the jump: 20 s on, when a monitor waiting 15 s alarms too.
    run = Run()
    events = series(run, 0, 10, [78, 74, 76, 150, 151], "heart_rate")
    assert events == []
    [opened] = run.send(reading(50, heart_rate=150))
    assert (opened.alert.kind, opened.alert.opened_at) == ("threshold:heart_rate", T0 + 50)
    assert opened.alert.evidence[0] == (T0 + 30, 150)
    assert run.artefacts == []


def test_a_15_s_monitors_jump_still_stands_on_its_second_sample() -> None:
    # A 15 s monitor's one sample after a jump is as long as a monitor waits, even when
    # jitter brings it 11 s on: a third would come after the monitor's alarm.
    run = Run()
    assert series(run, 0, 15, [78, 74, 76, 150], "heart_rate") == []
    [opened] = run.send(reading(56, heart_rate=151))
    assert (opened.type, opened.alert.kind, opened.alert.opened_at) == (
        "opened",
        "threshold:heart_rate",
        T0 + 56,
    )


def test_a_5_s_monitors_jump_seen_on_two_samples_10_s_apart_waits_for_the_one_between() -> None:
    # The sample between them is on its way, late: it might read the old level, as it
    # would after a two-sample spike. The jump stands once it comes and agrees.
    run = Run()
    assert series(run, 0, 5, [79, 79, 79, 38], "heart_rate") == []
    assert run.send(reading(25, heart_rate=34)) == []
    late = replace(reading(20, heart_rate=37), received_at=T0 + 26.5)
    [opened] = [e for e in run.send(late) if e.type == "opened"]
    assert (opened.alert.kind, opened.alert.opened_at) == ("threshold:heart_rate", T0 + 20)
    assert opened.alert.evidence[0] == (T0 + 15, 38)
