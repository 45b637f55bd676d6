"""The anomaly engine's threshold alerts: persistence, hysteresis, escalation, and
resolving."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.rules import AnomalySettings
from tests.stream.engine_cases import T0, Run, kinds, reading, series


def test_a_warning_opens_only_once_it_persists() -> None:
    run = Run(AnomalySettings(persist_s=15))
    assert run.send(reading(0, spo2=88)) == [], "one low sample is not an alarm yet"
    assert run.send(reading(10, spo2=88)) == [], "10 s is shorter than the 15 s persistence"
    [opened] = run.send(reading(15, spo2=87))
    alert = opened.alert
    assert (opened.type, alert.kind, alert.severity) == ("opened", "threshold:spo2", "warning")
    assert (alert.opened_at, alert.window_s, alert.value) == (T0 + 15, 15, 87)
    assert alert.evidence == [(T0, 88), (T0 + 10, 88), (T0 + 15, 87)]
    assert "spo2 < 90 %" in alert.rule and "15 s" in alert.rule


def test_a_condition_that_clears_while_pending_starts_over() -> None:
    run = Run()
    run.send(reading(0, spo2=88))
    run.send(reading(10, spo2=93))
    assert run.send(reading(16, spo2=88)) == [], "the earlier sample no longer counts"
    assert kinds(run.send(reading(31, spo2=88))) == [("opened", "threshold:spo2", "warning")]


def test_a_critical_value_opens_once_confirmed_and_a_worse_value_escalates_in_place() -> None:
    run = Run()
    run.send(reading(0, heart_rate=125))
    [warning] = run.send(reading(20, heart_rate=128))
    assert run.send(reading(25, heart_rate=150)) == [], "one critical sample is not confirmed"
    assert run.send(reading(30, heart_rate=150)) == []
    [escalated] = run.send(reading(35, heart_rate=150))
    assert escalated.type == "escalated"
    assert escalated.alert.alert_id == warning.alert.alert_id
    assert escalated.alert.severity == "critical"
    assert run.send(reading(40, heart_rate=128)) == [], "severity does not drop while open"

    other = Run()
    assert other.send(reading(0, spo2=82), reading(5, spo2=82)) == []
    [critical] = other.send(reading(10, spo2=82))
    assert (critical.type, critical.alert.severity, critical.alert.window_s) == (
        "opened",
        "critical",
        10,
    )


def test_resolving_needs_the_margin_and_the_hold_time() -> None:
    run = Run()
    run.send(reading(-10, spo2=84), reading(-5, spo2=84))
    [opened] = run.send(reading(0, spo2=84))
    assert run.send(reading(5, spo2=90)) == [], "at the limit is not back inside by the margin"
    assert run.send(reading(10, spo2=93)) == []
    assert run.send(reading(25, spo2=94)) == [], "inside for 15 s only"
    assert run.send(reading(30, spo2=91)) == [], "dipped into the margin: the hold restarts"
    assert run.send(reading(35, spo2=94)) == []
    [resolved] = run.send(reading(65, spo2=95))
    assert (resolved.type, resolved.alert.alert_id) == ("resolved", opened.alert.alert_id)
    assert resolved.alert.resolved_at == T0 + 65
    assert opened.alert.status == "open", "events keep a snapshot of the alert as it was"


def test_a_critical_alert_resolves_only_once_the_value_is_back_inside() -> None:
    run = Run(AnomalySettings(persist_s=0, persist_readings=1))
    events = [e for t in range(0, 120, 5) for e in run.send(reading(t, heart_rate=145))]
    assert kinds(events) == [
        ("opened", "threshold:heart_rate", "warning"),
        ("escalated", "threshold:heart_rate", "critical"),
    ]
    events = [e for t in range(120, 200, 5) for e in run.send(reading(t, heart_rate=80))]
    [resolved] = events
    assert (resolved.type, resolved.alert.resolved_at) == ("resolved", T0 + 150)


def test_a_30_s_monitors_alert_resolves_on_two_samples_back_inside_a_jitter_apart() -> None:
    # Back inside for 30 s, give or take the device's jitter, as persistence counts: the
    # samples 29.2 s apart left the alert open through a minute of normal readings, and
    # the tachycardia that followed was no new alert.
    run = Run()
    heart_rates = [(0, 80), (30, 81), (60, 80), (90, 150), (120, 152), (150, 82)]
    events = [e for t, hr in heart_rates for e in run.send(reading(t, heart_rate=hr))]
    assert kinds(events) == [("opened", "threshold:heart_rate", "critical")]
    [resolved] = run.send(reading(179.2, heart_rate=83))
    assert (resolved.type, resolved.alert.resolved_at) == ("resolved", T0 + 179.2)
    run.send(reading(210, heart_rate=150))
    assert kinds(run.send(reading(240, heart_rate=151))) == [
        ("opened", "threshold:heart_rate", "critical")
    ]


def test_a_critical_value_needs_confirmation_but_not_the_monitors_delay() -> None:
    run = Run()
    # A fall of 6 points: no more than SpO2 can move in 5 s, so no artefact hold applies.
    assert series(run, 0, 5, [90, 84, 84]) == [], "critical for 5 s: not yet confirmed"
    [opened] = series(run, 15, 5, [83])
    assert (opened.alert.severity, opened.alert.opened_at) == ("critical", T0 + 15)
    assert opened.alert.window_s == 10
    assert "confirmed over 10 s" in opened.alert.rule


def test_persistence_allows_for_the_timing_jitter_of_a_devices_samples() -> None:
    run = Run()
    series(run, -20, 5, [93, 93, 93, 93])  # the device's usual interval: 5 s
    events = [e for t in (0, 5.1, 9.8) for e in run.send(reading(t, spo2=88))]
    [opened] = events
    assert opened.alert.opened_at == T0 + 9.8, "10 s of a 5 s monitor's samples, give or take"
    slow = Run()
    assert [e for t in (0, 4, 8) for e in slow.send(reading(t, spo2=88))] == []


def samples(
    run: Run, start: float, values: list[float], vital: str = "heart_rate"
) -> list[AlertEvent]:
    """One reading of `vital` per value, 5 s apart from `start` (a 5 s monitor): every
    event they raised."""
    return series(run, start, 5, values, vital)


def test_a_heart_rate_that_reads_alike_on_two_samples_opens_at_the_second() -> None:
    run = Run()
    samples(run, -20, [100, 100, 100, 100])  # a 5 s monitor
    # A rise of 28/min is no jump (40/min), so nothing holds it; two beat-averaged
    # samples 1/min apart are the rhythm: a warning at the second, not the third.
    assert samples(run, 0, [128]) == []
    [opened] = samples(run, 5, [129])
    alert = opened.alert
    assert kinds([opened]) == [("opened", "threshold:heart_rate", "warning")]
    assert (alert.opened_at, alert.window_s) == (T0 + 5, 5)


def test_a_heart_rate_that_differs_on_two_samples_waits_the_persistence() -> None:
    run = Run()
    samples(run, -20, [100, 100, 100, 100])
    # 123 then 135: 12/min apart, wider than a changed rhythm reads (10/min).
    assert samples(run, 0, [123, 135]) == []
    assert kinds(samples(run, 10, [131])) == [("opened", "threshold:heart_rate", "warning")]


def test_a_critical_heart_rate_opens_a_warning_at_once_and_escalates_when_confirmed() -> None:
    run = Run()
    samples(run, -20, [76, 76, 76, 76])
    events = samples(run, 0, [38, 38, 37])
    assert [(e.type, e.alert.severity, e.alert.updated_at - T0) for e in events] == [
        ("opened", "warning", 5),
        ("escalated", "critical", 10),
    ], "the critical value is confirmed over 10 s as ever; the warning needs no more"


def test_other_vitals_and_a_cleared_table_keep_the_persistence() -> None:
    run = Run()
    samples(run, -20, [16, 16, 16, 16], vital="resp_rate")
    assert samples(run, 0, [7, 7], vital="resp_rate") == [], "talking moves it alike as often"
    assert kinds(samples(run, 10, [7], vital="resp_rate")) == [
        ("opened", "threshold:resp_rate", "warning")
    ]
    off = Run(AnomalySettings(steady_persist_s={}))
    samples(off, -20, [100, 100, 100, 100])
    assert samples(off, 0, [128, 129]) == []
    assert kinds(samples(off, 10, [129])) == [("opened", "threshold:heart_rate", "warning")]


def test_a_steady_persistence_for_an_unknown_vital_or_below_zero_is_refused() -> None:
    for field in ("steady_persist_s", "steady_fall_persist_s"):
        with pytest.raises(ValidationError, match="unknown vital"):
            AnomalySettings.model_validate({field: {"pulse": 5}})
        with pytest.raises(ValidationError, match="greater than or equal to 0"):
            AnomalySettings.model_validate({field: {"heart_rate": -1}})


def after_settling(
    settled: float, count: int, values: list[float], vital: str, settings: AnomalySettings
) -> list[AlertEvent]:
    """A 5 s monitor: `count` samples of `vital` at `settled` (the baseline trusts 30), then
    `values`; the events of those."""
    run = Run(settings)
    samples(run, -5 * count, [settled] * count, vital=vital)
    return samples(run, 0, values, vital=vital)


def test_a_heart_rate_moved_to_just_past_a_limit_is_no_noise_around_it() -> None:
    # 43 and 42/min lie within the 5/min margin of the 45 limit; this patient's own
    # baseline is 75, six margins inside it. They have moved there, and do not sit near
    # the limit: the heart rate's usual persistence (its second alike sample), not 15 s.
    [opened] = after_settling(75, 40, [43, 42, 43, 42], "heart_rate", AnomalySettings())
    assert kinds([opened]) == [("opened", "threshold:heart_rate", "warning")]
    assert (opened.alert.opened_at, opened.alert.window_s) == (T0 + 5, 5)


def test_a_patient_sitting_near_a_limit_or_not_yet_known_waits_the_monitors_delay() -> None:
    # Baseline 52: within 3 margins (15/min) of the limit; 10 samples: not trusted yet.
    for settled, count in ((52, 40), (75, 10)):
        [opened] = after_settling(settled, count, [43, 42, 43, 42], "heart_rate", AnomalySettings())
        assert opened.alert.opened_at == T0 + 15, (settled, count)


def test_a_breathing_rate_fallen_to_just_past_its_limit_is_no_noise_around_it() -> None:
    # A rate of 16/min falls over half a minute to 7-8/min, within the 2/min margin of
    # the 9 limit (deterioration.toml seed 28). The patient's baseline is 16, more than
    # 3 margins inside: not the monitor's 15 s, but a steady fall's second sample (7, 8
    # from 25 s); 15 s needed a later run.
    falling: list[float] = [12, 11, 10, 9, 9, 7, 8, 8, 9, 10, 8, 7, 6]
    [opened] = after_settling(16, 40, falling, "resp_rate", AnomalySettings())
    assert (opened.alert.kind, opened.alert.opened_at) == ("threshold:resp_rate", T0 + 30)
    # A patient who breathes at 12 sits near the limit: 8/min waits the monitor's 15 s.
    [waited] = after_settling(12, 40, [8, 8, 8, 8], "resp_rate", AnomalySettings())
    assert waited.alert.opened_at == T0 + 15


def test_the_moved_patient_rule_covers_the_vitals_its_table_names() -> None:
    # A systolic of 87-86 after 110 (a fall too small for the baseline rule): its margin
    # is 5 mmHg, and the default table names it from 5 margins (a pressure swings with
    # each breath and wanders over the day): 110 is 4 inside, the monitor's delay; at
    # 3 margins, the persistence.
    values: list[float] = [87, 87, 86, 87]
    [waited] = after_settling(110, 40, values, "bp_sys", AnomalySettings())
    assert waited.alert.opened_at == T0 + 15
    named = AnomalySettings(moved_baseline_margins={"bp_sys": 3})
    [opened] = after_settling(110, 40, values, "bp_sys", named)
    assert opened.alert.opened_at == T0 + 10
    unnamed = AnomalySettings(moved_baseline_margins={"heart_rate": 3})
    [waited] = after_settling(116, 40, [87, 87, 88, 87], "bp_sys", unnamed)
    assert waited.alert.opened_at == T0 + 15
    with pytest.raises(ValidationError, match="unknown vital"):
        AnomalySettings(moved_baseline_margins={"pulse": 3})
    with pytest.raises(ValidationError, match="greater than 0"):
        AnomalySettings(moved_baseline_margins={"heart_rate": 0})


def test_a_breathing_rate_fallen_to_a_steady_low_one_alerts_at_its_second_sample() -> None:
    # A patient who breathes at 16/min (a trusted baseline 3.5 margins inside the 9
    # limit) now reads 7/min twice: a monitor's rate, averaged over breaths, that reads
    # alike on two samples has fallen there. Talking, which can make two samples alike,
    # raises the rate.
    [opened] = after_settling(16, 40, [7, 7, 8], "resp_rate", AnomalySettings())
    assert kinds([opened]) == [("opened", "threshold:resp_rate", "warning")]
    assert (opened.alert.opened_at, opened.alert.window_s) == (T0 + 5, 5)


def test_a_rising_rate_or_a_patient_near_the_limit_or_not_yet_known_keeps_the_persistence() -> None:
    cases: list[tuple[float, int, list[float]]] = [
        (16, 40, [27, 27, 27]),  # above the band: talking reads alike too
        (12, 40, [7, 7, 7]),  # a patient who breathes near the limit crosses it by noise
        (16, 10, [7, 7, 7]),  # a baseline not trusted yet
    ]
    for settled, count, values in cases:
        [opened] = after_settling(settled, count, values, "resp_rate", AnomalySettings())
        assert opened.alert.opened_at == T0 + 10, (settled, count, values)
    cleared = AnomalySettings(steady_fall_persist_s={})
    [waited] = after_settling(16, 40, [7, 7, 8], "resp_rate", cleared)
    assert waited.alert.opened_at == T0 + 10


def test_a_systolic_settled_just_under_its_limit_far_from_the_patients_own_alerts_sooner() -> None:
    # A patient learnt at 116 mmHg, 5.2 margins inside the 90 limit (and less than the
    # baseline rule's 30 mmHg above these samples), now reads 87-88: they have moved
    # there (the usual 10 s), where one who sits at 110 waits 15 s.
    [opened] = after_settling(116, 40, [87, 87, 88, 87], "bp_sys", AnomalySettings())
    assert (opened.alert.kind, opened.alert.opened_at) == ("threshold:bp_sys", T0 + 10)
