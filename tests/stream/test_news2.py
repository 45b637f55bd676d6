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
