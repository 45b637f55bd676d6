"""The level rule: a vital hovering at its limit, past it by its minute's mean though
never by enough samples in a row for the threshold rule, is raised; a recovery, an
open alert that says as much already, and a critical value are left to the other rules."""

from __future__ import annotations

import itertools

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.level_rule import LEVEL_SAMPLES, LEVEL_SPAN_S
from healthsync.stream.state import Sample
from healthsync.stream.trends import TrendWindow
from tests.stream.engine_cases import T0, Run, reading

# Respiratory rate 8, 8, 9 over and over (every 5 s): 8 is past the band (low 9), but
# never three samples in a row, so the threshold rule's 10 s never pass. Its mean, 8.3.
HOVERING = [8, 8, 9]


def breathe(run: Run, start: float, values: list[float], **extra: str) -> list[AlertEvent]:
    """One reading every 5 s from `start`, with these respiratory rates (and `extra`)."""
    events: list[AlertEvent] = []
    for i, rate in enumerate(values):
        at = start + 5 * i
        events += run.send(reading(at, resp_rate=rate, spo2=97, heart_rate=75, **extra))
    return events


def hovering(seconds: float) -> list[float]:
    return list(itertools.islice(itertools.cycle(HOVERING), int(seconds // 5)))


def test_a_bradypnoea_hovering_at_the_limit_is_raised_by_its_level() -> None:
    run = Run()
    breathe(run, 0, [16] * 24)  # two minutes at the patient's 16/min
    events = breathe(run, 120, hovering(180))
    opened = [e.alert for e in events if e.type == "opened"]
    assert [(a.kind, a.severity) for a in opened] == [("level:resp_rate", "warning")]
    # The minute's mean is past the band once the whole buckets it covers (60-90 s) hold
    # only the hovering samples (at 190 s here), then it holds 30 s.
    assert opened[0].opened_at - T0 == 220
    assert "mean over 60 s" in opened[0].rule


def test_the_same_patient_without_the_level_rule_raises_nothing() -> None:
    """What the rule adds: the threshold rule and NEWS2 alone never raise this patient."""
    run = Run(AnomalySettings(level_persist_s=None))
    breathe(run, 0, [16] * 24)
    assert [e for e in breathe(run, 120, hovering(300)) if e.type == "opened"] == []


def test_a_level_alert_resolves_once_the_level_is_back_inside_by_the_margin() -> None:
    run = Run()
    breathe(run, 0, [16] * 24)
    breathe(run, 120, hovering(180))
    events = breathe(run, 300, [16] * 36)
    [resolved] = [e.alert for e in events if e.type == "resolved"]
    assert resolved.kind == "level:resp_rate"
    # The minute's mean is back at 11/min (the band's 9 and the margin's 2) at 325 s, 25 s
    # after the patient, then holds there the usual 30 s.
    assert resolved.resolved_at == T0 + 355


def test_a_sample_back_inside_by_the_margin_ends_the_level_however_it_lags() -> None:
    """The minute's mean lags a recovery: the patient breathing at 11/min (the band's 9
    and the margin's 2) is back, whatever the samples before say."""
    window = TrendWindow(600.0, width=30.0)
    for i in range(12):
        window.add(T0 + 5 * i, 8.0)
    run, at = Run(), T0 + 60
    band, rule = run.book.bands_for("P-1")["resp_rate"], run.engine.levels
    level = window.mean_over(LEVEL_SPAN_S, at, LEVEL_SAMPLES)
    assert level is not None and level < 9
    assert rule.past(level, band, "resp_rate", Sample(at, 10.0, "r"))
    window.add(at, 11.0)
    level = window.mean_over(LEVEL_SPAN_S, at, LEVEL_SAMPLES)
    assert level is not None and level < 9, "still below the band by its mean"
    assert not rule.past(level, band, "resp_rate", Sample(at, 11.0, "r"))


def test_a_threshold_warning_is_not_raised_again_but_a_critical_value_is() -> None:
    run = Run()
    breathe(run, 0, [16] * 24)
    breathe(run, 120, hovering(180))
    # Past the warning limit for 20 s: the open level alert already says so.
    assert [e for e in breathe(run, 300, [7, 7, 7, 7, 7]) if e.type == "opened"] == []
    # Past the critical limit (5/min, below 6): news, and it opens.
    opened = [e.alert for e in breathe(run, 325, [5, 5, 5, 5]) if e.type == "opened"]
    assert [(a.kind, a.severity) for a in opened] == [("threshold:resp_rate", "critical")]


def test_a_level_already_said_by_news2_is_not_raised_again() -> None:
    """The patient becomes confused 45 s into the hovering: NEWS2's red score (new
    confusion) opens at once and names the respiratory rate among its drivers (8-9/min
    scores); the level alert would repeat it."""
    run = Run()
    breathe(run, 0, [16] * 24)
    events = breathe(run, 120, hovering(45))
    events += breathe(run, 165, hovering(135), consciousness="C")
    opened = [e.alert for e in events if e.type == "opened"]
    assert [a.kind for a in opened] == ["news2"]
    assert "resp_rate" in opened[0].drivers


def test_the_minute_mean_covers_whole_buckets_and_needs_enough_samples() -> None:
    window = TrendWindow(600.0, width=30.0)
    for i in range(5):
        window.add(T0 + 5 * i, 8.0)
    assert window.mean_over(60.0, T0 + 20, 6) is None, "five samples are not a level"
    for i in range(5, 40):
        window.add(T0 + 5 * i, 8.0 if i >= 24 else 16.0)
    # At T0 + 195 the whole buckets that cover the last 60 s hold samples from T0 + 130
    # on (T0 is 20 s into a 30 s bucket), all of them 8.0.
    assert window.mean_over(60.0, T0 + 195, 6) == 8.0


def test_a_60_s_monitors_hovering_bradypnoea_is_raised_by_its_last_three_samples() -> None:
    """A minute of a 60 s monitor holds one sample: the level is the mean of its last
    three. Recorded on a 60 s monitor (a 264 s bradypnoea that neither the threshold
    rule nor the bedside monitor raised: each 9 ends the run of samples past 9/min)."""
    run = Run()
    for i, rate in enumerate([16, 17, 18, 16, 17, 18, 17, 16, 18, 19, 17]):
        run.send(reading(60 * i, device="m60", resp_rate=rate, spo2=97, heart_rate=75))
    events: list[AlertEvent] = []
    for i, rate in enumerate([8, 9, 7, 9]):
        at = 660 + 60 * i
        events += run.send(reading(at, device="m60", resp_rate=rate, spo2=97, heart_rate=75))
    opened = [e.alert for e in events if e.type == "opened"]
    assert [(a.kind, a.severity) for a in opened] == [("level:resp_rate", "warning")]
    # Past at the third sample (8, 9, 7: a mean of 8), and still at the fourth (8.3),
    # which is 60 s on, past the 30 s.
    assert opened[0].opened_at - T0 == 840
    assert "mean of the last 3 samples" in opened[0].rule


def test_a_slow_devices_last_three_samples_are_no_level_across_a_dropout() -> None:
    run = Run()
    run.engine.life.interval = 60.0
    window = TrendWindow(600.0, width=TrendWindow.width_for(600.0, 60.0))
    for at in (0, 60, 600):
        window.add(T0 + at, 8.0)
    assert run.engine.levels.level(window, T0 + 600) == (None, "mean of the last 3 samples")
    for at in (660, 720):
        window.add(T0 + at, 8.0)
    assert run.engine.levels.level(window, T0 + 720) == (8.0, "mean of the last 3 samples")
