"""The NEWS2 step: each patient's latest fresh values, kept across batches."""

from __future__ import annotations

from typing import Any

from healthsync.domain.batch import Batch
from healthsync.domain.news2 import Observed
from healthsync.domain.readings import Reading
from healthsync.stream.news2 import News2Scores


def reading(n: int, ts: float, **fields: Any) -> Reading:
    on_oxygen = fields.pop("on_oxygen", None)
    consciousness = fields.pop("consciousness", None)
    return Reading(f"r{n}", "d1", "P-1", ts, ts, fields, None, on_oxygen, consciousness)


def test_scores_combine_the_latest_fresh_value_of_each_parameter() -> None:
    loaded: list[list[str]] = []

    def load(patients: list[str]) -> dict[str, Observed]:
        loaded.append(patients)
        return {"P-1": {"temp": (39.5, 900.0, "r0")}}  # from before a restart: fresh enough

    step = News2Scores(load, freshness_s=600)
    batch = Batch(
        [
            reading(1, 1000.0, resp_rate=16, spo2=97, bp_sys=120, heart_rate=70),
            reading(2, 1010.0, on_oxygen=False, consciousness="A"),
        ]
    )
    step.process(batch)
    score = batch.scores["P-1"]
    assert (score.total, score.complete, score.parts["temp"]) == (2, True, 2)
    assert score.sources == {
        "resp_rate": "r1",
        "spo2": "r1",
        "bp_sys": "r1",
        "heart_rate": "r1",
        "on_oxygen": "r2",
        "consciousness": "r2",
        "temp": "r0",
    }, "each parameter names the reading its value came from"
    assert loaded == [["P-1"]]

    # Much later, only the heart rate is new: everything else is too old to count.
    later = Batch([reading(3, 5000.0, heart_rate=135)])
    step.process(later)
    assert later.scores["P-1"].parts == {"heart_rate": 3}
    assert later.scores["P-1"].sources == {"heart_rate": "r3"}
    assert later.scores["P-1"].band == "low-medium" and not later.scores["P-1"].complete
    assert loaded == [["P-1"]], "a known patient is not loaded again"

    step.on_assign({0})
    step.process(Batch([reading(4, 5001.0, heart_rate=80)]))
    assert loaded == [["P-1"], ["P-1"]], "after reset the state is read again"


def test_an_older_reading_does_not_overwrite_a_newer_value() -> None:
    step = News2Scores(lambda patients: {}, freshness_s=600)
    batch = Batch([reading(1, 1000.0, spo2=88), reading(2, 990.0, spo2=99)])
    step.process(batch)
    assert batch.scores["P-1"].parts["spo2"] == 3


def test_a_patient_with_nothing_fresh_left_is_forgotten_and_read_again_on_return() -> None:
    loaded: list[list[str]] = []

    def load(patients: list[str]) -> dict[str, Observed]:
        loaded.append(patients)
        return {p: {"spo2": (95.0, 1000.0, "r-stored")} for p in patients}

    def of(patient: str, n: int, ts: float, **fields: Any) -> Reading:
        return Reading(f"r{n}", f"d-{patient}", patient, ts, ts, fields)

    step = News2Scores(load, freshness_s=600)
    step.process(Batch([of("P-1", 1, 1000.0, heart_rate=70), of("P-2", 2, 1000.0, spo2=97)]))
    step.process(Batch([of("P-2", 3, 1590.0, spo2=96)]))  # P-1 has gone quiet
    assert step.held == 2

    step.process(Batch([], now=1650.0))  # a clock tick: P-1's newest value is 650 s old
    assert step.held == 1, "a patient with nothing fresh left is still held"
    step.process(Batch([], now=1700.0))
    assert step.held == 1

    # P-1 sends again: what the live cache holds is read again, and scores if fresh.
    back = Batch([of("P-1", 4, 1700.0, heart_rate=72)])
    step.process(back)
    assert loaded[-1] == ["P-1"] and step.held == 2
    assert back.scores["P-1"].sources == {"heart_rate": "r4"}, "a stale value counted"


def test_a_late_reading_is_scored_as_of_the_newest_value_the_score_counts() -> None:
    # A reading measured before the patient's newest values but arriving after them: its
    # score counts those newer values, so it is dated with them, not before them (the
    # stored score, and the RiskAssessment made from it, would otherwise go back in time).
    step = News2Scores(lambda patients: {}, freshness_s=600)
    step.process(Batch([reading(1, 1000.0, heart_rate=70, spo2=97)]))
    late = Batch([reading(2, 980.0, resp_rate=16)])
    step.process(late)
    score = late.scores["P-1"]
    assert score.sources == {"heart_rate": "r1", "spo2": "r1", "resp_rate": "r2"}
    assert score.ts == 1000.0
