"""The anomaly engine: persistence, hysteresis, escalation, trends, baselines, artefacts,
NEWS2 alerts, device offline, per-patient rules, and state that survives a restart."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

import pytest

from healthsync.domain.alerts import AlertEvent
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.domain.rules import AnomalySettings, PatientRules
from healthsync.stream.engine import AnomalyEngine
from healthsync.stream.news2 import News2Scores
from healthsync.stream.replay import replay
from healthsync.stream.rulebook import RuleBook
from healthsync.wire import WireError, parse_line

T0 = 1_700_000_000.0
_ids = itertools.count()


def reading(
    t: float, patient: str = "P-1", device: str = "d1", **vitals: float | str | bool
) -> Reading:
    extra: dict[str, Any] = {}
    for key in ("on_oxygen", "consciousness"):
        if key in vitals:
            extra[key] = vitals.pop(key)
    return Reading(
        reading_id=f"r{next(_ids)}",
        device_id=device,
        patient_id=patient,
        ts=T0 + t,
        received_at=T0 + t,
        vitals={k: float(v) for k, v in vitals.items()},
        **extra,
    )


class Run:
    """An engine with NEWS2 in front of it, fed one reading per batch, as the processor does."""

    def __init__(self, settings: AnomalySettings | None = None, **kwargs: Any) -> None:
        self.settings = settings or AnomalySettings()
        self.book = RuleBook(self.settings.patients, kwargs.pop("load_rules", None))
        self.engine = AnomalyEngine(self.settings, self.book, **kwargs)
        self.news2 = News2Scores(lambda _p: {}, 900, scale_for=self.book.scale_for)
        self.states: dict[str, dict[str, Any]] = {}
        self.artefacts: list[Any] = []

    def send(self, *readings: Reading, now: float | None = None) -> list[AlertEvent]:
        batch = Batch(list(readings), now=None if now is None else T0 + now)
        self.book.process(batch)
        self.news2.process(batch)
        self.engine.process(batch)
        self.states.update(batch.states)
        self.artefacts.extend(batch.artefacts)
        return batch.alert_events


def kinds(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.alert.kind, e.alert.severity) for e in events]


def test_a_warning_opens_only_once_it_persists() -> None:
    run = Run(AnomalySettings(persist_s=15))
    assert run.send(reading(0, spo2=88)) == [], "one low sample is not an alarm yet"
    assert run.send(reading(10, spo2=88)) == [], "10 s is shorter than the 15 s persistence"
    [opened] = run.send(reading(15, spo2=87))
    alert = opened.alert
    assert (opened.type, alert.kind, alert.severity) == ("opened", "threshold:spo2", "warning")
    assert (alert.opened_at, alert.window_s, alert.value) == (T0 + 15, 15, 87)
    assert alert.evidence == [(T0, 88), (T0 + 10, 88), (T0 + 15, 87)]
    assert "spo2 < 90 %" in alert.rule and "15 s" in alert.rule


def test_a_condition_that_clears_while_pending_starts_over() -> None:
    run = Run()
    run.send(reading(0, spo2=88))
    run.send(reading(10, spo2=93))
    assert run.send(reading(16, spo2=88)) == [], "the earlier sample no longer counts"
    assert kinds(run.send(reading(31, spo2=88))) == [("opened", "threshold:spo2", "warning")]


def test_a_critical_value_opens_once_confirmed_and_a_worse_value_escalates_in_place() -> None:
    run = Run()
    run.send(reading(0, heart_rate=125))
    [warning] = run.send(reading(20, heart_rate=128))
    assert run.send(reading(25, heart_rate=150)) == [], "one critical sample is not confirmed"
    assert run.send(reading(30, heart_rate=150)) == []
    [escalated] = run.send(reading(35, heart_rate=150))
    assert escalated.type == "escalated"
    assert escalated.alert.alert_id == warning.alert.alert_id
    assert escalated.alert.severity == "critical"
    assert run.send(reading(40, heart_rate=128)) == [], "severity does not drop while open"

    other = Run()
    assert other.send(reading(0, spo2=82), reading(5, spo2=82)) == []
    [critical] = other.send(reading(10, spo2=82))
    assert (critical.type, critical.alert.severity, critical.alert.window_s) == (
        "opened",
        "critical",
        10,
    )


def test_resolving_needs_the_margin_and_the_hold_time() -> None:
    run = Run()
    run.send(reading(-10, spo2=84), reading(-5, spo2=84))
    [opened] = run.send(reading(0, spo2=84))
    assert run.send(reading(5, spo2=90)) == [], "at the limit is not back inside by the margin"
    assert run.send(reading(10, spo2=93)) == []
    assert run.send(reading(25, spo2=94)) == [], "inside for 15 s only"
    assert run.send(reading(30, spo2=91)) == [], "dipped into the margin: the hold restarts"
    assert run.send(reading(35, spo2=94)) == []
    [resolved] = run.send(reading(65, spo2=95))
    assert (resolved.type, resolved.alert.alert_id) == ("resolved", opened.alert.alert_id)
    assert resolved.alert.resolved_at == T0 + 65
    assert opened.alert.status == "open", "events keep a snapshot of the alert as it was"


def test_one_sample_dip_is_an_artefact_not_an_alarm() -> None:
    run = Run()
    run.send(reading(0, spo2=97), reading(5, spo2=96))
    assert run.send(reading(10, spo2=72)) == [], "held until the next sample"
    assert run.send(reading(15, spo2=96)) == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 72)]


def test_a_sudden_fall_that_stays_is_confirmed_once_it_stands_for_15_s() -> None:
    run = Run()
    run.send(reading(0, spo2=97))
    assert run.send(reading(5, spo2=78)) == []
    assert run.send(reading(10, spo2=79)) == []
    assert run.send(reading(15, spo2=78)) == [], "a slipping probe dips for up to 3 samples"
    [opened] = run.send(reading(20, spo2=78))
    assert (opened.alert.kind, opened.alert.severity) == ("threshold:spo2", "critical")
    assert opened.alert.opened_at == T0 + 20, "raised when the new level had stood for 15 s"
    assert opened.alert.evidence[0] == (T0 + 5, 78)
    assert run.artefacts == []


def test_a_jump_nothing_contradicts_stands_once_the_artefact_window_passes() -> None:
    run = Run()
    run.send(reading(0, spo2=97))
    assert run.send(reading(5, spo2=78)) == []
    assert run.send(now=15) == [], "still inside the 15 s artefact window"
    assert run.send(now=21) == [], "the jump stands, but one sample confirms no critical value"
    # It stood: the next sample is no jump from it, and confirms it at once.
    [opened] = run.send(reading(25, spo2=79))
    assert (opened.alert.severity, opened.alert.opened_at) == ("critical", T0 + 25)
    assert opened.alert.window_s == 20


def test_a_falling_spo2_trend_alerts_before_any_threshold() -> None:
    run = Run()
    # Steady at 98 for a minute: a level, not one sample, is what the fall is measured from.
    events = series(run, -60, 20, [98, 98, 98])
    for i, value in enumerate([98, 98, 97, 97, 96, 96, 95, 94, 94, 93, 93, 93]):
        events += run.send(reading(i * 20, spo2=value))
    assert kinds(events) == [("opened", "trend:spo2_fall", "warning")]
    alert = events[0].alert
    assert "fell" in alert.rule and "within 300 s" in alert.rule
    assert alert.opened_at <= T0 + 200, "found while SpO2 is still above 90"


def test_a_rising_heart_rate_trend() -> None:
    run = Run()
    events: list[AlertEvent] = []
    for i in range(40):
        events += run.send(reading(i * 15, heart_rate=70 + i))
    assert ("opened", "trend:heart_rate_rise", "warning") in kinds(events)
    assert not [e for e in events if e.alert.kind.startswith("threshold")]


def test_recovering_from_bradycardia_is_not_a_rising_trend() -> None:
    run = Run()
    values = [70] * 4 + [42, 40, 38, 38, 38, 40, 44, 50, 56, 62, 66, 70, 70, 70, 70, 70]
    events = [e for i, v in enumerate(values) for e in run.send(reading(i * 15, heart_rate=v))]
    assert [e.alert.kind for e in events if e.type == "opened"] == ["threshold:heart_rate"]


def test_a_trend_adds_nothing_while_the_threshold_alert_is_open() -> None:
    run = Run()
    events = run.send(reading(0, spo2=84))  # critical, opens at once
    for i, value in enumerate([83, 82, 80, 79, 79, 79]):
        events += run.send(reading(5 + i * 10, spo2=value))
    assert [e.alert.kind for e in events if e.type == "opened"] == ["threshold:spo2"]


def test_deviation_from_the_patients_own_baseline() -> None:
    run = Run()
    events: list[AlertEvent] = []
    for i in range(40):
        events += run.send(reading(i * 30, heart_rate=58 + i % 3))
    assert events == []
    # 95/min is normal for a population, but 35 above this patient's usual ~59.
    # The rise is fast enough to be caught by the trend rule too; suppress that here.
    for i in range(5):
        events += run.send(reading(1200 + i * 10, heart_rate=95))
    assert [e.alert.kind for e in events if e.type == "opened"][-1:] in (
        ["baseline:heart_rate"],
        ["trend:heart_rate_rise"],
    )
    quiet = Run(AnomalySettings(trends=()))
    for i in range(40):
        quiet.send(reading(i * 30, heart_rate=58 + i % 3))
    opened = [e for i in range(5) for e in quiet.send(reading(1200 + i * 10, heart_rate=95))]
    assert kinds(opened) == [("opened", "baseline:heart_rate", "warning")]
    assert "baseline" in opened[0].alert.rule


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


def test_a_critical_alert_resolves_only_once_the_value_is_back_inside() -> None:
    run = Run(AnomalySettings(persist_s=0, persist_readings=1))
    events = [e for t in range(0, 120, 5) for e in run.send(reading(t, heart_rate=145))]
    assert kinds(events) == [
        ("opened", "threshold:heart_rate", "warning"),
        ("escalated", "threshold:heart_rate", "critical"),
    ]
    events = [e for t in range(120, 200, 5) for e in run.send(reading(t, heart_rate=80))]
    [resolved] = events
    assert (resolved.type, resolved.alert.resolved_at) == ("resolved", T0 + 150)


NORMAL: dict[str, Any] = {"resp_rate": 16, "spo2": 97, "heart_rate": 75, "temp": 37, "bp_sys": 125}


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


def series(run: Run, start: float, step: float, values: Sequence[float], **fixed: Any) -> list[Any]:
    """Send one reading per value, `step` s apart from `start`; every event they raised."""
    events: list[AlertEvent] = []
    for i, value in enumerate(values):
        events += run.send(reading(start + i * step, **dict(fixed, spo2=value)))
    return events


def test_a_dip_of_up_to_10_s_is_an_artefact_not_a_critical_alarm() -> None:
    run = Run()
    assert series(run, 0, 5, [97, 96, 72, 74, 96, 97]) == [], "2 samples, 5 s apart"
    assert series(run, 30, 2, [97, 80, 78, 81, 79, 82, 96, 97]) == [], "5 samples over 8 s"
    assert [a.value for a in run.artefacts] == [72, 74, 80, 78, 81, 79, 82]


def test_a_critical_value_needs_confirmation_but_not_the_monitors_delay() -> None:
    run = Run()
    # A fall of 6 points: no more than SpO2 can move in 5 s, so no artefact hold applies.
    assert series(run, 0, 5, [90, 84, 84]) == [], "critical for 5 s: not yet confirmed"
    [opened] = series(run, 15, 5, [83])
    assert (opened.alert.severity, opened.alert.opened_at) == ("critical", T0 + 15)
    assert opened.alert.window_s == 10
    assert "confirmed over 10 s" in opened.alert.rule


def test_a_fast_real_fall_is_neither_an_artefact_nor_late() -> None:
    run = Run()
    # The heart rate climbs with the falling saturation, as it does in hypoxaemia.
    events = [
        e
        for i, (spo2, hr) in enumerate([(97, 80), (97, 80), (86, 90), (75, 100), (64, 110)])
        for e in run.send(reading(i * 5, spo2=spo2, heart_rate=hr))
    ]
    events += series(run, 25, 5, [64, 64], heart_rate=110)
    assert run.artefacts == []
    # Below 90 from 10 s: a monitor with a 15 s delay alarms at 25 s.
    [opened] = [e.alert for e in events if e.type == "opened"]
    assert (opened.kind, opened.opened_at) == ("threshold:spo2", T0 + 20)
    assert [e.alert.updated_at for e in events if e.alert.severity == "critical"] == [T0 + 25]


def test_a_slow_device_gets_artefact_screening_too() -> None:
    run = Run()
    events = series(run, 0, 60, [97, 96, 97, 72, 96, 97])
    assert events == []
    assert [a.value for a in run.artefacts] == [72]
    # A real fall on that device alarms at its second sample, as a monitor would.
    [opened] = [e.alert for e in series(run, 360, 60, [80, 80]) if e.type == "opened"]
    assert opened.opened_at == T0 + 420


def test_stable_noise_at_15_s_samples_is_no_trend() -> None:
    # Ten stable patients for 3 h: SpO2 wanders slowly (sd 0.7, 10 min time constant)
    # around 96, each 15 s sample with measurement noise (sd 0.8).
    rng = random.Random(7)
    keep = math.exp(-15 / 600)
    opened = []
    for patient in range(10):
        run = Run(AnomalySettings(baselines=(), news2_alerts=False))
        wander, values = 0.0, []
        for _ in range(3 * 240):
            wander = wander * keep + rng.gauss(0, 0.7 * math.sqrt(1 - keep**2))
            values.append(round(96 + wander + rng.gauss(0, 0.8)))
        events = series(run, 0, 15, values)
        opened += [(patient, e.alert.kind) for e in events if e.type == "opened"]
    assert opened == []


def test_a_late_sample_from_before_a_fall_does_not_make_the_fall_an_artefact() -> None:
    run = Run()
    events = series(run, 0, 5, [97, 97])
    # The network delivers the fall's first sample before the last normal one.
    events += run.send(reading(12, spo2=81)) + run.send(reading(9, spo2=97))
    events += series(run, 17, 5, [81, 80, 80])
    assert run.artefacts == []
    # Held 15 s as a possible probe dip: raised with a monitor's 15 s delay, no later.
    [opened] = [e.alert for e in events if e.type == "opened"]
    assert (opened.severity, opened.opened_at) == ("critical", T0 + 27)


def test_a_sample_the_oximeter_marks_as_poor_signal_is_set_aside() -> None:
    run = Run(AnomalySettings(persist_s=0, persist_readings=1, critical_confirm_s=0))
    lines = [
        b"device_id=ox-1 patient_id=P-1 ts=1700000000 spo2=97 sqi=0.95",
        b"device_id=ox-1 patient_id=P-1 ts=1700000005 spo2=88 sqi=0.2",
        b'{"device": "ox-1", "patient": "P-1", "ts": 1700000010, "spo2": 87, "pi": 0.1}',
        b"device_id=ox-1 patient_id=P-1 ts=1700000015 spo2=97 perfusion_index=2.5",
    ]
    readings = [parse_line(line, T0 + 20) for line in lines]
    assert [r.quality for r in readings] == [{"sqi": 0.95}, {"sqi": 0.2}, {"pi": 0.1}, {"pi": 2.5}]
    assert Reading.from_json(readings[1].to_json()) == readings[1]
    # Small enough a change (97 -> 88 -> 87) to pass the jump screen: only quality tells.
    assert [e for r in readings for e in run.send(r)] == []
    assert [(a.vital, a.value) for a in run.artefacts] == [("spo2", 88), ("spo2", 87)]
    with pytest.raises(WireError, match=r"sqi: 1\.5 outside 0\.\.1"):
        parse_line(b"device_id=ox-1 patient_id=P-1 spo2=97 sqi=1.5", T0)


def test_persistence_allows_for_the_timing_jitter_of_a_devices_samples() -> None:
    run = Run()
    series(run, -20, 5, [93, 93, 93, 93])  # the device's usual interval: 5 s
    events = [e for t in (0, 5.1, 9.8) for e in run.send(reading(t, spo2=88))]
    [opened] = events
    assert opened.alert.opened_at == T0 + 9.8, "10 s of a 5 s monitor's samples, give or take"
    slow = Run()
    assert [e for t in (0, 4, 8) for e in slow.send(reading(t, spo2=88))] == []
