"""The shortcuts the engine takes per sample decide exactly as the full computations do."""

from __future__ import annotations

import statistics

from hypothesis import given
from hypothesis import strategies as st

from healthsync.stream.state import RECENT_S, PatientState
from healthsync.stream.trends import TrendWindow, median

values = st.floats(min_value=30, max_value=200, allow_nan=False)
samples = st.lists(st.tuples(st.floats(min_value=0, max_value=1200), values), max_size=120)
# A stable patient's noise: the bound rules most changes out, and some only just.
near_level = st.lists(
    st.tuples(st.floats(min_value=0, max_value=1200), st.floats(min_value=94, max_value=100)),
    max_size=120,
)


@given(st.lists(values, min_size=1, max_size=40))
def test_median_is_statistics_median(data: list[float]) -> None:
    assert median(data) == statistics.median(data)


@given(near_level, st.sampled_from(["rise", "fall"]), st.floats(min_value=0.5, max_value=8))
def test_a_change_the_bound_rules_out_is_below_the_delta(
    points: list[tuple[float, float]], direction: str, delta: float
) -> None:
    window = TrendWindow(300.0)
    for ts, value in sorted(points):
        window.add(ts, value)
        if not window.may_reach(direction, delta):  # type: ignore[arg-type]
            assert window.change(direction)[0] < delta  # type: ignore[arg-type]


@given(samples)
def test_keep_holds_the_last_recent_samples_in_order(points: list[tuple[float, float]]) -> None:
    state = PatientState()
    expected: list[tuple[float, float]] = []
    for ts, value in points:
        state.keep("spo2", ts, value)
        everything = sorted([*expected, (ts, value)])
        newest = everything[-1][0]
        expected = [p for p in everything if p[0] >= newest - RECENT_S][-32:]
        assert state.recent["spo2"] == expected
