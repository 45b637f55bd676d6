"""`healthsync eval`'s detectors: the naive baseline, a bedside monitor's delayed alarms,
and the engine run with the anomaly settings."""

from __future__ import annotations

import pytest

from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.domain.rules import AnomalySettings
from healthsync.evaluation.detectors import monitor_alarms, naive_alarms, run_engine
from healthsync.evaluation.generate import EPOCH, Dataset, generate, warning_bands
from healthsync.evaluation.scenario import load_scenario
from tests.eval_cases import TINY_TOML, write


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(load_scenario(write(tmp_path_factory.mktemp("eval"), TINY_TOML)))


def reading(patient: str, t: float, **vitals: float) -> Reading:
    ts = EPOCH + t
    rid = reading_id_for(f"dev-{patient}", None, int(ts * 1000))
    return Reading(rid, f"dev-{patient}", patient, ts, ts, dict(vitals))


def test_naive_baseline_raises_one_alarm_per_excursion() -> None:
    spo2 = [88, 87, 95, 86, 85, 96, 97, 89]  # out from the start, twice more later
    readings = [reading("P1", 5 * i, spo2=v, heart_rate=80) for i, v in enumerate(spo2)]
    readings.append(reading("P2", 1, spo2=88, heart_rate=130))
    readings.append(reading("P2", 6, spo2=88, heart_rate=150))
    alarms = naive_alarms(sorted(readings, key=lambda r: r.ts), warning_bands())
    assert [(a.patient_id, a.kind, a.opened_at - EPOCH) for a in alarms] == [
        ("P1", "naive:spo2", 0),
        ("P2", "naive:spo2", 1),
        ("P2", "naive:heart_rate", 1),
        ("P1", "naive:spo2", 15),
        ("P1", "naive:spo2", 35),
    ]


def test_the_monitor_alarms_once_an_excursion_lasts_its_delay_critical_values_included() -> None:
    spo2 = [97, 80, 80, 80, 80, 80, 96, 84, 84, 97, 88, 88, 88, 88]
    readings = [reading("P1", 5 * i, spo2=v) for i, v in enumerate(spo2)]
    alarms = monitor_alarms(readings, warning_bands(), delay_s=15)
    # 80 from 5 s: alarm at 20 s, once; 84 for 5 s: none; 88 from 50 s: alarm at 65 s.
    assert [(a.kind, a.opened_at - EPOCH, a.vitals) for a in alarms] == [
        ("monitor:spo2", 20, frozenset({"spo2"})),
        ("monitor:spo2", 65, frozenset({"spo2"})),
    ]
    assert monitor_alarms(readings, warning_bands(), delay_s=0)[0].opened_at == EPOCH + 5


def test_the_monitors_high_and_low_limits_are_separate_alarm_conditions() -> None:
    # A 60 s monitor: a lead spike (178/min), then a bradycardia. The low alarm's delay
    # runs from the first low sample, as a monitor's "HR low" does, not from the spike.
    heart_rate = [70, 178, 38, 36, 37, 72]
    readings = [reading("P1", 60 * i, heart_rate=v) for i, v in enumerate(heart_rate)]
    alarms = monitor_alarms(readings, warning_bands(), delay_s=15)
    assert [(a.kind, a.opened_at - EPOCH) for a in alarms] == [("monitor:heart_rate", 180)]


def test_the_engine_runs_with_the_anomaly_settings(tiny: Dataset) -> None:
    default = run_engine(tiny.readings, Settings())
    # With the defaults, trend, baseline or NEWS2 rules add alerts of their own.
    assert {a.kind.split(":")[0] for a in default.alarms} - {"threshold", "device_offline"}
    plain = Settings(anomaly=AnomalySettings(trends=(), baselines=(), news2_alerts=False))
    kinds = {a.kind.split(":")[0] for a in run_engine(tiny.readings, plain).alarms}
    assert kinds <= {"threshold", "device_offline"}
    assert "device_offline" in kinds
