"""Threshold alerts: one per patient and vital, escalated in place, resolved when normal."""

from __future__ import annotations

from healthsync.readings import Reading
from healthsync.stream.alerts import Threshold, ThresholdRules


def reading(n: int, patient: str = "P-1", **vitals: float) -> Reading:
    return Reading(
        reading_id=f"r{n}",
        device_id="d1",
        patient_id=patient,
        ts=1_700_000_000.0 + n,
        received_at=1_700_000_000.0 + n,
        vitals=dict(vitals),
    )


def test_threshold_bands() -> None:
    band = Threshold("heart_rate", low=45, high=120, critical_low=40, critical_high=140)
    assert [band.severity(v) for v in (39, 44, 45, 80, 120, 121, 141)] == [
        "critical",
        "warning",
        None,
        None,
        None,
        "warning",
        "critical",
    ]


def test_open_escalate_resolve_one_alert_per_patient_and_vital() -> None:
    rules = ThresholdRules()
    opened = rules.evaluate(reading(1, spo2=88))
    assert [(e.type, e.alert.severity, e.alert.value) for e in opened] == [
        ("opened", "warning", 88)
    ]
    alert_id = opened[0].alert.alert_id

    assert rules.evaluate(reading(2, spo2=89)) == [], "still low: no second alert"
    escalated = rules.evaluate(reading(3, spo2=82))
    assert [(e.type, e.alert.alert_id, e.alert.severity) for e in escalated] == [
        ("escalated", alert_id, "critical")
    ]
    assert rules.evaluate(reading(4, spo2=88)) == [], "severity does not drop back while open"

    # Another patient and another vital are separate alerts.
    other = rules.evaluate(reading(5, patient="P-2", spo2=80, heart_rate=150))
    assert sorted(e.alert.kind for e in other) == ["threshold:heart_rate", "threshold:spo2"]

    resolved = rules.evaluate(reading(6, spo2=96))
    assert [(e.type, e.alert.alert_id, e.alert.status) for e in resolved] == [
        ("resolved", alert_id, "resolved")
    ]
    assert resolved[0].alert.resolved_at == 1_700_000_006.0
    # The opened event kept a snapshot of the alert as it was then.
    assert opened[0].alert.status == "open"


def test_state_reloaded_after_restart_neither_duplicates_nor_forgets() -> None:
    first = ThresholdRules()
    [opened] = first.evaluate(reading(1, spo2=86))

    restarted = ThresholdRules()
    restarted.load([opened.alert])
    assert restarted.evaluate(reading(2, spo2=86)) == []
    [resolved] = restarted.evaluate(reading(3, spo2=97))
    assert resolved.alert.alert_id == opened.alert.alert_id


def test_alert_ids_are_deterministic_for_replays() -> None:
    a = ThresholdRules().evaluate(reading(1, spo2=86))
    b = ThresholdRules().evaluate(reading(1, spo2=86))
    assert a[0].alert.alert_id == b[0].alert.alert_id
