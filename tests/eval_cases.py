"""Scenario files for the tests of `healthsync eval`: a tiny cohort with one episode of
every kind, and writing such a file."""

from __future__ import annotations

from pathlib import Path

VITALS_TOML = """
[vitals.heart_rate]
mean = 78
sd = 8
min = 60
max = 100
drift = 3
noise = 2

[vitals.spo2]
mean = 96
sd = 1
min = 94
max = 99
drift = 0.5
noise = 0.8

[vitals.temp]
mean = 36.8
sd = 0.2
min = 36.2
max = 37.4
drift = 0.1
noise = 0.05

[vitals.resp_rate]
mean = 16
sd = 1.5
min = 13
max = 20
drift = 1
noise = 1

[vitals.bp_sys]
mean = 122
sd = 10
min = 105
max = 150
drift = 4
noise = 3

[vitals.bp_dia]
mean = 75
sd = 6
min = 60
max = 90
drift = 2
noise = 2
"""

# One abrupt episode of every kind, far enough past its limit that noise cannot
# hide it, plus SpO2 motion dips and dropouts.
TINY_TOML = (
    """
description = "test cohort"
seed = 11
patients = 6
duration_s = 3600
interval_s = 5

[[episodes]]
kind = "hypoxaemia"
count = 1
duration_s = [60, 120]
target = [80, 84]

[[episodes]]
kind = "tachycardia"
count = 1
duration_s = [60, 120]
target = [140, 150]

[[episodes]]
kind = "bradycardia"
count = 1
duration_s = [60, 120]
target = [34, 38]

[[episodes]]
kind = "fever"
count = 1
duration_s = [60, 120]
target = [39.5, 40]

[[episodes]]
kind = "hypotension"
count = 1
duration_s = [60, 120]
target = [70, 75]

[[episodes]]
kind = "bradypnoea"
count = 1
duration_s = [60, 120]
target = [5, 6]

[[artefacts]]
kind = "spike"
vital = "spo2"
per_patient_hour = 4
value = [70, 80]

[[artefacts]]
kind = "dropout"
per_patient_hour = 1
duration_s = [60, 120]
"""
    + VITALS_TOML
)


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path
