"""Measurements minutes apart (a blood-pressure cuff): each is judged on its own, with no
second sample soon to wait for; a monitor's single sample still is not."""

from __future__ import annotations

from typing import Any

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.rules import AnomalySettings
from tests.stream.engine_cases import T0, Run, reading
from tests.stream.test_alarm_rules import opened

CUFF_S = 900  # a cuff cycling every 15 minutes


def ward(run: Run, cuff: list[float], monitor_s: int = 15) -> list[AlertEvent]:
    """A monitor sending heart rate and SpO2 every `monitor_s`, and a cuff its systolic
    pressures every 15 minutes, one per value of `cuff`; every event they raised."""
    events: list[AlertEvent] = []
    end = len(cuff) * CUFF_S
    samples: list[tuple[int, str, dict[str, Any]]] = [
        (t, "mon-1", {"heart_rate": 75, "spo2": 97}) for t in range(0, end, monitor_s)
    ]
    samples += [(i * CUFF_S + 7, "cuff-1", {"bp_sys": v}) for i, v in enumerate(cuff)]
    for t, device, vitals in sorted(samples, key=lambda s: s[0]):
        events += run.send(reading(t, device=device, **vitals))
    return events


def test_a_cuff_measurement_clearly_past_the_limit_alarms_at_once() -> None:
    # Systolic 80 is 10 below the 90 limit: the next measurement is 15 minutes away,
    # and a hypotension of half an hour may show in no other.
    events = ward(Run(), [118, 112, 80])
    assert opened(events) == [("threshold:bp_sys", 2 * CUFF_S + 7)]


def test_a_marginal_cuff_measurement_waits_for_the_next() -> None:
    # 88 lies within a cuff's own error of the limit (+-5 mmHg): the next confirms it.
    assert opened(ward(Run(), [118, 112, 88])) == []
    assert opened(ward(Run(), [118, 112, 88, 87])) == [("threshold:bp_sys", 3 * CUFF_S + 7)]


def test_a_monitors_single_low_pressure_a_minute_apart_is_not_believed_alone() -> None:
    # A monitor's signal, sampled every minute: one sample past the limit is no
    # measurement of its own, whatever the interval; the next one decides.
    for spot_check_s, alerts in ((240.0, []), (30.0, [("threshold:bp_sys", 180)])):
        run = Run(AnomalySettings(spot_check_s=spot_check_s))
        events: list[AlertEvent] = []
        for t, bp_sys in enumerate([104, 100, 96, 84, 98, 101]):
            events += run.send(reading(t * 60, device="mon-2", heart_rate=75, bp_sys=bp_sys))
        assert opened(events) == alerts, spot_check_s


def test_a_cuff_alert_resolves_at_the_first_measurement_back_inside() -> None:
    # The next measurement is the next cycle: waiting 30 s more for a second one kept
    # the alert open 15 minutes after the pressure was back.
    events = ward(Run(), [118, 80, 121])
    changes = [(e.type, e.alert.kind, e.alert.updated_at - T0) for e in events]
    assert changes == [
        ("opened", "threshold:bp_sys", CUFF_S + 7),
        ("resolved", "threshold:bp_sys", 2 * CUFF_S + 7),
    ]


def test_a_cuff_measurement_far_from_the_last_one_is_no_artefact() -> None:
    # 135 -> 78 is more than a pressure moves between two samples of a monitor, but
    # these are 15 minutes apart: the fall is judged as the measurement it is.
    events = ward(Run(), [140, 135, 78])
    assert opened(events) == [("threshold:bp_sys", 2 * CUFF_S + 7)]
