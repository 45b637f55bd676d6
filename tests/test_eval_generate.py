"""`healthsync eval`'s generator: deterministic, labelled, and as hard as real wards."""

from __future__ import annotations

import itertools
import random
import statistics
from pathlib import Path

import pytest

from healthsync.domain.news2 import news2
from healthsync.domain.readings import Reading
from healthsync.evaluation.generate import EPOCH, Dataset, generate, warning_bands
from healthsync.evaluation.physiology import Patient
from healthsync.evaluation.scenario import EPISODE_VITAL, load_scenario
from tests.eval_cases import TINY_TOML, VITALS_TOML, write


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return generate(load_scenario(write(tmp_path_factory.mktemp("eval"), TINY_TOML)))


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


def test_a_stable_patient_never_sits_at_a_medium_news2_score() -> None:
    # A ward whose usual values lie in NEWS2's amber ranges (SpO2 93-95, pulse 91-110,
    # systolic 101-110, respiration 21-24): drawn freely, many would score 5 or more,
    # which calls for an urgent response and is no stable patient.
    scenario = load_scenario(Path("scenarios/deterioration.toml"))
    amber = {"spo2": 94.0, "heart_rate": 98.0, "bp_sys": 106.0, "resp_rate": 20.0}
    vitals = {
        name: spec.model_copy(update={"mean": amber[name]}) if name in amber else spec
        for name, spec in scenario.vitals.items()
    }
    scenario = scenario.model_copy(update={"vitals": vitals})
    rng = random.Random(5)
    free, held = [], []
    for _ in range(40):
        patient = Patient(scenario, warning_bands(), rng, 5.0)
        for _ in range(720):  # one hour of 5 s samples
            patient.step()
            raw = {v: patient.background(v) for v in patient.specs}
            free.append(news2(raw, 0.0).total)
            held.append(news2(patient.true_values(0.0, []), 0.0).total)
    assert max(free) >= 5, "the ward must be one where a free draw reaches medium"
    assert max(held) <= 4
