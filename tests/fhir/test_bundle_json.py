"""A reading's Bundle put together from encoded parts (fhir.bundle_json) is, byte for byte,
the Bundle the Observation builder describes, for every combination of vitals and bands."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest

from healthsync.domain.alerts import DEFAULT_THRESHOLDS, Threshold
from healthsync.domain.readings import Reading
from healthsync.fhir.bundle_json import BundleEncoder
from healthsync.fhir.observations import ObservationBuilder, reading_bundle

VITALS = ("heart_rate", "spo2", "temp", "resp_rate", "bp_sys", "bp_dia")
TS = 1_795_787_117.825
KEY = b"k" * 32


def _band_values(threshold: Threshold) -> list[float]:
    """A value in each band of `threshold`, and each limit itself, whole and fractional."""
    limits = [
        v
        for v in (threshold.critical_low, threshold.low, threshold.high, threshold.critical_high)
        if v is not None
    ]
    values: list[float] = []
    for limit in limits:
        values += [limit - 1.5, limit - 0.04, limit, limit + 0.04, limit + 1.5]
    return values


VALUES = {t.vital: _band_values(t) for t in DEFAULT_THRESHOLDS}


def _expected(builder: ObservationBuilder, reading: Reading) -> bytes | None:
    observations = builder.build(reading)
    return orjson.dumps(reading_bundle(reading, observations)) if observations else None


@pytest.mark.parametrize("key", [None, KEY], ids=["plain ids", "keyed ids"])
def test_every_combination_of_vitals_encodes_as_the_builder_builds(key: bytes | None) -> None:
    builder = ObservationBuilder(id_key=key)
    encoder = BundleEncoder(builder)
    rng = random.Random(3)
    for size in range(len(VITALS) + 1):
        for names in itertools.combinations(VITALS, size):
            for n in range(8):
                vitals = {name: rng.choice(VALUES.get(name, [7.0, 12])) for name in names}
                reading = Reading(f"{n:024x}", "mon_1", "P:7", TS + n, TS + n, vitals)
                assert encoder.encode(reading) == _expected(builder, reading), vitals


def test_values_equal_as_numbers_keep_their_own_json() -> None:
    # 70 and 70.0 are one key to a cache, but "70" and "70.0" in JSON.
    builder = ObservationBuilder()
    encoder = BundleEncoder(builder)
    for vitals in ({"heart_rate": 70.0, "bp_sys": 120.0}, {"heart_rate": 70, "bp_sys": 120}):
        reading = Reading("0" * 24, "mon-1", "P-1", TS, TS, vitals)  # type: ignore[arg-type]
        assert encoder.encode(reading) == _expected(builder, reading)


def test_ids_that_need_escaping_are_escaped_as_the_builder_does() -> None:
    builder = ObservationBuilder()
    encoder = BundleEncoder(builder)
    reading = Reading('r"\\ü\n', 'mon "1"', "patient\\ü", TS, TS, {"heart_rate": 80, "spo2": 95})
    encoded = encoder.encode(reading)
    assert encoded == _expected(builder, reading)
    assert encoded is not None
    assert orjson.loads(encoded)["id"] == 'r"\\ü\n'


def test_other_thresholds_are_encoded_as_the_builder_interprets_them() -> None:
    tight = [Threshold("heart_rate", low=60, high=80, critical_low=50, critical_high=90)]
    builder = ObservationBuilder(tight)
    encoder = BundleEncoder(builder)
    for value in (45, 55, 70, 85, 95):
        reading = Reading(f"{value:024x}", "mon-1", "P-1", TS, TS, {"heart_rate": value})
        assert encoder.encode(reading) == _expected(builder, reading)


def test_a_reading_without_vitals_makes_no_bundle() -> None:
    nurse = Reading("0" * 24, "nurse-1", "P-1", TS, TS, {}, consciousness="A")
    assert BundleEncoder(ObservationBuilder()).encode(nurse) is None
