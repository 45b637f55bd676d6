"""`healthsync eval`'s labelled scenarios: files refused with the field they get wrong, and
the repository's own scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.evaluation.generate import generate
from healthsync.evaluation.report import evaluate_dataset
from healthsync.evaluation.scenario import (
    EPISODE_VITAL,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_paths,
)
from tests.eval_cases import TINY_TOML, write


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


def test_artefacts_read_by_10_s_monitors_raise_fewer_false_alerts_than_the_monitor() -> None:
    # The files' devices send every 5, 15 or 60 s; a 10 s monitor's second sample after a
    # jump already lasts the artefact hold. Its two-sample lead spikes and knocked cuffs
    # must not stand where a monitor, waiting 15 s for a third sample, raises nothing.
    [path] = [p for p in scenario_paths(None) if p.name == "artefacts.toml"]
    scenario = load_scenario(path).model_copy(update={"interval_s": 10.0, "duration_s": 5400.0})
    result = evaluate_dataset(generate(scenario), Settings(), None)
    assert result.engine.false_alerts < result.monitor.false_alerts
    checks = {t.name: t.passed for t in result.targets}
    assert checks["critical episodes caught no later than the bedside monitor"]
    assert result.engine.long_detected == result.engine.long_episodes
