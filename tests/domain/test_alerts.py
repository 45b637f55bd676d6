"""Alert bands and the alert record: what the engine draws alerts against, and what it stores."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from healthsync.domain.alerts import Alert, Threshold, thresholds_for
from healthsync.domain.bands import BandOverride, PatientRules
from healthsync.domain.rules import AnomalySettings


def test_threshold_bands() -> None:
    band = Threshold("heart_rate", low=45, high=120, critical_low=40, critical_high=140)
    assert [band.severity(v) for v in (39, 44, 45, 80, 120, 121, 141)] == [
        "critical",
        "warning",
        None,
        None,
        None,
        "warning",
        "critical",
    ]


def test_inside_by_a_margin_is_the_hysteresis_band() -> None:
    band = Threshold("spo2", low=90, critical_low=85)
    assert [band.inside(v, 2) for v in (89, 90, 91, 92, 99)] == [False, False, False, True, True]


def test_patient_overrides_change_only_what_they_name() -> None:
    default = thresholds_for(None)
    rules = PatientRules(bands={"heart_rate": BandOverride(high=140, critical_high=170)})
    bands = thresholds_for(rules)
    assert (bands["heart_rate"].low, bands["heart_rate"].high) == (45, 140)
    assert bands["heart_rate"].critical_high == 170
    assert bands["spo2"] == default["spo2"]


def test_scale_2_uses_the_prescribed_spo2_target() -> None:
    bands = thresholds_for(PatientRules(spo2_scale=2, spo2_target=(88, 92)))
    assert bands["spo2"].severity(89) is None, "inside 88-92 is on target for scale 2"
    assert bands["spo2"].severity(86) == "warning"
    assert thresholds_for(None)["spo2"].severity(89) == "warning"


@pytest.mark.parametrize(
    "bad",
    [
        {"bands": {"pulse_ox": {"low": 1}}},
        {"bands": {"heart_rate": {"low": 100, "high": 90}}},
        {"bands": {"heart_rate": {"low": 40, "critical_low": 45}}},
        {"spo2_target": [95, 90]},
        {"bands": {"heart_rate": {"low": float("nan")}}},
        {"bands": {"heart_rate": {"critical_high": float("inf")}}},
        {"bands": {"spo2": {"critical_low": float("-inf")}}},
        {"colour": "red"},
    ],
)
def test_bad_patient_rules_are_refused_with_a_reason(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PatientRules.model_validate(bad)


def test_unknown_vital_in_engine_settings_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown vital"):
        AnomalySettings.model_validate({"margins": {"glucose": 1}})


def test_alert_round_trips_and_reads_records_from_before_the_engine() -> None:
    alert = Alert(
        "a1", "P-1", "trend:spo2_fall", "spo2", "warning", "open", 1.0, 2.0, 91, "", "r1",
        rule="spo2 fell 5", window_s=60, evidence=[(1.0, 96.0), (2.0, 91.0)],
    )  # fmt: skip
    assert Alert.from_dict(alert.to_dict()) == alert
    old = {
        "alert_id": "a0", "patient_id": "P-1", "kind": "threshold:spo2", "vital": "spo2",
        "severity": "warning", "status": "open", "opened_at": 1.0, "updated_at": 1.0,
        "value": 88, "band": "90..-", "reading_id": "r0", "resolved_at": None,
    }  # fmt: skip
    assert Alert.from_dict(old).category == "clinical"


def test_an_override_is_checked_against_the_defaults_it_is_merged_with() -> None:
    # high 150 alone is well ordered, but above the default critical_high 140: a value
    # of 145 would be critical and "back inside" at once, and the alert would flap.
    with pytest.raises(ValidationError, match=r"heart_rate.*high 150.*critical_high 140"):
        PatientRules.model_validate({"bands": {"heart_rate": {"high": 150}}})
    with pytest.raises(ValidationError, match=r"spo2"):
        PatientRules.model_validate({"spo2_scale": 2, "bands": {"spo2": {"critical_low": 90}}})
    raised = PatientRules.model_validate(
        {"bands": {"heart_rate": {"high": 150, "critical_high": 170}}}
    )
    assert thresholds_for(raised)["heart_rate"].high == 150


def test_a_critical_value_is_never_back_inside() -> None:
    # A band built by hand (not through PatientRules) can still be inconsistent.
    band = Threshold("heart_rate", low=45, high=150, critical_low=40, critical_high=140)
    assert band.severity(145) == "critical"
    assert not band.inside(145, 5)
