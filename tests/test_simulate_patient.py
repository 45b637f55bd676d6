"""The simulated patient and monitor: vitals within bounds, stable drift,
clinical episodes, and the protocol lines a SimulatedDevice sends."""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Callable

import pytest

from healthsync.domain.readings import CONSCIOUSNESS_LEVELS, VITALS, reading_id_for
from healthsync.simulate import (
    EPISODE_KINDS,
    EpisodeKind,
    PatientModel,
    SimulatedDevice,
    SimulationError,
    VitalSigns,
)
from healthsync.wire import parse_line
from tests.simulate_cases import SEQ_START


def quiet_model(seed: int) -> PatientModel:
    return PatientModel(random.Random(seed), episode_probability=0.0)


def values(signs: VitalSigns) -> dict[str, float]:
    return {
        "heart_rate": signs.heart_rate,
        "spo2": signs.spo2,
        "temp": signs.temp,
        "resp_rate": signs.resp_rate,
        "bp_sys": signs.bp_sys,
        "bp_dia": signs.bp_dia,
    }


# --- the patient model --------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_values_stay_in_bounds_through_many_episodes(seed: int) -> None:
    # Episodes far more often than the default, back to back, to push the extremes.
    model = PatientModel(random.Random(seed), episode_probability=0.2)
    for _ in range(3000):
        signs = model.step()
        for name, value in values(signs).items():
            vital = VITALS[name]
            assert vital.minimum <= value <= vital.maximum, (name, value)
            assert round(value, vital.decimals) == value, (name, value)
        assert isinstance(signs.heart_rate, int)
        assert isinstance(signs.spo2, int)
        assert signs.spo2 <= 100
        assert signs.bp_sys > signs.bp_dia
        assert signs.consciousness in CONSCIOUSNESS_LEVELS
    assert model.episodes_started > 10


def test_quiet_patient_looks_like_a_stable_ward_patient() -> None:
    for seed in range(10):
        model = quiet_model(seed)
        readings = [model.step() for _ in range(2000)]
        assert 50 <= statistics.mean(r.heart_rate for r in readings) <= 110
        assert min(r.spo2 for r in readings) >= 90
        assert 35.8 <= statistics.mean(r.temp for r in readings) <= 37.6
        assert all(r.consciousness == "A" for r in readings)
        # Drift, not a frozen number and not white noise: consecutive readings are close.
        assert len({r.heart_rate for r in readings}) > 5
        steps = [abs(a.heart_rate - b.heart_rate) for a, b in itertools.pairwise(readings)]
        assert statistics.mean(steps) < 5


def test_same_seed_same_patient() -> None:
    a, b, c = (PatientModel(random.Random(seed)) for seed in (7, 7, 8))
    assert [a.step() for _ in range(500)] == [b.step() for _ in range(500)]
    assert a.baseline != c.baseline


@pytest.mark.parametrize("seed", range(10))
def test_hypoxaemia_lowers_spo2_then_recovers(seed: int) -> None:
    model = quiet_model(seed)
    before = [model.step() for _ in range(100)]
    episode = model.start_episode("hypoxaemia")
    ramp = [model.step() for _ in range(episode.ramp)]
    hold = [model.step() for _ in range(episode.hold)]
    recover = [model.step() for _ in range(episode.recover)]
    after = [model.step() for _ in range(100)]

    assert min(r.spo2 for r in before) >= 91
    assert ramp[0].spo2 > ramp[-1].spo2 - 1
    assert statistics.median(r.spo2 for r in hold) < 90
    assert min(r.spo2 for r in hold) <= 88
    assert statistics.mean(r.resp_rate for r in hold) > statistics.mean(r.resp_rate for r in before)
    assert all(r.on_oxygen for r in recover)
    assert statistics.mean(r.spo2 for r in after[-50:]) > 92


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("tachycardia", lambda hold: statistics.median(r.heart_rate for r in hold) >= 125),
        ("fever", lambda hold: statistics.median(r.temp for r in hold) >= 38.3),
    ],
)
def test_other_episodes_move_their_vital(
    kind: EpisodeKind, check: Callable[[list[VitalSigns]], bool]
) -> None:
    for seed in range(10):
        model = quiet_model(seed)
        for _ in range(100):
            model.step()
        episode = model.start_episode(kind)
        ramp = [model.step() for _ in range(episode.ramp)]
        hold = [model.step() for _ in range(episode.hold)]
        assert ramp and check(hold), (seed, kind)


def test_episodes_start_at_random_and_are_reported() -> None:
    seen: list[EpisodeKind] = []
    model = PatientModel(random.Random(3), episode_probability=0.05, on_episode=seen.append)
    for _ in range(20_000):
        model.step()
    assert len(seen) == model.episodes_started > 20
    assert set(seen) == set(EPISODE_KINDS)


def test_episode_probability_is_validated() -> None:
    with pytest.raises(SimulationError, match="episode_probability"):
        PatientModel(random.Random(), episode_probability=1.5)


# --- lines ----------------------------------------------------------------------


def test_every_line_parses_as_the_devices_reading() -> None:
    for seed in range(5):
        device = SimulatedDevice(
            "mon-0042",
            "P-4242",
            PatientModel(random.Random(seed), episode_probability=0.05),
            seq_start=SEQ_START,
        )
        for n in range(2000):
            line = device.next_line()
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            reading = parse_line(line, time.time())
            assert reading.device_id == "mon-0042"
            assert reading.patient_id == "P-4242"
            assert reading.seq == SEQ_START + n
            assert reading.reading_id == reading_id_for("mon-0042", SEQ_START + n, 0)
            assert set(reading.vitals) == set(VITALS)
            assert reading.on_oxygen is not None
            assert reading.consciousness in CONSCIOUSNESS_LEVELS


def test_line_carries_what_the_model_shows() -> None:
    model = quiet_model(11)
    twin = quiet_model(11)
    device = SimulatedDevice("d-1", "p-1", model, seq_start=0)
    reading = parse_line(device.next_line(), time.time())
    assert reading.vitals == values(twin.step())
