"""NEWS2 against every band edge of the RCP 2017 chart."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict
from decimal import ROUND_HALF_UP, Decimal

import pytest

from healthsync.domain.news2 import (
    chart_value,
    news2,
    score_consciousness,
    score_pulse,
    score_resp_rate,
    score_spo2_scale1,
    score_spo2_scale2,
    score_systolic,
    score_temperature,
)

# (value, points) on both sides of every boundary of the chart.
EDGES: dict[Callable[[float], int], list[tuple[float, int]]] = {
    score_resp_rate: [(5, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3)],
    score_spo2_scale1: [(85, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)],
    score_systolic: [
        (70, 3),
        (90, 3),
        (91, 2),
        (100, 2),
        (101, 1),
        (110, 1),
        (111, 0),
        (219, 0),
        (220, 3),
    ],
    score_pulse: [
        (35, 3),
        (40, 3),
        (41, 1),
        (50, 1),
        (51, 0),
        (90, 0),
        (91, 1),
        (110, 1),
        (111, 2),
        (130, 2),
        (131, 3),
    ],
    score_temperature: [
        (34.0, 3),
        (35.0, 3),
        (35.1, 1),
        (36.0, 1),
        (36.1, 0),
        (38.0, 0),
        (38.1, 1),
        (39.0, 1),
        (39.1, 2),
        (41.0, 2),
    ],
}


@pytest.mark.parametrize(
    ("scorer", "value", "points"),
    [(scorer, value, points) for scorer, rows in EDGES.items() for value, points in rows],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_band_edges(scorer: Callable[[float], int], value: float, points: int) -> None:
    assert scorer(value) == points


@pytest.mark.parametrize(
    ("spo2", "on_oxygen", "points"),
    [
        (83, False, 3),
        (84, False, 2),
        (85, False, 2),
        (86, False, 1),
        (87, False, 1),
        (88, False, 0),
        (92, False, 0),
        (93, False, 0),
        (99, False, 0),
        (88, True, 0),
        (92, True, 0),
        (93, True, 1),
        (94, True, 1),
        (95, True, 2),
        (96, True, 2),
        (97, True, 3),
        (100, True, 3),
    ],
)
def test_spo2_scale2(spo2: float, on_oxygen: bool, points: int) -> None:
    assert score_spo2_scale2(spo2, on_oxygen) == points


def test_consciousness_acvpu() -> None:
    assert [score_consciousness(level) for level in "ACVPU"] == [0, 3, 3, 3, 3]


def everything(**changes: object) -> dict[str, object]:
    normal: dict[str, object] = {
        "resp_rate": 16,
        "spo2": 97,
        "on_oxygen": False,
        "bp_sys": 120,
        "heart_rate": 70,
        "consciousness": "A",
        "temp": 37.0,
    }
    return normal | changes


@pytest.mark.parametrize(
    ("observed", "total", "band"),
    [
        (everything(), 0, "low"),
        (everything(heart_rate=95, temp=38.5, resp_rate=10), 3, "low"),
        (everything(heart_rate=95, temp=38.5, resp_rate=10, bp_sys=105), 4, "low"),
        (everything(spo2=90), 3, "low-medium"),
        (everything(consciousness="V"), 3, "low-medium"),
        (everything(spo2=93, on_oxygen=True, heart_rate=95), 5, "medium"),
        (everything(spo2=93, on_oxygen=True, heart_rate=115), 6, "medium"),
        (everything(spo2=93, on_oxygen=True, heart_rate=115, temp=38.5), 7, "high"),
        (everything(resp_rate=26, spo2=88, bp_sys=85, heart_rate=135, temp=39.5), 14, "high"),
    ],
)
def test_aggregate_and_risk_band(observed: dict[str, object], total: int, band: str) -> None:
    result = news2(observed, ts=0.0)
    assert (result.total, result.band, result.complete) == (total, band, True)


def test_missing_parameters_are_reported_not_assumed() -> None:
    result = news2({"spo2": 90, "heart_rate": 70}, ts=0.0)
    assert result.parts == {"spo2": 3, "heart_rate": 0}
    assert result.missing == ("resp_rate", "on_oxygen", "bp_sys", "consciousness", "temp")
    assert not result.complete
    assert result.band == "low-medium"


def test_stored_score_has_every_field() -> None:
    # What Redis keeps of a score (and the API reads back) is every field of it.
    result = news2({"spo2": 90, "heart_rate": 70}, ts=5.0, sources={"spo2": "r1"})
    assert result.to_dict() == asdict(result)
    assert list(result.to_dict()) == list(asdict(result))


def test_scale2_without_oxygen_status_scores_only_what_the_chart_allows() -> None:
    assert news2({"spo2": 86}, ts=0.0, scale=2).parts == {"spo2": 1}
    assert "spo2" in news2({"spo2": 95}, ts=0.0, scale=2).missing


@pytest.mark.parametrize(
    ("scorer", "value", "points"),
    [
        # Between two bands of the chart a value belongs where it rounds to, the
        # chart's precision: whole numbers, and tenths for temperature.
        (score_spo2_scale1, 91.4, 3),
        (score_spo2_scale1, 91.5, 2),
        (score_resp_rate, 8.4, 3),
        (score_resp_rate, 20.4, 0),
        (score_resp_rate, 20.5, 2),
        (score_pulse, 40.3, 3),
        (score_pulse, 130.4, 2),
        (score_systolic, 90.3, 3),
        (score_systolic, 219.5, 3),
        (score_temperature, 35.04, 3),
        (score_temperature, 35.05, 1),
        (score_temperature, 39.04, 1),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_values_between_bands_round_to_the_charts_precision(
    scorer: Callable[[float], int], value: float, points: int
) -> None:
    assert scorer(value) == points


def test_chart_precision_matches_decimal_rounding_half_up() -> None:
    """Values already at the chart's precision skip the decimal arithmetic: the answer
    must be the same as rounding their shortest decimal half up, for every value."""
    rng = random.Random(11)
    values = [91.5, 91.49999999999999, 8.5, 35.05, 35.04, 39.05, 36.8, 0.1 + 0.2, 92, 140.0]
    values += [rng.uniform(0, 250) for _ in range(2_000)]
    values += [round(rng.uniform(30, 45), 1) for _ in range(2_000)]
    values += [float(rng.randint(0, 250)) for _ in range(500)]
    for value in values:
        for decimals in (0, 1):
            step = Decimal(1).scaleb(-decimals)
            expected = float(Decimal(str(value)).quantize(step, rounding=ROUND_HALF_UP))
            assert chart_value(value, decimals) == expected, (value, decimals)


def test_scale2_rounds_too() -> None:
    assert score_spo2_scale2(83.4, on_oxygen=False) == 3
    assert score_spo2_scale2(92.4, on_oxygen=True) == 0
