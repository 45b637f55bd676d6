"""The anomaly engine's rules against the false alarms and late alarms of a ward: probe
dips, corroborated desaturations, noisy trends, recoveries, amber NEWS2 sums, late samples."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings
from tests.stream.engine_cases import NORMAL, T0, Run, kinds, reading, series


def opened(events: list[AlertEvent]) -> list[tuple[str, float]]:
    return [(e.alert.kind, e.alert.opened_at - T0) for e in events if e.type == "opened"]


def restarted(run: Run) -> Run:
    """A new engine that loads the state `run` saved, as a restarted processor does."""
    saved = dict(run.states)
    return Run(load_states=lambda patients: {p: saved[p] for p in (patients or saved)})


def test_a_three_sample_probe_dip_is_an_artefact_not_a_critical_alarm() -> None:
    run = Run()
    # A slipping probe: SpO2 reads 75-80 for three samples (10 s) while the heart rate
    # the same oximeter counts does not move.
    events: list[AlertEvent] = []
    for t, spo2 in [(0, 97), (5, 97), (10, 75), (15, 80), (20, 78), (25, 97), (30, 96)]:
        events += run.send(reading(t, spo2=spo2, heart_rate=80))
    assert events == []
    assert [a.value for a in run.artefacts] == [75, 80, 78]


def test_a_shallow_three_sample_probe_dip_is_an_artefact_too() -> None:
    run = Run()
    # A patient at 93-94 whose probe slips: 85, 83, 80 for three samples (10 s), a fall
    # of 8 points in 5 s that no oximeter's averaged saturation makes, then back.
    events: list[AlertEvent] = []
    for t, spo2 in [(0, 94), (5, 93), (10, 85), (15, 83), (20, 80), (25, 93), (30, 94)]:
        events += run.send(reading(t, spo2=spo2, heart_rate=78))
    assert opened(events) == []
    assert [a.value for a in run.artefacts] == [85, 83, 80]


def test_a_sudden_desaturation_scattering_as_an_oximeter_reads_stands_at_15_s() -> None:
    run = Run()
    # 98 -> 80-84 with nothing else moving: held as a possible probe dip, and raised at
    # the sample that completes a monitor's 15 s, though its samples spread by 4 points
    # (a saturation's noise, which a 6-point max_jump says nothing about).
    events = series(run, -10, 5, [98, 98])
    events += series(run, 0, 5, [80, 83, 81, 84])
    assert opened(events) == [("threshold:spo2", 15)]
    assert run.artefacts == []


def test_a_device_clock_behind_the_servers_does_not_cut_an_artefact_hold_short() -> None:
    run = Run()
    # The monitor's clock runs 40 s behind the server's (or its readings arrive 40 s
    # late): a probe dip held on its own clock must not stand because the server's
    # clock says its next sample is overdue, as it would if the two were compared.
    events: list[AlertEvent] = []
    for t, spo2 in [(0, 97), (5, 97), (10, 80), (15, 80), (20, 80), (25, 97), (30, 97)]:
        late = replace(reading(t - 40, spo2=spo2, heart_rate=78), received_at=T0 + t)
        events += run.send(late, now=t)
        events += run.send(now=t + 2.5)  # the processor's clock ticks between readings
    assert opened(events) == []
    assert [a.value for a in run.artefacts] == [80, 80, 80]


def test_a_probe_dip_is_held_though_one_other_vital_rose_with_it_by_chance() -> None:
    # A patient at 93-94 whose probe slips for three samples (77, 76, 75). In the third
    # reading one other vital reads high by chance: the respiratory rate 18 against its
    # level of 14, or the heart rate 92 against its 80. One sensor is no corroboration.
    before = [(-15, 94, 80, 14), (-10, 93, 81, 14), (-5, 94, 80, 15)]
    dip = [(0, 77, 80, 14), (5, 76, 81, 14)]
    after = [(15, 93, 80, 15), (20, 94, 80, 14)]
    for third in [(10, 75, 80, 18), (10, 75, 92, 15)]:
        run = Run()
        events: list[AlertEvent] = []
        for t, spo2, hr, rr in [*before, *dip, third, *after]:
            events += run.send(reading(t, spo2=spo2, heart_rate=hr, resp_rate=rr))
        assert opened(events) == [], f"a dip with {third} stood as a desaturation"
        assert [a.value for a in run.artefacts if a.vital == "spo2"] == [77, 76, 75]


def test_a_desaturation_heart_and_breathing_both_corroborate_opens_at_its_second_sample() -> None:
    # Oximeter, ECG and impedance agree: SpO2 falls while the heart and respiratory rates
    # both rise. No single artefact moves all three, so two samples below 90 suffice.
    both, heart_only, breathing_spike = Run(), Run(), Run()
    before = [(0, 97, 80, 16), (5, 97, 81, 16)]
    fall = [(10, 87, 100, 22), (15, 86, 102, 23), (20, 86, 103, 23), (25, 86, 103, 24)]
    events: dict[str, list[AlertEvent]] = {"both": [], "heart": [], "spike": []}
    for t, spo2, hr, rr in before + fall:
        events["both"] += both.send(reading(t, spo2=spo2, heart_rate=hr, resp_rate=rr))
        events["heart"] += heart_only.send(reading(t, spo2=spo2, heart_rate=hr, resp_rate=16))
        # A respiratory rate 30/min above its level is no breathing a chest can do in 5 s.
        spiked = 46 if t in (10, 15) else rr
        events["spike"] += breathing_spike.send(
            reading(t, spo2=spo2, heart_rate=hr, resp_rate=spiked)
        )
    assert opened(events["both"]) == [("threshold:spo2", 15)]
    # One sensor alone: held as a probe dip, and raised with a monitor's 15 s.
    assert opened(events["heart"]) == [("threshold:spo2", 25)]
    # The spikes corroborate nothing; the breathing's real rise at 20 s does, with the heart.
    assert ("threshold:spo2", 20) in opened(events["spike"]), "a spike corroborates nothing"


def test_a_probe_dip_ending_with_a_lead_spike_is_still_an_artefact() -> None:
    run = Run()
    # SpO2 dips for three samples, then reads 96 again in the same reading as a 176/min
    # ECG lead spike: the return is no fall, and a jump no heart can make is no
    # tachycardia, so nothing corroborates the dip.
    events: list[AlertEvent] = []
    samples = [(0, 97, 70), (5, 97, 71), (10, 83, 70), (15, 77, 68), (20, 78, 71), (25, 96, 176)]
    for t, spo2, hr in [*samples, (30, 97, 70), (35, 97, 71)]:
        events += run.send(reading(t, spo2=spo2, heart_rate=hr))
    assert opened(events) == []
    assert [(a.vital, a.value) for a in run.artefacts][:3] == [
        ("spo2", 83),
        ("spo2", 77),
        ("spo2", 78),
    ]


def test_stable_noise_at_5_s_samples_is_no_spo2_trend() -> None:
    # Ten stable patients for 3 h at 5 s samples: SpO2 wanders slowly (sd 0.7, 10 min
    # time constant) around 96, each sample with measurement noise (sd 0.8).
    rng = random.Random(11)
    keep = math.exp(-5 / 600)
    found = []
    for patient in range(10):
        run = Run(AnomalySettings(baselines=(), news2_alerts=False))
        wander, values = 0.0, []
        for _ in range(3 * 720):
            wander = wander * keep + rng.gauss(0, 0.7 * math.sqrt(1 - keep**2))
            values.append(round(96 + wander + rng.gauss(0, 0.8)))
        found += [(patient, kind) for kind, _ in opened(series(run, 0, 5, values))]
    assert found == []


def test_returning_from_near_the_low_limit_is_not_a_rising_trend() -> None:
    # 48/min is inside the band (45-120) but within its margin of the low limit: the
    # climb back to the patient's usual ~85 is a recovery, not a tachycardia coming on.
    run = Run(AnomalySettings(baselines=()))
    values = [85] * 8 + [48] * 12 + [60, 70, 78, 82, 85, 86, 85, 87, 86, 85, 86, 85]
    events = [e for i, v in enumerate(values) for e in run.send(reading(i * 15, heart_rate=v))]
    assert opened(events) == []


def test_an_amber_only_medium_news2_needs_5_minutes_a_red_score_30_s() -> None:
    run = Run()
    # RR 22 (2) + SpO2 93 (2) + HR 95 (1) = 5, medium, and no single parameter scores 3.
    amber = dict(NORMAL, resp_rate=22, spo2=93, heart_rate=95)
    events = [e for t in range(0, 295, 5) for e in run.send(reading(t, **amber))]
    assert [k for k in kinds(events) if k[1] == "news2"] == [], "under 5 min: a drift"
    events = run.send(reading(300, **amber))
    assert [k for k in kinds(events) if k[1] == "news2"] == [("opened", "news2", "warning")]
    red = Run()
    events = [e for t in range(0, 35, 5) for e in red.send(reading(t, **dict(NORMAL, spo2=91)))]
    assert opened(events) == [("news2", 30)], "a single red score still needs only 30 s"


def test_a_late_sample_from_before_a_condition_does_not_restart_its_persistence() -> None:
    run = Run()
    # A gradual fall (no jump a probe artefact would make), so persistence alone decides.
    series(run, -30, 5, [93, 93, 93, 93])
    events = series(run, 0, 5, [88, 88])
    # Measured before the low run began, delivered late by the network.
    events += run.send(reading(-3, spo2=93))
    events += run.send(reading(10, spo2=88))
    assert opened(events) == [("threshold:spo2", 10)]


def test_the_way_back_from_a_short_bradycardia_is_no_rising_trend() -> None:
    # 95/min, 35/min for 30 s, 95 again. The 30 s buckets of the trend's window each hold
    # part of the bradycardia and part of either side, so none is below the band (the
    # lowest mean is 55), and the return to 95 read as a rise of 40 within 10 minutes.
    run = Run(AnomalySettings(baselines=()))
    values = [95] * 60 + [35] * 6 + [95] * 60
    events = [e for i, v in enumerate(values) for e in run.send(reading(i * 5 - 300, heart_rate=v))]
    assert [kind for kind, _ in opened(events)] == ["threshold:heart_rate"]


def test_an_spo2_fall_is_a_trend_only_once_it_is_sustained() -> None:
    # Steady at 98 for five minutes, then four samples at 94: the level (the median of
    # the last five samples) is 4 below for 15 s. Noise does that; a desaturation stays.
    brief = Run()
    assert series(brief, -300, 5, [98] * 60 + [94] * 4 + [98] * 20) == []
    sustained = Run()
    events = series(sustained, -300, 5, [98] * 60 + [94] * 10)
    assert opened(events) == [("trend:spo2_fall", 30)]


def test_a_value_just_past_the_limit_must_hold_as_long_as_a_monitor_waits() -> None:
    # Systolic 86-89 against a limit of 90 is within the 5 mmHg margin: what measurement
    # noise makes of a patient sitting at 93. It must hold 15 s, a monitor's alarm delay.
    near = Run()
    events = [
        e
        for t, v in [(0, 96), (5, 88), (10, 86), (15, 89)]
        for e in near.send(reading(t, bp_sys=v))
    ]
    assert events == []
    assert opened(near.send(reading(20, bp_sys=87))) == [("threshold:bp_sys", 20)]
    # Clearly past the limit, the usual 10 s.
    deep = Run()
    events = [
        e
        for t, v in [(0, 96), (5, 82), (10, 81), (15, 83)]
        for e in deep.send(reading(t, bp_sys=v))
    ]
    assert opened(events) == [("threshold:bp_sys", 15)]


def test_a_value_just_past_the_limit_waits_a_monitors_whole_delay_not_a_jitter_less() -> None:
    run = Run()
    series(run, 0, 10, [97] * 3, bp_sys=104)  # a 10 s monitor
    # Systolic 88 and 89, 12.6 s apart: noise of a patient sitting near 90, which a
    # monitor's 15 s alarm delay lets pass. The jitter slack that lets a 5 s monitor's
    # third sample at 9.8 s stand for 10 s must not make 12.6 s count for 15.
    events = run.send(reading(30, bp_sys=88)) + run.send(reading(42.6, bp_sys=89))
    assert opened(events) == []
    # Still there at the next sample: 15 s have passed, and it opens as a monitor's would.
    assert opened(run.send(reading(52, bp_sys=88))) == [("threshold:bp_sys", 52)]


def test_a_monitor_back_from_a_dropout_is_still_judged_as_a_5_s_monitor() -> None:
    run = Run()
    series(run, 0, 5, [93] * 8)  # a 5 s monitor
    # Two minutes without data (a loose cable), then two low samples 5 s apart: that is
    # no 10 s persistence, however long the gap before them was. (A fall of 5 points is
    # no jump; a larger one is held as any jump is, see test_engine_artefacts.py.)
    assert opened(series(run, 155, 5, [88, 88])) == []
    assert opened(run.send(reading(165, spo2=88))) == [("threshold:spo2", 165)]


def test_a_sudden_bradycardia_stands_at_the_sample_that_completes_10_s_give_or_take() -> None:
    run = Run()
    for t in (-20, -15, -10, -5):
        run.send(reading(t, heart_rate=76))  # a 5 s monitor
    # A jump from 76 to 34 is held as a possible lead artefact until it has stood 10 s;
    # the third sample, 9.8 s after the first, is that on a 5 s monitor with jitter.
    events = [e for t in (0, 5.1, 9.8) for e in run.send(reading(t, heart_rate=34))]
    assert [(kind, round(at, 1)) for kind, at in opened(events)] == [("threshold:heart_rate", 9.8)]


def test_lead_spikes_back_to_back_are_no_tachycardia() -> None:
    run = Run()
    for t in (-20, -15, -10, -5):
        run.send(reading(t, heart_rate=78))
    # Two lead artefacts in a row: 157, 152, 174 for 15 s. A rhythm that changed reads
    # alike sample after sample; this scatters over 22/min, and goes back to 78.
    events = [
        e
        for t, hr in [(0, 157), (5, 152), (10, 174), (15, 78)]
        for e in run.send(reading(t, heart_rate=hr))
    ]
    assert opened(events) == []
    assert [a.value for a in run.artefacts] == [157, 152, 174]
    # A tachycardia of 150 +- 3 stands as before, at its third sample.
    events = [e for t in (40, 45, 50) for e in run.send(reading(t, heart_rate=150 + t % 3))]
    assert opened(events) == [("threshold:heart_rate", 50)]


def test_spikes_judged_over_the_whole_hold_not_only_its_last_10_s() -> None:
    run = Run()
    for t in (-20, -15, -10, -5):
        run.send(reading(t, heart_rate=83))
    # 156, 171, 182 over 10.2 s: the last two alone agree within 11/min, all three do not.
    events = [
        e
        for t, hr in [(0, 156), (5.9, 171), (10.2, 182), (15, 80)]
        for e in run.send(reading(t, heart_rate=hr))
    ]
    assert opened(events) == []


def test_a_news2_alert_stays_open_while_the_score_dips_below_5_for_minutes() -> None:
    run = Run()
    amber = dict(NORMAL, resp_rate=22, spo2=93, heart_rate=95)  # 5, medium
    better = dict(NORMAL, resp_rate=22, spo2=93)  # 4
    events = [e for t in range(0, 305, 5) for e in run.send(reading(t, **amber))]
    assert opened(events) == [("news2", 300)]
    # Two minutes at 4, then 5 again: the same patient, the same concern - no new alert.
    events = [e for t in range(305, 425, 5) for e in run.send(reading(t, **better))]
    events += [e for t in range(425, 800, 5) for e in run.send(reading(t, **amber))]
    assert [k for k in kinds(events) if k[1] == "news2"] == []
    # Five minutes at 4 resolve it.
    events = [e for t in range(800, 1110, 5) for e in run.send(reading(t, **better))]
    assert [k for k in kinds(events) if k[1] == "news2"] == [("resolved", "news2", "warning")]


def test_a_desaturation_whose_last_sample_arrives_after_the_recovery_still_alarms() -> None:
    run = Run()
    # 96 -> 83-84 for 16 s with nothing else moving, then back to 96. The sample that
    # shows the fall lasted 15 s (at 18 s) is delayed on the network and arrives after
    # the recovery: the fall must not stay set aside as a probe dip. A monitor with a
    # 15 s delay alarmed at it; the engine can only know when it arrives.
    events: list[AlertEvent] = []
    for t, spo2 in [(-8, 96), (-3, 96), (2, 84), (8, 83), (13, 83), (22, 96)]:
        events += run.send(reading(t, spo2=spo2, heart_rate=74))
    assert opened(events) == [], "held: 11 s below is what a slipping probe does"
    run = restarted(run)  # before the late sample: what was set aside is in the state
    late = replace(reading(18, spo2=83, heart_rate=74), received_at=T0 + 23)
    events += run.send(late)
    assert [(kind, round(at)) for kind, at in opened(events)] == [("threshold:spo2", 18)]
    assert [e.alert.severity for e in events if e.type == "opened"] == ["critical"]
    # The late sample that shows the fall lasted is no artefact.
    assert run.artefacts == []


def test_a_late_sample_of_a_probe_dip_does_not_make_it_last() -> None:
    run = Run()
    # The same dip for 11 s, and a late sample from within it: the dip still lasted
    # only 11 s, and stays a probe artefact.
    events: list[AlertEvent] = []
    for t, spo2 in [(-8, 96), (-3, 96), (2, 84), (8, 83), (18, 96), (23, 96)]:
        events += run.send(reading(t, spo2=spo2, heart_rate=74))
    events += run.send(replace(reading(13, spo2=83, heart_rate=74), received_at=T0 + 24))
    assert opened(events) == []
    assert [a.value for a in run.artefacts] == [84, 83, 83]


def test_a_corroborated_desaturation_after_poor_signal_samples_opens_at_its_second_sample() -> None:
    run = Run()
    # Perfusion fails as the patient desaturates: two samples with a poor signal (set
    # aside), then SpO2 81 with the heart and the breathing up. The reference the
    # corroboration compares with is the level before the fall, however long the poor
    # samples kept the oximeter quiet, so the second sample confirms it as it would
    # have without them.
    events: list[AlertEvent] = []
    before = [(-26, 94, 85, 17), (-21, 93, 86, 16), (-16, 94, 84, 17)]
    poor = [(-10, 72, 84, 18), (-5, 82, 85, 18)]
    fall = [(0, 81, 111, 24), (5, 81, 110, 25), (10, 80, 111, 23), (15, 79, 108, 25)]
    for t, spo2, hr, rr in before + poor + fall:
        signal = {"sqi": 0.3 if (t, spo2, hr, rr) in poor else 0.9}
        sample = reading(t, spo2=spo2, heart_rate=hr, resp_rate=rr)
        events += run.send(replace(sample, quality=signal))
        if t == 0:  # a processor restart in the middle of the fall forgets nothing
            run = restarted(run)
    assert opened(events)[:1] == [("threshold:spo2", 5)]


def test_a_late_sample_from_before_a_held_jump_that_reads_as_it_does_makes_it_last() -> None:
    run = Run()
    # A 15 s monitor: heart rate 70, then 155 from 15 s. The 15 s sample is delayed and
    # arrives after the 30 s one, which alone is a jump held as a possible lead artefact.
    # Once it arrives, the new rate has stood from 15 s to 30 s: the alert opens then,
    # not a sample (15 s) or more later.
    for t in range(-90, 1, 15):
        assert run.send(reading(t, heart_rate=70, spo2=97)) == []
    assert run.send(replace(reading(30, heart_rate=155, spo2=97), received_at=T0 + 31)) == []
    late = run.send(replace(reading(15, heart_rate=155, spo2=97), received_at=T0 + 40))
    assert kinds(late) == [("opened", "threshold:heart_rate", "critical")]
    assert run.artefacts == []


def test_a_late_sample_older_than_the_level_before_a_jump_says_nothing_of_it() -> None:
    run = Run()
    # The same, but the late sample was measured before the last sample at 70: it does
    # not make the jump older than the level it jumped from.
    for t in range(-90, 1, 15):
        if t != -15:
            run.send(reading(t, heart_rate=70, spo2=97))
    events = run.send(replace(reading(15, heart_rate=155, spo2=97), received_at=T0 + 16))
    events += run.send(replace(reading(-15, heart_rate=150, spo2=97), received_at=T0 + 20))
    assert opened(events) == []
    assert [a.value for a in run.artefacts] == [150]


def test_a_blood_pressure_cuffs_reading_does_not_cut_a_news2_persistence_short() -> None:
    run = Run()
    # A 15 s monitor and a cuff every 15 minutes. SpO2 reads 91 for 15 s (a red NEWS2
    # part, inside the SpO2 alert band) and the cuff measures 10 s later: 25 s of a
    # red score is not the 30 s a NEWS2 warning needs, whichever device's reading
    # asks. The cuff's 15-minute interval is no jitter of the score's samples.
    events: list[AlertEvent] = []

    def monitor(t: float, spo2: float) -> Reading:
        return reading(t, device="mon", spo2=spo2, heart_rate=75, resp_rate=16)

    for t in range(-1800, -15, 15):
        events += run.send(monitor(t, 95))
        if t % 900 == 0:
            events += run.send(reading(t + 1, device="cuff", bp_sys=125, bp_dia=80))
    events += run.send(monitor(-15, 91))
    events += run.send(monitor(0, 91))
    events += run.send(reading(10, device="cuff", bp_sys=124, bp_dia=80))
    events += run.send(monitor(15, 95))
    assert opened(events) == []
