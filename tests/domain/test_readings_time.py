"""A reading's time as ISO 8601: the same text as datetime's own formatting, to the millisecond."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from healthsync.domain.readings import isoformat_ms


def reference(epoch: float) -> str:
    millis = round(epoch * 1000) / 1000
    return datetime.fromtimestamp(millis, tz=UTC).isoformat(timespec="milliseconds")


# 1970 to 2100: within it a float holds an epoch to well under a microsecond.
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_a_time_reads_as_datetime_writes_it(epoch: float) -> None:
    assert isoformat_ms(epoch) == reference(epoch).replace("+00:00", "Z")


def test_milliseconds_round_and_carry_into_the_next_second() -> None:
    assert isoformat_ms(1_767_225_600.0) == "2026-01-01T00:00:00.000Z"
    assert isoformat_ms(1_767_225_600.0004) == "2026-01-01T00:00:00.000Z"
    assert isoformat_ms(1_767_225_600.0996) == "2026-01-01T00:00:00.100Z"
    assert isoformat_ms(1_767_225_599.9996) == "2026-01-01T00:00:00.000Z"
    assert isoformat_ms(1_767_225_599.9994) == "2025-12-31T23:59:59.999Z"
