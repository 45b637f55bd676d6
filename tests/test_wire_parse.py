"""Parsing accepted lines: separators, key aliases, units, timestamps, patient
fields, reading ids, the JSON form and the line-length limit."""

from __future__ import annotations

import math
from collections.abc import Callable

import orjson
import pytest

from healthsync.domain.readings import CONSCIOUSNESS_LEVELS, VITALS, Reading, reading_id_for
from healthsync.wire import parse_line
from tests.wire_cases import ALIASES, IDS, RECEIVED, parse, rejection


def test_design_example_line() -> None:
    line = b"device_id=mon-0001 patient_id=P-1001 heart_rate=78, oxygen=95% temp=36.9\n"
    reading = parse_line(line, RECEIVED)
    assert reading == Reading(
        reading_id=reading_id_for("mon-0001", None, round(RECEIVED * 1000)),
        device_id="mon-0001",
        patient_id="P-1001",
        ts=RECEIVED,
        received_at=RECEIVED,
        vitals={"heart_rate": 78.0, "spo2": 95.0, "temp": 36.9},
    )


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_line_endings_are_stripped(ending: bytes) -> None:
    reading = parse(IDS.encode() + b"hr=78" + ending)
    assert reading.vitals == {"heart_rate": 78.0}


@pytest.mark.parametrize(
    "line",
    [
        "device_id=d,patient_id=p,hr=78,rr=12",
        "device_id=d\tpatient_id=p\t\thr=78  rr=12",
        "  device_id=d , patient_id=p,, hr=78 ,rr=12,  ",
    ],
)
def test_commas_and_whitespace_both_separate(line: str) -> None:
    assert parse(line).vitals == {"heart_rate": 78.0, "resp_rate": 12.0}


def _field(reading: Reading, canonical: str) -> object:
    if canonical in VITALS:
        return reading.vitals.get(canonical)
    if canonical in reading.patient:
        return reading.patient[canonical]
    return getattr(reading, canonical, None)


PARSED = {"ts": 1699999000.0, "on_oxygen": True, "consciousness": "V"}


@pytest.mark.parametrize(("alias", "canonical", "value"), ALIASES)
@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_every_alias_maps_to_its_canonical_key(
    alias: str, canonical: str, value: str, case: Callable[[str], str]
) -> None:
    others = {"device_id": "d", "patient_id": "p", "hr": "60"}
    others.pop(canonical, None)
    if canonical in VITALS:
        del others["hr"]
    line = " ".join(f"{key}={raw}" for key, raw in others.items()) + f" {case(alias)}={value}"
    want = float(value) if canonical in VITALS else PARSED.get(canonical, value)
    assert _field(parse(line), canonical) == want


@pytest.mark.parametrize(
    ("raw", "celsius"),
    [
        ("36.9", 36.9),
        ("36.9C", 36.9),
        ("36.9c", 36.9),
        ("36.9°C", 36.9),
        ("36.9°c", 36.9),
        ("98.6F", 37.0),
        ("98.6f", 37.0),
        ("98.6°F", 37.0),
        ("100.4°f", 38.0),
        ("98.7F", 37.06),  # 37.0555... rounded to 2 decimals
        ("97F", 36.11),
    ],
)
def test_temperature_units(raw: str, celsius: float) -> None:
    assert parse(IDS + f"temp={raw}").vitals["temp"] == celsius


def test_fahrenheit_bounds_apply_after_conversion() -> None:
    # 44 is a fine Celsius value but 44 F is 6.7 C, below the bound.
    assert rejection(IDS + "temp=44F").reason == "out_of_range"


def test_spo2_accepts_a_trailing_percent_but_other_vitals_do_not() -> None:
    assert parse(IDS + "spo2=95%").vitals == {"spo2": 95.0}
    assert rejection(IDS + "hr=95%").reason == "bad_value"


def test_negative_zero_is_stored_as_zero() -> None:
    value = parse(IDS + "hr=-0").vitals["heart_rate"]
    assert math.copysign(1.0, value) == 1.0


@pytest.mark.parametrize("raw", ["120/80", "120.5/80"])
def test_bp_splits_into_systolic_and_diastolic(raw: str) -> None:
    systolic, diastolic = (float(x) for x in raw.split("/"))
    reading = parse(IDS + f"bp={raw}")
    assert reading.vitals == {"bp_sys": systolic, "bp_dia": diastolic}
    separate = parse(IDS + f"bp_sys={systolic} bp_dia={diastolic}")
    assert separate.vitals == reading.vitals


@pytest.mark.parametrize(
    ("raw", "epoch"),
    [
        ("2023-11-14T22:13:20Z", RECEIVED),
        ("2023-11-14T22:13:20.250Z", RECEIVED + 0.25),
        ("2023-11-14T23:13:20+01:00", RECEIVED),
        ("2023-11-14T22:13:20", RECEIVED),  # naive means UTC
        ("1700000000", RECEIVED),
        ("1699999999.5", RECEIVED - 0.5),
        ("1.7e9", RECEIVED),
    ],
)
def test_timestamp_forms(raw: str, epoch: float) -> None:
    assert parse(IDS + f"hr=70 ts={raw}").ts == epoch


def test_timestamp_defaults_to_receive_time_and_allows_small_skew() -> None:
    assert parse(IDS + "hr=70").ts == RECEIVED
    assert parse(IDS + f"hr=70 ts={RECEIVED + 300:.0f}").ts == RECEIVED + 300


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("Y", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("n", False),
        ("0", False),
    ],
)
def test_on_oxygen_spellings(raw: str, value: bool) -> None:
    assert parse(IDS + f"hr=70 on_o2={raw}").on_oxygen is value


@pytest.mark.parametrize("level", [*CONSCIOUSNESS_LEVELS, "a", "u"])
def test_consciousness_is_upper_cased(level: str) -> None:
    assert parse(IDS + f"hr=70 consciousness={level}").consciousness == level.upper()


def test_patient_fields_quoted_values_and_gender_normalisation() -> None:
    line = (
        IDS + 'hr=70 name="Jane Doe, Jr." dob=1950-02-03 sex=F mrn=12345 '
        r'address="1 Main St, \"Flat\" 2, C:\\x" phone="+1 555 0100"'
    )
    assert parse(line).patient == {
        "patient_name": "Jane Doe, Jr.",
        "birth_date": "1950-02-03",
        "gender": "female",
        "mrn": "12345",
        "address": '1 Main St, "Flat" 2, C:\\x',
        "phone": "+1 555 0100",
    }


@pytest.mark.parametrize(("raw", "gender"), [("m", "male"), ("MALE", "male"), ("Other", "other")])
def test_gender_values(raw: str, gender: str) -> None:
    assert parse(IDS + f"hr=70 gender={raw}").patient == {"gender": gender}


def test_patient_field_limit_is_256_characters() -> None:
    assert parse(IDS + "hr=70 address=" + "a" * 256).patient["address"] == "a" * 256
    assert rejection(IDS + "hr=70 address=" + "a" * 257).reason == "bad_value"


def test_seq_sets_the_reading_id() -> None:
    reading = parse(IDS + "hr=70 seq=42")
    assert reading.seq == 42
    assert reading.reading_id == reading_id_for("mon-0001", 42, round(RECEIVED * 1000))


def test_reading_id_is_deterministic() -> None:
    first = parse(IDS + "hr=70 seq=42")
    # A resend of the same reading, even received later and with other values,
    # is recognised by device and sequence number.
    resend = parse_line((IDS + "hr=71 seq=42").encode(), RECEIVED + 5)
    other = parse(IDS + "hr=70 seq=43")
    assert first.reading_id == resend.reading_id
    assert first.reading_id != other.reading_id
    other_device = parse("device_id=mon-0002 patient_id=P-1001 hr=70 seq=42")
    assert other_device.reading_id != first.reading_id


def test_reading_id_without_seq_follows_device_time() -> None:
    stamped = IDS + "hr=70 ts=2023-11-14T22:13:00Z"
    assert parse(stamped).reading_id == parse_line(stamped.encode(), RECEIVED + 60).reading_id
    assert parse(stamped).reading_id != parse(IDS + "hr=70 ts=2023-11-14T22:13:01Z").reading_id
    other_device = "device_id=mon-0002 patient_id=P-1001 hr=70 ts=2023-11-14T22:13:00Z"
    assert parse(stamped).reading_id != parse(other_device).reading_id


def test_json_form() -> None:
    doc = {
        "Device": "mon-0001",
        "patient_id": "P-1001",
        "ts": "2023-11-14T22:13:00Z",
        "seq": 7,
        "hr": 78,
        "oxygen": "95%",
        "temp": "98.6F",
        "bp": "120/80",
        "rr": 14.5,
        "on_o2": True,
        "consciousness": "a",
        "name": "Jane Doe",
        "mrn": None,
    }
    reading = parse(b"  " + orjson.dumps(doc) + b"\r\n")
    assert reading == Reading(
        reading_id=reading_id_for("mon-0001", 7, round((RECEIVED - 20) * 1000)),
        device_id="mon-0001",
        patient_id="P-1001",
        ts=RECEIVED - 20,
        received_at=RECEIVED,
        vitals={
            "heart_rate": 78.0,
            "spo2": 95.0,
            "temp": 37.0,
            "bp_sys": 120.0,
            "bp_dia": 80.0,
            "resp_rate": 14.5,
        },
        seq=7,
        on_oxygen=True,
        consciousness="A",
        patient={"patient_name": "Jane Doe"},
    )


def test_json_numbers_ids_and_epoch() -> None:
    reading = parse(
        b'{"device_id": 17, "patient_id": "p", "ts": 1699999990.5, "on_o2": 0, "hr": 1}'
    )
    assert (reading.device_id, reading.ts, reading.on_oxygen) == ("17", 1699999990.5, False)


def test_line_at_the_limit_is_accepted_and_the_terminator_is_not_counted() -> None:
    body = (IDS + "hr=70").encode()
    line = body + b" " * (4096 - len(body))
    assert parse(line + b"\r\n").vitals == {"heart_rate": 70.0}
    assert rejection(line + b" ").reason == "too_long"
    assert rejection(b"x" * 11, max_line_bytes=10).reason == "too_long"
