"""The anomaly engine's trends and baselines: a vital moving fast, or far from the
patient's own usual value, and the noise and recoveries that are neither."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.rules import AnomalySettings
from tests.stream.engine_cases import T0, Run, kinds, reading, series


def test_a_falling_spo2_trend_alerts_before_any_threshold() -> None:
    run = Run()
    # Steady at 98 for a minute: a level, not one sample, is what the fall is measured from.
    events = series(run, -60, 20, [98, 98, 98])
    for i, value in enumerate([98, 98, 97, 97, 96, 96, 95, 94, 94, 93, 93, 93]):
        events += run.send(reading(i * 20, spo2=value))
    assert kinds(events) == [("opened", "trend:spo2_fall", "warning")]
    alert = events[0].alert
    assert "fell" in alert.rule and "within 300 s" in alert.rule
    assert alert.opened_at <= T0 + 200, "found while SpO2 is still above 90"


def test_a_rising_heart_rate_trend() -> None:
    run = Run()
    events: list[AlertEvent] = []
    for i in range(40):
        events += run.send(reading(i * 15, heart_rate=70 + i))
    assert ("opened", "trend:heart_rate_rise", "warning") in kinds(events)
    assert not [e for e in events if e.alert.kind.startswith("threshold")]


def test_recovering_from_bradycardia_is_not_a_rising_trend() -> None:
    run = Run()
    values = [70] * 4 + [42, 40, 38, 38, 38, 40, 44, 50, 56, 62, 66, 70, 70, 70, 70, 70]
    events = [e for i, v in enumerate(values) for e in run.send(reading(i * 15, heart_rate=v))]
    assert [e.alert.kind for e in events if e.type == "opened"] == ["threshold:heart_rate"]


def test_a_trend_adds_nothing_while_the_threshold_alert_is_open() -> None:
    run = Run()
    events = run.send(reading(0, spo2=84))  # critical, opens at once
    for i, value in enumerate([83, 82, 80, 79, 79, 79]):
        events += run.send(reading(5 + i * 10, spo2=value))
    assert [e.alert.kind for e in events if e.type == "opened"] == ["threshold:spo2"]


def test_deviation_from_the_patients_own_baseline() -> None:
    run = Run()
    events: list[AlertEvent] = []
    for i in range(40):
        events += run.send(reading(i * 30, heart_rate=58 + i % 3))
    assert events == []
    # 95/min is normal for a population, but 35 above this patient's usual ~59.
    # The rise is fast enough to be caught by the trend rule too; suppress that here.
    for i in range(5):
        events += run.send(reading(1200 + i * 10, heart_rate=95))
    assert [e.alert.kind for e in events if e.type == "opened"][-1:] in (
        ["baseline:heart_rate"],
        ["trend:heart_rate_rise"],
    )
    quiet = Run(AnomalySettings(trends=()))
    for i in range(40):
        quiet.send(reading(i * 30, heart_rate=58 + i % 3))
    opened = [e for i in range(5) for e in quiet.send(reading(1200 + i * 10, heart_rate=95))]
    assert kinds(opened) == [("opened", "baseline:heart_rate", "warning")]
    assert "baseline" in opened[0].alert.rule


def test_stable_noise_at_15_s_samples_is_no_trend() -> None:
    # Ten stable patients for 3 h: SpO2 wanders slowly (sd 0.7, 10 min time constant)
    # around 96, each 15 s sample with measurement noise (sd 0.8).
    rng = random.Random(7)
    keep = math.exp(-15 / 600)
    opened = []
    for patient in range(10):
        run = Run(AnomalySettings(baselines=(), news2_alerts=False))
        wander, values = 0.0, []
        for _ in range(3 * 240):
            wander = wander * keep + rng.gauss(0, 0.7 * math.sqrt(1 - keep**2))
            values.append(round(96 + wander + rng.gauss(0, 0.8)))
        events = series(run, 0, 15, values)
        opened += [(patient, e.alert.kind) for e in events if e.type == "opened"]
    assert opened == []


def _breathing(run: Run, start: float, rates: Sequence[float]) -> tuple[float, list[AlertEvent]]:
    """One reading every 5 s from `start`, one per respiratory rate; the time after the
    last, and every event they raised."""
    events: list[AlertEvent] = []
    for i, rate in enumerate(rates):
        events += run.send(reading(start + 5 * i, resp_rate=rate, spo2=97, heart_rate=75))
    return start + 5 * len(rates), events


def test_the_climb_back_to_the_patients_own_rate_is_no_rising_trend() -> None:
    # Fifteen minutes at 20-21/min (the patient's learnt baseline), two minutes at 6,
    # five minutes back up. Once no sample below the band is left in the trend's
    # 10 minutes, the climb from 11-12 read as a rise of 8/min: an alert while the
    # patient breathed as they always had.
    run = Run()
    t, events = _breathing(run, 0, [20, 21] * 90)
    t, more = _breathing(run, t, [6] * 24 + [round(6 + 15 * i / 60) for i in range(60)])
    events += more
    _, more = _breathing(run, t, [20, 21] * 72)
    events += more
    assert [(e.type, e.alert.kind) for e in events if e.type == "opened"] == [
        ("opened", "threshold:resp_rate")
    ]
    # A rise of the same size away from the patient's own rate is still a trend.
    run = Run()
    t, events = _breathing(run, 0, [13, 14] * 90)
    _, more = _breathing(run, t, [round(13 + 9 * i / 60) for i in range(60)] + [22, 23] * 48)
    assert [e.alert.kind for e in events + more if e.type == "opened"] == ["trend:resp_rate_rise"]


def test_a_slow_bradypnoea_does_not_become_the_patients_own_rate() -> None:
    # Half an hour at 16-22/min, a creep down to 6 over five minutes, twelve minutes at
    # 5-7, four minutes back up to 21-22 (as recorded on a held-out draw). The baseline
    # learnt every sample within four of its deviations of its mean, and those grew as
    # it learnt the creep: it followed the bradypnoea down to 14/min, and the climb back
    # read as a rise of 9/min away from the patient's own rate.
    run = Run()
    t, events = _breathing(run, 0, [16, 19, 22, 19] * 90)
    creep = [round(19 - 13 * i / 60) for i in range(60)]
    t, more = _breathing(run, t, creep + [5, 6, 7, 6] * 36)
    events += more
    mean = run.states["P-1"]["baselines"]["resp_rate"][0]
    assert 17 <= mean <= 20, "the patient's own rate, not the bradypnoea's"
    _, more = _breathing(run, t, [round(7 + 15 * i / 48) for i in range(48)] + [21, 22] * 96)
    events += more
    assert [e.alert.kind for e in events if e.type == "opened"] == ["threshold:resp_rate"]


def test_a_recovery_the_threshold_alert_watched_is_not_learnt_as_the_patients_own() -> None:
    # As recorded on deterioration.toml seed 89: a patient breathing at 15-21/min falls
    # to 7, and climbs back over 90 s. The baseline paused only for its own alert, so it
    # learnt the climb (9-12/min) while the threshold alert was still open; its spread
    # grew, and the patient's second fall, to 9/min, lay within it: no alert, where the
    # baseline that had not learnt the climb raised the second fall after its 10 s.
    run = Run()
    usual = [15, 21, 18, 16, 20, 17, 19, 18, 21, 15]
    t, events = _breathing(run, 0, usual * 12)
    climb = [9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15, 16, 16, 17, 17]
    t, more = _breathing(run, t, [7] * 12 + climb + usual * 2)
    events += more
    _, more = _breathing(run, t, [9] * 6)
    events += more
    opened = [(e.alert.kind, e.alert.opened_at - T0) for e in events if e.type == "opened"]
    assert [kind for kind, _at in opened] == ["threshold:resp_rate", "baseline:resp_rate"]
    assert opened[1][1] == t + 10


def test_a_rise_does_not_open_on_a_sample_back_where_it_came_from() -> None:
    """A minute-by-minute monitor on a slow network (`slow_devices.toml` seed 123): a heart
    rate of 75-82, then 107-111 for four samples (a hypoxaemia with it), then 82 again.
    The median of the last five samples lags them by minutes: a rise of 31.7 opened on
    the 82 itself, after the episode had ended. The rise must show in the sample too."""
    # (measured, arrived, heart rate), seconds from T0: the draw's times less 4,300 s, so
    # that the trend window's buckets fall where they fell there
    samples = [
        (9.2, 21.4, 82), (66.4, 85.4, 78), (128.6, 151.3, 80), (189.5, 214.3, 80),
        (248.4, 256.9, 75), (306.9, 323.2, 77), (368.9, 389.4, 77), (426.2, 451.6, 107),
        (486.0, 496.7, 109), (549.6, 572.8, 109), (607.8, 631.0, 111), (669.5, 693.4, 82),
        (728.5, 741.7, 81), (789.0, 800.0, 80),
    ]  # fmt: skip
    run = Run()
    opened = []
    for measured, arrived, value in samples:
        sample = replace(reading(measured, heart_rate=value), received_at=T0 + arrived)
        opened += [(measured, e.alert.kind) for e in run.send(sample) if e.type == "opened"]
    # Nothing opens once the heart rate is back (the 82 measured at 669.5 s, and after).
    assert [(at, kind) for at, kind in opened if at >= 669] == [], opened
