"""The anomaly engine's device offline alerts, per-patient rules, and state that survives
a restart; alert ids and replays are deterministic."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.bands import PatientRules
from healthsync.domain.rules import AnomalySettings
from healthsync.stream.clock import DeviceClock
from healthsync.stream.replay import replay
from healthsync.stream.state import PatientState, Sample, SetAside, Tracker
from healthsync.stream.trends import Baseline, TrendWindow
from tests.stream.engine_cases import T0, Run, kinds, reading


def test_device_offline_and_back() -> None:
    run = Run()
    for t in range(0, 30, 5):
        run.send(reading(t, device="mon-9", heart_rate=70))
    assert run.send(now=45) == [], "15 s of silence is within the 30 s minimum"
    [offline] = run.send(now=70)
    alert = offline.alert
    assert (alert.kind, alert.category, alert.device_id) == (
        "device_offline:mon-9",
        "technical",
        "mon-9",
    )
    assert run.send(now=80) == [], "one offline alert per episode"
    events = run.send(reading(90, device="mon-9", heart_rate=71))
    assert [(e.type, e.alert.alert_id) for e in events] == [("resolved", alert.alert_id)]


def test_scale_2_patient_on_target_raises_nothing() -> None:
    settings = AnomalySettings(patients={"P-COPD": PatientRules(spo2_scale=2)})
    run = Run(settings)
    events: list[AlertEvent] = []
    for t in range(0, 60, 10):
        events += run.send(reading(t, "P-COPD", spo2=89), reading(t, "P-2", spo2=89))
    assert {e.alert.patient_id for e in events} == {"P-2"}


def test_rules_set_through_the_store_take_effect_after_refresh() -> None:
    stored: dict[str, PatientRules] = {}
    run = Run(load_rules=lambda patients: {p: stored[p] for p in patients if p in stored})
    run.book.max_age_s = 0
    stored["P-1"] = PatientRules.model_validate({"bands": {"heart_rate": {"high": 100}}})
    run.send(reading(0, heart_rate=110))
    assert kinds(run.send(reading(20, heart_rate=110))) == [
        ("opened", "threshold:heart_rate", "warning")
    ]


def test_state_survives_a_restart_mid_persistence() -> None:
    store: dict[str, dict[str, Any]] = {}
    first = Run(load_states=lambda ps: {p: store[p] for p in (ps or store) if p in store})
    assert first.send(reading(0, spo2=88)) == []
    store.update(first.states)

    second = Run(load_states=lambda ps: {p: store[p] for p in (ps or store) if p in store})
    [opened] = second.send(reading(15, spo2=88))
    assert opened.alert.window_s == 15, "the persistence timer started before the restart"


def test_open_alerts_reload_after_a_restart_neither_duplicated_nor_forgotten() -> None:
    store: dict[str, dict[str, Any]] = {}
    first = Run()
    first.send(reading(-10, spo2=82), reading(-5, spo2=82))
    [opened] = first.send(reading(0, spo2=82))
    store.update(first.states)
    second = Run(
        load_states=lambda ps: {p: store[p] for p in (ps or store) if p in store},
        load_open=lambda: [opened.alert],
    )
    assert second.send(reading(5, spo2=82)) == []
    second.send(reading(10, spo2=97))
    [resolved] = second.send(reading(45, spo2=97))
    assert resolved.alert.alert_id == opened.alert.alert_id


def test_only_owned_partitions_are_loaded_and_watched() -> None:
    mine = {"partition": 1, "devices": {"d1": [T0, 5.0, 5]}}
    theirs = {"partition": 2, "devices": {"d2": [T0, 5.0, 5]}}
    store = {"P-1": mine, "P-2": theirs}
    run = Run(load_states=lambda ps: {p: store[p] for p in (ps or store)})
    run.engine.on_assign([1])
    events = run.send(now=100)
    assert [(e.alert.patient_id, e.alert.kind) for e in events] == [("P-1", "device_offline:d1")]


def test_alert_ids_are_deterministic_for_replays() -> None:
    same = [reading(t, spo2=82, patient="P-9") for t in (0, 5, 10)]

    def opened() -> str:
        return Run().send(*same)[0].alert.alert_id

    assert opened() == opened()


def test_replay_runs_the_whole_engine_over_readings() -> None:
    readings = [reading(t, device="d7", spo2=97) for t in range(0, 60, 5)]
    readings += [reading(t, device="d7", spo2=84) for t in range(120, 140, 5)]
    events = replay(readings)
    assert [(e.type, e.alert.kind) for e in events] == [
        ("opened", "device_offline:d7"),
        ("resolved", "device_offline:d7"),
        ("opened", "threshold:spo2"),
    ]


def test_a_monitor_moved_to_another_patient_leaves_no_offline_alert_behind() -> None:
    run = Run()
    for t in range(0, 30, 5):
        run.send(reading(t, "P-1", device="mon-1", heart_rate=70))
    [offline] = run.send(now=70)
    assert (offline.alert.patient_id, offline.alert.kind) == ("P-1", "device_offline:mon-1")
    events = run.send(reading(90, "P-2", device="mon-1", heart_rate=80))
    assert [(e.type, e.alert.alert_id) for e in events] == [("resolved", offline.alert.alert_id)]
    assert "mon-1" not in run.states["P-1"]["devices"], "the old patient's state forgets it"
    # Moved before it was missed: nothing opens for the old patient later either.
    for t in range(0, 30, 5):
        run.send(reading(t, "P-3", device="mon-2", heart_rate=70))
    events = []
    for t in range(30, 200, 5):
        events += run.send(reading(t, "P-4", device="mon-2", heart_rate=70))
        events += run.send(reading(t, "P-2", device="mon-1", heart_rate=80), now=t)
    assert events == []


def test_a_batchs_saved_state_is_not_changed_by_the_next_batch() -> None:
    """The processor writes a batch's states while the next batch is processed, and
    writes them again if that write fails: they must be the states as they were."""
    run = Run()
    # Enough samples for trend buckets, held artefacts, evidence and a pending alert.
    for t in range(0, 120, 5):
        run.send(reading(t, spo2=97 if t < 90 else 84, heart_rate=75))
    saved = run.states["P-1"]
    as_saved = copy.deepcopy(saved)
    for t in range(120, 180, 5):
        run.send(reading(t, spo2=83, heart_rate=76 + t % 3))
    assert saved == as_saved, "the state saved with a batch moved on with the next"


def test_every_part_of_a_patients_state_reads_back_from_its_json() -> None:
    """What the live sink saves is what a restarted processor continues from."""
    sample = Sample(T0, 88.0, "r1")
    ended = Tracker(since=T0 - 30, count=3, last_ts=T0 - 20, evidence=[(T0 - 30, 87.0)])
    state = PatientState(
        partition=2,
        trackers={
            "threshold:spo2": Tracker(
                since=T0,
                count=2,
                last_ts=T0 + 5,
                clear_since=T0 + 5,
                evidence=[(T0, 88.0), (T0 + 5, 87.5)],
                critical_since=T0,
                critical_last=T0 + 5,
                critical_count=2,
                calm_at=T0 - 1,
                inside_at=T0 - 2,
                ended=ended,
                ended_at=T0 - 10,
            )
        },
        last={"spo2": sample},
        held={"heart_rate": [Sample(T0, 160.0, "r1"), Sample(T0 + 5, 161.0, "r2")]},
        aside={"resp_rate": SetAside([Sample(T0, 40.0, "r1")], 15.0, T0 + 5, slack=False)},
        fall_from={"spo2": 96.0},
        recent={"spo2": [(T0, 88.0), (T0 + 5, 87.5)]},
        windows={"spo2_fall": TrendWindow(300.0, [(T0, 176.0, 2.0, 87.5, 88.5)], [88.0], 15.0)},
        baselines={"heart_rate": Baseline(75.0, 4.0, 12, T0)},
        devices={"mon-1": DeviceClock(T0 + 5.1, 5.0, 12, T0 + 5.0, 1.2, 0.1, 2.5)},
    )
    saved = state.to_json()
    assert PatientState.from_dict(orjson.loads(saved)) == state
    assert PatientState.from_dict(orjson.loads(saved)).to_json() == saved
    # Saved before a set-aside run kept its hold's slack: it reads back without one, and
    # screening judges it by the hold's length, as it did then.
    older = orjson.loads(saved)
    older["aside"]["resp_rate"] = older["aside"]["resp_rate"][:3]
    assert PatientState.from_dict(older).aside == {
        "resp_rate": SetAside([Sample(T0, 40.0, "r1")], 15.0, T0 + 5, slack=None)
    }
