"""`healthsync eval`: labelled scenarios, the naive baseline and the scoring of alarms."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.domain.rules import AnomalySettings
from healthsync.evaluation.detectors import Alarm, monitor_alarms, naive_alarms, run_engine
from healthsync.evaluation.generate import EPOCH, Dataset, LabelledEpisode, generate, warning_bands
from healthsync.evaluation.scenario import (
    EPISODE_VITAL,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_paths,
)
from healthsync.evaluation.scoring import (
    KindScore,
    alert_reduction,
    false_alarms,
    percentile,
    score,
)

VITALS_TOML = """
[vitals.heart_rate]
mean = 78
sd = 8
min = 60
max = 100
drift = 3
noise = 2

[vitals.spo2]
mean = 96
sd = 1
min = 94
max = 99
drift = 0.5
noise = 0.8

[vitals.temp]
mean = 36.8
sd = 0.2
min = 36.2
max = 37.4
drift = 0.1
noise = 0.05

[vitals.resp_rate]
mean = 16
sd = 1.5
min = 13
max = 20
drift = 1
noise = 1

[vitals.bp_sys]
mean = 122
sd = 10
min = 105
max = 150
drift = 4
noise = 3

[vitals.bp_dia]
mean = 75
sd = 6
min = 60
max = 90
drift = 2
noise = 2
"""

# One abrupt episode of every kind, far enough past its limit that noise cannot
# hide it, plus SpO2 motion dips and dropouts.
TINY_TOML = (
    """
description = "test cohort"
seed = 11
patients = 6
duration_s = 3600
interval_s = 5

[[episodes]]
kind = "hypoxaemia"
count = 1
duration_s = [60, 120]
target = [80, 84]

[[episodes]]
kind = "tachycardia"
count = 1
duration_s = [60, 120]
target = [140, 150]

[[episodes]]
kind = "bradycardia"
count = 1
duration_s = [60, 120]
target = [34, 38]

[[episodes]]
kind = "fever"
count = 1
duration_s = [60, 120]
target = [39.5, 40]

[[episodes]]
kind = "hypotension"
count = 1
duration_s = [60, 120]
target = [70, 75]

[[episodes]]
kind = "bradypnoea"
count = 1
duration_s = [60, 120]
target = [5, 6]

[[artefacts]]
kind = "spike"
vital = "spo2"
per_patient_hour = 4
value = [70, 80]

[[artefacts]]
kind = "dropout"
per_patient_hour = 1
duration_s = [60, 120]
"""
    + VITALS_TOML
)


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(load_scenario(write(tmp_path_factory.mktemp("eval"), TINY_TOML)))


# --- scoring -----------------------------------------------------------------------------


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


# --- the naive baseline --------------------------------------------------------------------


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


def test_the_engine_runs_with_the_anomaly_settings(tiny: Dataset) -> None:
    default = run_engine(tiny.readings, Settings())
    # With the defaults, trend, baseline or NEWS2 rules add alerts of their own.
    assert {a.kind.split(":")[0] for a in default.alarms} - {"threshold", "device_offline"}
    plain = Settings(anomaly=AnomalySettings(trends=(), baselines=(), news2_alerts=False))
    kinds = {a.kind.split(":")[0] for a in run_engine(tiny.readings, plain).alarms}
    assert kinds <= {"threshold", "device_offline"}
    assert "device_offline" in kinds


# --- scenario files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (("patients = 6", "patients = 0"), "patients"),
        (('kind = "bradypnoea"', 'kind = "bradypnea"'), "episodes.5.kind"),
        (("[vitals.bp_dia]", "[vitals.bp_diastolic]"), "vitals"),
        (("target = [80, 84]", "target = [84, 80]"), "episodes.0"),
        (("interval_s = 5", "interval_s = 5\nintervl = 1"), "intervl"),
    ],
)
def test_a_bad_scenario_file_names_the_file_and_field(
    tmp_path: Path, change: tuple[str, str], names: str
) -> None:
    path = write(tmp_path, TINY_TOML.replace(*change, 1))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: invalid scenario: ")
    assert names in str(caught.value)


def test_values_that_contradict_the_warning_bands_are_refused(tmp_path: Path) -> None:
    normal_dip = load_scenario(write(tmp_path, TINY_TOML.replace("[80, 84]", "[91, 93]")))
    with pytest.raises(ScenarioError, match=r"episodes\.0\.target: hypoxaemia must take spo2"):
        generate(normal_dip)
    low_baseline = load_scenario(write(tmp_path, TINY_TOML.replace("min = 94", "min = 88")))
    with pytest.raises(ScenarioError, match=r"vitals\.spo2: baseline range 88\.\.99"):
        generate(low_baseline)


def test_episodes_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    crowded = TINY_TOML.replace(
        "count = 1\nduration_s = [60, 120]", "count = 20\nduration_s = [900, 900]", 1
    )
    with pytest.raises(ScenarioError, match=r"episodes\.0: cannot place 20 hypoxaemia episodes"):
        generate(load_scenario(write(tmp_path, crowded)))


def test_the_repository_scenarios_are_found_and_valid() -> None:
    paths = scenario_paths(None)
    assert {p.name for p in paths} >= {"stable.toml", "deterioration.toml", "artefacts.toml"}
    scenarios: list[Scenario] = [load_scenario(p) for p in paths]
    kinds = {e.kind for s in scenarios for e in s.episodes}
    assert kinds == set(EPISODE_VITAL)
    assert any(s.targets.min_alert_reduction for s in scenarios)


def test_a_directory_means_its_scenario_files(tmp_path: Path) -> None:
    first, second = write(tmp_path, TINY_TOML, "b.toml"), write(tmp_path, TINY_TOML, "a.toml")
    assert scenario_paths([tmp_path]) == [second, first]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match=r"no \*\.toml scenario files"):
        scenario_paths([empty])


# --- the command -------------------------------------------------------------------------------


def run_eval(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "healthsync", "eval", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_eval_prints_the_table_for_a_scenario(tmp_path: Path) -> None:
    result = run_eval("--scenario", str(write(tmp_path, TINY_TOML)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "scenario tiny: 6 patients x 1.0 h, 5 s samples, seed 11, 6 episodes"
    )
    header = next(i for i, line in enumerate(lines) if line.startswith("detector"))
    assert lines[header].split() == [
        "detector",
        "detected",
        "sens",
        "sens>=60s",
        "median",
        "p90",
        "alerts",
        "false",
        "false/pt-h",
        "technical",
        "reduction",
    ]
    # "9 s" is one column: glue the unit on before splitting.
    engine, monitor, naive = (
        re.sub(r"(\d) s\b", r"\1s", lines[header + i]).split() for i in (1, 2, 3)
    )
    # Every episode here goes far past its limit: every detector catches all of them.
    assert naive[:4] == ["naive", "6/6", "100%", "100%"]
    assert monitor[:4] == ["monitor", "6/6", "100%", "100%"]
    assert engine[:4] == ["engine", "6/6", "100%", "100%"]
    # ... the engine within 15 s (median), with fewer false alerts than the monitor.
    assert int(engine[4].rstrip("s")) <= 15
    assert int(engine[7]) <= int(monitor[7])
    [by_kind] = [line for line in lines if line.startswith("engine by episode kind")]
    assert all(f" {kind} " in by_kind for kind in EPISODE_VITAL)


def test_eval_check_fails_on_a_missed_target_and_json_says_which(tmp_path: Path) -> None:
    # Detecting an episode takes an alert, so no engine can also raise 100% fewer
    # alerts than the naive baseline: this target set always fails.
    impossible = TINY_TOML + "\n[targets]\nmin_alert_reduction = 1.0\n"
    path = write(tmp_path, impossible, "impossible.toml")
    result = run_eval("--scenario", str(path), "--json", "--check", "--seed", "5")
    assert result.returncode == 1, result.stderr
    [doc] = json.loads(result.stdout)
    assert (doc["scenario"], doc["seed"], doc["passed"]) == ("impossible", 5, False)
    assert doc["naive"]["episodes"] == 6
    assert doc["naive"]["missed"] == []
    assert {t["name"] for t in doc["targets"]} >= {"alerts >= 100% fewer than naive"}


def test_eval_with_a_bad_file_exits_2_and_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, TINY_TOML.replace("patients = 6", "patients = -1"))
    result = run_eval("--scenario", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"healthsync: {path}: invalid scenario: patients:")
