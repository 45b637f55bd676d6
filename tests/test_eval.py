"""`healthsync eval`: labelled scenarios, the naive baseline and the scoring of alarms."""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
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


# --- the generator ---------------------------------------------------------------------------


def fingerprint(dataset: Dataset) -> list[tuple[str, float, tuple[tuple[str, float], ...]]]:
    return [(r.patient_id, r.ts, tuple(sorted(r.vitals.items()))) for r in dataset.readings]


def test_generator_is_deterministic_for_a_seed(tiny: Dataset) -> None:
    again = generate(tiny.scenario)
    assert fingerprint(again) == fingerprint(tiny)
    assert again.episodes == tiny.episodes
    other = generate(tiny.scenario.model_copy(update={"seed": 12}))
    assert fingerprint(other) != fingerprint(tiny)
    assert other.episodes != tiny.episodes


def test_labels_match_the_readings(tiny: Dataset) -> None:
    bands = warning_bands()
    assert sorted(e.kind for e in tiny.episodes) == sorted(EPISODE_VITAL)
    for ep in tiny.episodes:
        low, high = bands[ep.vital]
        inside = [
            r.vitals[ep.vital]
            for r in tiny.readings
            if r.patient_id == ep.patient_id and ep.start <= r.ts <= ep.end
        ]
        assert len(inside) >= 60 // 5 - 1
        if EPISODE_VITAL[ep.kind][1] == "low":
            assert low is not None and all(v < low for v in inside), (ep.kind, inside)
        else:
            assert high is not None and all(v > high for v in inside), (ep.kind, inside)


def test_artefacts_are_in_the_readings(tiny: Dataset) -> None:
    dropouts = [a for a in tiny.artefacts if a.kind == "dropout"]
    spikes = [a for a in tiny.artefacts if a.kind == "spike"]
    assert dropouts and spikes
    for gap in dropouts:
        assert not [
            r
            for r in tiny.readings
            if r.patient_id == gap.patient_id and gap.start <= r.ts < gap.end
        ]
    for spike in spikes:
        hit = [
            r
            for r in tiny.readings
            if r.patient_id == spike.patient_id and spike.start <= r.ts < spike.end
        ]
        # A spike can fall into a dropout; otherwise its sample shows the dip.
        assert all(70 <= r.vitals["spo2"] <= 80 for r in hit)
    assert (
        sum(
            1
            for s in spikes
            for r in tiny.readings
            if r.patient_id == s.patient_id and s.start <= r.ts < s.end
        )
        >= len(spikes) // 2
    )
    per_patient = {pid: 0 for pid in tiny.patient_ids}
    for r in tiny.readings:
        per_patient[r.patient_id] += 1
    assert all(0 < n <= 3600 // 5 for n in per_patient.values())
    assert [r.ts for r in tiny.readings] == sorted(r.ts for r in tiny.readings)


def test_a_gradual_onset_moves_from_baseline_to_the_target(tmp_path: Path) -> None:
    text = TINY_TOML.split("[[episodes]]")[0] + (
        '[[episodes]]\nkind = "hypoxaemia"\ncount = 1\nduration_s = [300, 300]\n'
        "onset_s = [60, 60]\ntarget = [80, 80]\n"
    )
    dataset = generate(load_scenario(write(tmp_path, text + VITALS_TOML)))
    [ep] = dataset.episodes
    assert ep.start - ep.onset_at == pytest.approx(60)
    assert ep.duration == pytest.approx(300)

    def spo2(since: float, until: float) -> list[float]:
        return [
            r.vitals["spo2"]
            for r in dataset.readings
            if r.patient_id == ep.patient_id and since <= r.ts < until
        ]

    assert all(v >= 90 for v in spo2(ep.onset_at - 120, ep.onset_at))  # baseline 94-99
    ramp = spo2(ep.onset_at, ep.start)
    assert sum(ramp[: len(ramp) // 2]) > sum(ramp[len(ramp) - len(ramp) // 2 :])
    held = spo2(ep.start + 60, ep.end - 60)
    assert held and all(v < 90 for v in held)
    assert min(held) <= 82
    assert all(v >= 90 for v in spo2(ep.end + 120, ep.end + 300))  # recovered


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


# --- the harder generator ------------------------------------------------------------------

WARD_TOML = (
    """
description = "mixed devices, late and reordered readings, cuffs, correlated episodes"
seed = 21
patients = 12
duration_s = 3600
interval_s = 5
intervals = [5, 15, 60]
jitter_s = 1.0
arrival_delay_s = [0, 12]
bp_cuff_s = 900
sqi_share = 1.0

[[episodes]]
kind = "hypoxaemia"
count = 4
duration_s = [120, 240]
target = [82, 86]
correlated = true

[[episodes]]
kind = "hypoxaemia"
count = 2
duration_s = [300, 400]
onset_s = [600, 900]
target = [88, 89]

[[artefacts]]
kind = "spike"
vital = "spo2"
per_patient_hour = 20
value = [70, 80]
samples = [1, 3]
low_quality = 1.0

[[artefacts]]
kind = "dropout"
per_patient_hour = 2
duration_s = [30, 60]
"""
    + VITALS_TOML
)


@pytest.fixture(scope="module")
def ward(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(load_scenario(write(tmp_path_factory.mktemp("ward"), WARD_TOML, "ward.toml")))


def test_devices_send_at_their_own_interval_with_jitter_and_late_arrival(ward: Dataset) -> None:
    by_device: dict[str, list[Reading]] = {}
    for r in ward.readings:  # in arrival order
        by_device.setdefault(r.device_id, []).append(r)
    monitors = {d: rs for d, rs in by_device.items() if d.startswith("eval-mon-")}
    cuffs = {d: rs for d, rs in by_device.items() if d.startswith("eval-cuff-")}

    def interval(rs: list[Reading]) -> float:
        times = sorted(r.ts for r in rs)
        return round(statistics.median(b - a for a, b in itertools.pairwise(times)))

    assert {interval(rs) for rs in monitors.values()} == {5, 15, 60}
    # Not on a perfect grid, delivered late, and some of a device's readings out of order.
    assert any((r.ts - EPOCH) % 1 for r in ward.readings)
    assert max(r.received_at - r.ts for r in ward.readings) > 5
    assert any([r.ts for r in rs] != sorted(r.ts for r in rs) for rs in monitors.values())
    # Blood pressure comes from the cuff only, every 15 minutes.
    assert all("bp_sys" not in r.vitals for rs in monitors.values() for r in rs)
    assert cuffs and all(3 <= len(rs) <= 5 for rs in cuffs.values())
    # Every monitor here reports signal quality; the spiked samples carry a poor one.
    assert all("sqi" in r.quality for rs in monitors.values() for r in rs)
    spikes = [a for a in ward.artefacts if a.kind == "spike"]
    spiked = [
        r
        for a in spikes
        for r in monitors[f"eval-mon-{a.patient_id[3:]}"]
        if a.start <= r.ts - (r.ts - EPOCH) % 1 and r.vitals["spo2"] <= 80 and r.ts < a.end + 2
    ]
    assert spiked and all(r.quality["sqi"] < 0.5 for r in spiked)


def test_a_correlated_hypoxaemia_moves_heart_and_breathing_too(ward: Dataset) -> None:
    [sudden, *_] = [e for e in ward.episodes if e.related]
    assert sudden.related == ("heart_rate", "resp_rate")
    mine = [r for r in ward.readings if r.patient_id == sudden.patient_id and "spo2" in r.vitals]
    before = [r for r in mine if r.ts < sudden.onset_at - 60]
    during = [r for r in mine if sudden.start + 30 <= r.ts <= sudden.end - 30]
    assert before and during
    rise = statistics.mean(r.vitals["heart_rate"] for r in during) - statistics.mean(
        r.vitals["heart_rate"] for r in before
    )
    assert rise > 10


def test_artefacts_come_near_and_inside_episodes_but_never_change_a_label(ward: Dataset) -> None:
    spikes = [a for a in ward.artefacts if a.kind == "spike"]
    near = [
        s
        for s in spikes
        for e in ward.episodes
        if s.patient_id == e.patient_id and e.onset_at - 120 <= s.start <= e.end + 120
    ]
    assert near
    assert {a.end - a.start for a in spikes} > {5.0, 15.0}, "1 to 3 samples"
    for e in ward.episodes:
        hidden = [
            d
            for d in ward.artefacts
            if d.kind == "dropout"
            and d.patient_id == e.patient_id
            and d.start < e.end
            and e.start < d.end
        ]
        assert hidden == []
