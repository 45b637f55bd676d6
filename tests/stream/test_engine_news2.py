"""The anomaly engine's NEWS2 alerts: persistence, escalation, a single red score, new
confusion, and scoring only the samples the engine kept."""

from __future__ import annotations

from typing import Any

from healthsync.domain.rules import AnomalySettings
from tests.stream.engine_cases import NORMAL, Run, kinds, reading


def test_news2_medium_is_a_warning_and_high_escalates_it() -> None:
    run = Run(
        AnomalySettings(
            persist_s=0,
            persist_readings=1,
            critical_confirm_s=0,
            news2_persist_s=0,
            news2_aggregate_persist_s=0,
        )
    )
    # RR 22 (2) + SpO2 94 (1) + HR 95 (1) + temp 38.5 (1) = 5: medium
    medium: dict[str, Any] = {
        "resp_rate": 22,
        "spo2": 94,
        "heart_rate": 95,
        "temp": 38.5,
        "bp_sys": 120,
    }
    events = run.send(reading(0, **medium, consciousness="A", on_oxygen=False))
    assert ("opened", "news2", "warning") in kinds(events)
    # RR 25 (3) + HR 112 (2) + BP 100 (2) => 3+1+2+1+2 = 9: high
    high = dict(medium, resp_rate=25, heart_rate=112, bp_sys=100)
    events = run.send(reading(5, **high)) + run.send(reading(10, **high))
    assert ("escalated", "news2", "critical") in kinds(events)
    [news2] = [e.alert for e in events if e.alert.kind == "news2"]
    assert news2.rule.startswith("NEWS2 9 (high)")


def test_news2_alerts_persist_and_escalate_once_high_is_confirmed() -> None:
    run = Run(AnomalySettings(news2_persist_s=15, news2_aggregate_persist_s=15))
    medium = dict(NORMAL, resp_rate=22, spo2=94, heart_rate=95, temp=38.5)  # 2+1+1+1 = 5
    events = [e for t in (0, 5, 10) for e in run.send(reading(t, **medium))]
    assert [k for k in kinds(events) if k[1] == "news2"] == [], "10 s is not 15 s"
    events = run.send(reading(15, **medium))
    assert ("opened", "news2", "warning") in kinds(events)
    high = dict(medium, resp_rate=25, heart_rate=112, bp_sys=100)  # 3+1+2+1+2 = 9
    # NEWS2 scores the median of the last 15 s: high from 30 s, confirmed over 10 s.
    events = [e for t in (20, 25, 30, 35) for e in run.send(reading(t, **high))]
    assert [k for k in kinds(events) if k[1] == "news2"] == []
    events = run.send(reading(40, **high))
    assert ("escalated", "news2", "critical") in kinds(events)


def test_a_single_red_score_raises_an_urgent_alert() -> None:
    # SpO2 91 scores 3 on the chart but sits inside the SpO2 alert band (< 90).
    run = Run()
    events = [e for t in range(0, 30, 5) for e in run.send(reading(t, **dict(NORMAL, spo2=91)))]
    assert events == [], "a NEWS2 warning needs 30 s"
    events = run.send(reading(30, **dict(NORMAL, spo2=91)))
    [opened] = [e.alert for e in events if e.alert.kind == "news2"]
    assert (opened.severity, opened.value) == ("warning", 3)
    assert "red score" in opened.rule and "spo2 3" in opened.rule


def test_new_confusion_raises_an_alert_at_once() -> None:
    run = Run()
    run.send(reading(0, **NORMAL, consciousness="A"))
    events = run.send(reading(5, **NORMAL, consciousness="U"))
    assert kinds(events) == [("opened", "news2", "warning")]
    assert "consciousness 3" in events[0].alert.rule


def test_news2_is_scored_from_the_samples_the_engine_kept() -> None:
    run = Run(AnomalySettings(persist_s=0, persist_readings=1))
    unwell = dict(NORMAL, resp_rate=22, heart_rate=95, temp=38.5)  # 2+1+1 = 4: low
    run.send(reading(0, **unwell), reading(5, **unwell))
    # Scored as it came, SpO2 72 would add 3: NEWS2 7, high, a critical alert.
    assert run.send(reading(10, **dict(unwell, spo2=72))) == [], "an artefact scores nothing"
    assert run.send(reading(15, **unwell)) == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 72)]
