"""`healthsync eval`'s scoring of alarms: detections, delays, false and technical alarms,
sensitivity and alert reduction."""

from __future__ import annotations

from dataclasses import replace

from healthsync.evaluation.detectors import Alarm
from healthsync.evaluation.generate import LabelledEpisode
from healthsync.evaluation.scoring import (
    KindScore,
    alert_reduction,
    false_alarms,
    percentile,
    score,
)


def spo2_alarm(patient: str, at: float, kind: str = "threshold:spo2") -> Alarm:
    return Alarm(patient, at, kind, vitals=frozenset({"spo2"}))


def episode(
    start: float, end: float, onset_at: float | None = None, patient: str = "P1"
) -> LabelledEpisode:
    onset = start if onset_at is None else onset_at
    return LabelledEpisode(patient, "hypoxaemia", "spo2", onset, start, end, 85.0)


def test_an_alarm_inside_the_episode_detects_it_with_its_delay() -> None:
    result = score(
        [episode(100, 200)], [spo2_alarm("P1", 112, "threshold:spo2")], patient_hours=1, grace=30
    )
    assert (result.detected, result.median_delay, result.false_alerts) == (1, 12, 0)


def test_no_alarm_or_another_patients_alarm_is_a_miss() -> None:
    episodes = [episode(100, 200)]
    result = score(episodes, [spo2_alarm("P2", 150, "threshold:spo2")], patient_hours=2, grace=30)
    assert (result.detected, result.missed, result.false_alerts) == (0, episodes, 1)
    assert result.false_per_patient_hour == 0.5


def test_grace_edge_counts_and_one_second_later_is_false() -> None:
    episodes = [episode(100, 200)]
    on_edge = score(episodes, [spo2_alarm("P1", 230, "news2")], patient_hours=1, grace=30)
    assert (on_edge.detected, on_edge.median_delay, on_edge.false_alerts) == (1, 130, 0)
    late = score(episodes, [spo2_alarm("P1", 231, "news2")], patient_hours=1, grace=30)
    assert (late.detected, late.false_alerts) == (0, 1)


def test_an_alarm_during_the_onset_is_early_not_false_and_before_it_detects_nothing() -> None:
    gradual = [episode(100, 200, onset_at=40)]
    early = score(gradual, [spo2_alarm("P1", 70, "trend:spo2_fall")], patient_hours=1, grace=30)
    # Found 30 s before SpO2 crossed its limit: the delay says so, unclipped.
    assert (early.detected, early.median_delay, early.false_alerts) == (1, -30, 0)
    # Opened before the onset (and maybe still open): raised for something else.
    before = score(gradual, [spo2_alarm("P1", 39, "threshold:spo2")], patient_hours=1, grace=30)
    assert (before.detected, before.false_alerts) == (0, 1)


def test_an_alarm_during_a_slow_recovery_is_not_false_nor_a_detection() -> None:
    slow = [episode(1000, 1300, onset_at=400)]  # 600 s on, so 600 s back
    late = spo2_alarm("P1", 1800, "news2")
    result = score(slow, [late], patient_hours=1, grace=30)
    assert (result.detected, result.false_alerts) == (0, 0)
    assert score(slow, [spo2_alarm("P1", 1901)], patient_hours=1, grace=30).false_alerts == 1


def test_the_first_alarm_in_the_window_sets_the_delay() -> None:
    alarms = [spo2_alarm("P1", 150, "news2"), spo2_alarm("P1", 120, "threshold:spo2")]
    assert score([episode(100, 200)], alarms, patient_hours=1, grace=30).median_delay == 20


def test_only_an_alarm_about_the_episodes_vital_detects_it() -> None:
    episodes = [episode(100, 200)]
    heart = Alarm("P1", 110, "threshold:heart_rate", vitals=frozenset({"heart_rate"}))
    news2 = Alarm("P1", 120, "news2", vitals=frozenset({"resp_rate", "spo2"}))
    result = score(episodes, [heart, news2], patient_hours=1, grace=30)
    assert (result.detected, result.median_delay) == (1, 20), "NEWS2 with SpO2 scoring in"
    assert result.false_by_kind == {"threshold:heart_rate": 1}, "a heart-rate alarm is not"
    moving = [replace(episodes[0], related=("heart_rate",))]
    assert score(moving, [heart], patient_hours=1, grace=30).false_alerts == 0


def test_technical_alarms_are_counted_apart() -> None:
    alarms = [Alarm("P1", 150, "device_offline:m1", "technical"), spo2_alarm("P1", 500, "news2")]
    result = score([episode(100, 200)], alarms, patient_hours=1, grace=30)
    # In the total of alerts (a nurse is called for them too), and apart.
    assert (result.detected, result.alerts, result.false_alerts) == (0, 2, 1)
    assert result.technical_alerts == 1
    assert result.false_by_kind == {"news2": 1}


def test_sensitivity_for_long_episodes_and_delay_percentiles() -> None:
    episodes = [episode(0, 30, patient="A"), episode(0, 60, patient="B")]
    episodes += [episode(0, 100, patient=p) for p in "CDEFGHIJ"]
    alarms = [
        spo2_alarm(p, delay, "news2")
        for p, delay in zip("BCDEFGHIJ", range(10, 100, 10), strict=True)
    ]
    result = score(episodes, alarms, patient_hours=10, grace=0, long_episode_s=60)
    # A's 30 s episode went unnoticed; every episode of 60 s or more was caught.
    assert (result.detected, result.episodes, result.sensitivity) == (9, 10, 0.9)
    assert (result.long_detected, result.long_episodes, result.sensitivity_long) == (9, 9, 1.0)
    assert (result.median_delay, result.p90_delay) == (50, 90)
    assert result.by_episode_kind == {"hypoxaemia": KindScore(9, 10, 50, 90)}
    assert percentile([], 0.9) is None
    assert false_alarms(episodes, alarms, grace=0) == []


def test_alert_reduction() -> None:
    assert alert_reduction(25, 100) == 0.75
    assert alert_reduction(3, 0) is None
