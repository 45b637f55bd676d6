"""Shared cases for the wire protocol tests: the receive time, the id fields,
the parse helpers, the documented aliases and the reply code of each reason."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from healthsync.domain.readings import Reading
from healthsync.wire import WireError, parse_line

RECEIVED = 1_700_000_000.0  # 2023-11-14T22:13:20Z
IDS = "device_id=mon-0001 patient_id=P-1001 "
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(line: str | bytes, **kwargs: Any) -> Reading:
    data = line.encode() if isinstance(line, str) else line
    return parse_line(data, RECEIVED, **kwargs)


def rejection(line: str | bytes, **kwargs: Any) -> WireError:
    with pytest.raises(WireError) as caught:
        parse(line, **kwargs)
    return caught.value


# Written out from DESIGN.md rather than derived from the parser's own table,
# so a dropped or misspelt alias fails here.
ALIASES = [
    ("device_id", "device_id", "mon-9"),
    ("device", "device_id", "mon-9"),
    ("patient_id", "patient_id", "P-9"),
    ("patient", "patient_id", "P-9"),
    ("ts", "ts", "1699999000"),
    ("timestamp", "ts", "1699999000"),
    ("time", "ts", "1699999000"),
    ("heart_rate", "heart_rate", "61"),
    ("hr", "heart_rate", "61"),
    ("pulse", "heart_rate", "61"),
    ("spo2", "spo2", "97"),
    ("oxygen", "spo2", "97"),
    ("o2", "spo2", "97"),
    ("sao2", "spo2", "97"),
    ("temp", "temp", "37.2"),
    ("temperature", "temp", "37.2"),
    ("resp_rate", "resp_rate", "14"),
    ("rr", "resp_rate", "14"),
    ("respiratory_rate", "resp_rate", "14"),
    ("bp_sys", "bp_sys", "118"),
    ("bp_dia", "bp_dia", "76"),
    ("on_oxygen", "on_oxygen", "yes"),
    ("on_o2", "on_oxygen", "yes"),
    ("consciousness", "consciousness", "v"),
    ("patient_name", "patient_name", "Jane"),
    ("name", "patient_name", "Jane"),
    ("birth_date", "birth_date", "1950-02-03"),
    ("dob", "birth_date", "1950-02-03"),
    ("gender", "gender", "female"),
    ("sex", "gender", "female"),
    ("mrn", "mrn", "MRN-77"),
    ("address", "address", "1-Main-St"),
    ("phone", "phone", "+1-555-0100"),
]

CODES = {
    "invalid_utf8": 400,
    "empty": 400,
    "malformed": 400,
    "unknown_key": 400,
    "duplicate_key": 400,
    "missing_field": 400,
    "bad_value": 400,
    "no_vitals": 400,
    "too_long": 413,
    "out_of_range": 422,
}
