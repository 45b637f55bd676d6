from __future__ import annotations

import math
import pickle
import string
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthsync.domain.readings import CONSCIOUSNESS_LEVELS, VITALS, Reading, reading_id_for
from healthsync.wire import REASONS, WireError, format_line, ok_reply, parse_line

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


# --- the happy path ---------------------------------------------------------


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


# --- rejections -------------------------------------------------------------

ERROR_CASES: list[tuple[str, bytes]] = [
    ("invalid_utf8", IDS.encode() + b"hr=7\xff"),
    ("invalid_utf8", b"\xc3\x28"),
    ("empty", b""),
    ("empty", b"\r\n"),
    ("empty", b" \t \n"),
    ("empty", b" , ,, "),
    ("malformed", b"{not json"),
    ("malformed", b'{"hr": 70} trailing'),
    ("malformed", b"[1, 2]"),
    ("malformed", b'"hr"=70'),
    ("malformed", IDS.encode() + b"hr"),
    ("malformed", IDS.encode() + b"hr = 70"),
    ("malformed", IDS.encode() + b"=70"),
    ("malformed", IDS.encode() + b'hr=70 name="Jane Doe'),
    ("malformed", IDS.encode() + b'hr=70 name="Jane"Doe'),
    ("malformed", IDS.encode() + b'hr=70 name=Jane"Doe'),
    ("malformed", IDS.encode() + b'hr=70 name="Jane\\"'),
    ("unknown_key", IDS.encode() + b"hr=70 weight=80"),
    ("unknown_key", b'{"device_id": "d", "patient_id": "p", "vitals": {"hr": 70}}'),
    ("duplicate_key", IDS.encode() + b"hr=1 pulse=2"),
    ("duplicate_key", IDS.encode() + b"hr=1 HR=1"),
    ("duplicate_key", IDS.encode() + b"bp=120/80 bp_sys=120"),
    ("duplicate_key", IDS.encode() + b"bp_dia=80 bp=120/80"),
    ("duplicate_key", IDS.encode() + b"device=mon-2 hr=70"),
    ("duplicate_key", b'{"device_id": "d", "patient_id": "p", "hr": 1, "Pulse": 1}'),
    ("missing_field", b"patient_id=p hr=70"),
    ("missing_field", b"device_id=d hr=70"),
    ("missing_field", b"{}"),
    ("missing_field", b'{"device_id": null, "patient_id": "p", "hr": 1}'),
    ("bad_value", IDS.encode() + b"hr=abc"),
    ("bad_value", IDS.encode() + b"hr="),
    ("bad_value", IDS.encode() + b"hr=nan"),
    ("bad_value", IDS.encode() + b"hr=inf"),
    ("bad_value", IDS.encode() + b"hr=1e999"),
    ("bad_value", IDS.encode() + b"hr=1_000"),
    ("bad_value", IDS.encode() + b'hr=" 78"'),
    ("bad_value", IDS.encode() + "hr=٧٨".encode()),
    ("bad_value", IDS.encode() + b"hr=true"),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": true}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": [70]}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": 1, "name": 5}'),
    ("bad_value", b'{"device_id": true, "patient_id": "p", "hr": 1}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": 1, "seq": 1.5}'),
    ("bad_value", b'{"device_id": "d", "patient_id": "p", "hr": 1, "name": "a\\u0007"}'),
    ("bad_value", b"device_id=mon/1 patient_id=p hr=70"),
    ("bad_value", b"device_id=" + b"d" * 65 + b" patient_id=p hr=70"),
    ("bad_value", IDS.encode() + b"hr=70 ts=yesterday"),
    ("bad_value", IDS.encode() + b"hr=70 seq=-1"),
    ("bad_value", IDS.encode() + b"hr=70 seq=+1"),
    ("bad_value", IDS.encode() + b"hr=70 seq=9223372036854775808"),
    ("bad_value", IDS.encode() + b"hr=70 on_o2=maybe"),
    ("bad_value", IDS.encode() + b"hr=70 consciousness=X"),
    ("bad_value", IDS.encode() + b"hr=70 consciousness=alert"),
    ("bad_value", IDS.encode() + b"hr=70 dob=1950-13-01"),
    ("bad_value", IDS.encode() + b"hr=70 dob=03/02/1950"),
    ("bad_value", IDS.encode() + b"hr=70 dob=2030-01-01"),
    ("bad_value", IDS.encode() + b"hr=70 gender=robot"),
    ("bad_value", IDS.encode() + b'hr=70 name=""'),
    ("bad_value", IDS.encode() + b"temp=36.9K"),
    ("bad_value", IDS.encode() + b"temp=36.9F%"),
    ("bad_value", IDS.encode() + b"spo2=95%%"),
    ("bad_value", IDS.encode() + b"bp=120"),
    ("bad_value", IDS.encode() + b"bp=120/abc"),
    ("bad_value", IDS.encode() + b"bp=120/80/60"),
    ("no_vitals", IDS.encode() + b"seq=1 on_o2=yes consciousness=A name=Jane"),
    ("too_long", b"x" * 4097),
    ("too_long", IDS.encode() + b"hr=70 address=" + b"a" * 4096),
    ("out_of_range", IDS.encode() + b"hr=351"),
    ("out_of_range", IDS.encode() + b"hr=-1"),
    ("out_of_range", IDS.encode() + b"spo2=100.5%"),
    ("out_of_range", IDS.encode() + b"temp=50"),
    ("out_of_range", IDS.encode() + b"temp=120F"),
    ("out_of_range", IDS.encode() + b"rr=81"),
    ("out_of_range", IDS.encode() + b"bp_sys=301"),
    ("out_of_range", IDS.encode() + b"bp=80/120"),
    ("out_of_range", IDS.encode() + b"bp_sys=100 bp_dia=100"),
    ("out_of_range", b'{"device_id": "d", "patient_id": "p", "hr": 1000}'),
    ("out_of_range", IDS.encode() + b"hr=70 ts=1700000301"),
    ("out_of_range", IDS.encode() + b"hr=70 ts=1700000000000"),
    ("out_of_range", IDS.encode() + b"hr=70 ts=1999-12-31T23:59:59Z"),
    ("out_of_range", IDS.encode() + b"hr=70 ts=2000-01-01T00:00:00+01:00"),
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


def test_reasons_are_exported_and_each_has_a_case() -> None:
    assert set(REASONS) == set(CODES)
    assert len(REASONS) == len(CODES)
    assert {reason for reason, _ in ERROR_CASES} == set(REASONS)


@pytest.mark.parametrize(("reason", "line"), ERROR_CASES)
def test_rejections(reason: str, line: bytes) -> None:
    error = rejection(line)
    assert (error.reason, error.code) == (reason, CODES[reason])
    assert error.reply().startswith(f"ERR {CODES[reason]} {reason}: ".encode())


def test_error_detail_names_the_key_but_not_the_line() -> None:
    error = rejection(IDS + 'name="Jane Secret" hr=abc')
    assert "heart_rate" in error.detail
    assert b"Secret" not in error.reply()
    unknown = rejection(IDS + "hr=70 " + "k" * 3000 + "=1")
    assert len(unknown.detail) < 100


def test_reply_is_one_printable_ascii_line() -> None:
    reply = WireError("unknown_key", "bad \u00e9 key\r\nwith\x00 junk " + "z" * 500).reply()
    assert reply.startswith(b"ERR 400 unknown_key: bad ? key??with? junk zzz")
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1
    assert all(32 <= byte < 127 for byte in reply[:-1])
    assert len(reply) < 260


def test_wire_error_reads_well_and_pickles() -> None:
    error = WireError("too_long", "line is 5000 bytes, limit 4096")
    assert str(error) == "too_long: line is 5000 bytes, limit 4096"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.reason, copy.detail) == (413, "too_long", error.detail)


def test_ok_reply() -> None:
    assert ok_reply("cf7c3b005ec5f87ad9fdb5f8") == b"OK cf7c3b005ec5f87ad9fdb5f8\n"


# --- format_line ------------------------------------------------------------


def test_format_line_output() -> None:
    line = format_line(
        {
            "device_id": "mon-0001",
            "patient_id": "P-1001",
            "hr": 78.0,
            "temp": 36.90,
            "spo2": 95,
            "on_oxygen": False,
            "name": 'Jane "JD" Doe, Jr.',
            "address": "C:\\x",
            "seq": None,
            "ts": datetime(2023, 11, 14, 22, 13, tzinfo=UTC),
            "dob": date(1950, 2, 3),
        }
    )
    assert line == (
        b"device_id=mon-0001 patient_id=P-1001 hr=78 temp=36.9 spo2=95 on_oxygen=false "
        b'name="Jane \\"JD\\" Doe, Jr." address="C:\\\\x" '
        b"ts=2023-11-14T22:13:00+00:00 dob=1950-02-03\n"
    )
    reading = parse(line)
    assert reading.patient["patient_name"] == 'Jane "JD" Doe, Jr.'
    assert reading.patient["address"] == "C:\\x"


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"hr": float("nan")}, ValueError),
        ({"hr": float("inf")}, ValueError),
        ({"name": "two\nlines"}, ValueError),
        ({"bad key": 1}, ValueError),
        ({"": 1}, ValueError),
        ({"hr": [1]}, TypeError),
    ],
)
def test_format_line_refuses_what_the_protocol_cannot_carry(
    fields: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        format_line(fields)


# --- properties -------------------------------------------------------------


def _assert_parses_or_rejects(line: bytes) -> None:
    try:
        reading = parse_line(line, RECEIVED)
    except WireError as error:
        assert error.reason in REASONS
        assert error.code == CODES[error.reason]
        reply = error.reply()
        assert reply.endswith(b"\n")
        assert reply.count(b"\n") == 1
        reply.decode("ascii")
        return
    assert reading.vitals
    for name, value in reading.vitals.items():
        assert VITALS[name].minimum <= value <= VITALS[name].maximum
    # Whatever is accepted must survive the trip onto the vitals topic.
    assert Reading.from_json(reading.to_json()) == reading


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_reject(line: bytes) -> None:
    _assert_parses_or_rejects(line)


# Mostly plausible values per key, with some wrong ones and some noise, so that
# generated lines get past the tokenizer and exercise the value checks too.
PLAUSIBLE: dict[str, list[str]] = {
    "device_id": ["mon-1", "d", "a/b"],
    "patient_id": ["P-1", "p"],
    "ts": ["2023-11-14T22:13:20Z", "2023-11-14T23:00+01:00", "1700000000", "1700000400", "1999"],
    "seq": ["0", "42", "-1", "1.5"],
    "heart_rate": ["78", "0", "350", "351", "-0", "7e1"],
    "spo2": ["95%", "100", "19", "95%%"],
    "temp": ["36.9", "98.6F", "36.9°c", "110F", "36.9K"],
    "resp_rate": ["12", "80.5"],
    "bp_sys": ["120", "29"],
    "bp_dia": ["80", "130"],
    "bp": ["120/80", "80/120", "120"],
    "on_oxygen": ["yes", "0", "maybe"],
    "consciousness": ["A", "v", "X"],
    "patient_name": ['"Jane Doe"', "Jane", '""', '"esc\\"aped"'],
    "birth_date": ["1950-02-03", "1950-2-3"],
    "gender": ["m", "female", "robot"],
    "mrn": ["123"],
    "address": ['"1 Main St, 2"', '"unterminated'],
    "phone": ["555"],
    "weight": ["80"],
}
CANONICAL_OF = {alias: canonical for alias, canonical, _ in ALIASES} | {
    "bp": "bp",
    "weight": "weight",
}
KEYS = sorted(CANONICAL_OF)
NOISE = st.text(alphabet='0123456789.-+eE%/°CFcf:TZ"\\ ,=anoyVPU\t{}', max_size=14)


@st.composite
def plausible_values(draw: st.DrawFn, key: str) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(NOISE)
    return draw(st.sampled_from(PLAUSIBLE[CANONICAL_OF[key]]))


@st.composite
def tokens(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 14)) == 0:
        return draw(st.sampled_from(["junk", "=", '"', "=1", 'a="b"c', "{", "hr==1"]))
    key = draw(st.sampled_from(KEYS))
    key = draw(st.sampled_from([key, key.upper()]))
    return f"{key}={draw(plausible_values(CANONICAL_OF[key.lower()]))}"


# Tokens run together (no separator) now and then, not often.
SEPARATORS = st.sampled_from([" ", ",", ", ", "\t", "  ", " , ", " ", ", ", " ", ""])


@st.composite
def protocol_lines(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(tokens(), SEPARATORS), max_size=7))
    body = "".join(token + sep for token, sep in parts)
    if draw(st.integers(0, 4)) > 0:
        body = "device_id=d patient_id=p " + body
    return (body + draw(st.sampled_from(["", "\n", "\r\n"]))).encode()


@FUZZ
@given(protocol_lines())
def test_protocol_shaped_text_parses_or_rejects(line: bytes) -> None:
    _assert_parses_or_rejects(line)


WILD_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        NOISE,
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)


@st.composite
def json_objects(draw: st.DrawFn) -> bytes:
    doc: dict[str, object] = {}
    if draw(st.integers(0, 4)) > 0:
        doc.update(device_id="d", patient_id="p")
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6)):
        kind = draw(st.integers(0, 9))
        value: object
        if kind < 5:
            value = draw(plausible_values(key)).strip('"')
        elif kind < 8:
            value = draw(st.integers(-5, 400) | st.floats(-5, 400) | st.booleans())
        else:
            value = draw(WILD_JSON)
        doc[draw(st.sampled_from([key, key.upper()]))] = value
    return orjson.dumps(doc)


@FUZZ
@given(json_objects())
def test_json_objects_parse_or_reject(line: bytes) -> None:
    _assert_parses_or_rejects(line)


def _key_for(draw: st.DrawFn, canonical: str) -> str:
    spellings = [canonical, *(alias for alias, target, _ in ALIASES if target == canonical)]
    spelling = draw(st.sampled_from(spellings))
    return draw(st.sampled_from([spelling, spelling.upper(), spelling.title()]))


IDENTIFIERS = st.text(
    alphabet=string.ascii_letters + string.digits + "._:-", min_size=1, max_size=64
)
# The 256-character limit has its own test; shorter text keeps generation quick.
PATIENT_TEXT = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=80
)
UTC_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime.fromtimestamp(RECEIVED + 300, UTC).replace(tzinfo=None),
)


def _draw_vitals(draw: st.DrawFn, fields: dict[str, object]) -> dict[str, float]:
    """At least one vital in range, sent as numbers or text, blood pressure maybe as `bp`."""
    vitals: dict[str, float] = {}
    for name in draw(st.sets(st.sampled_from(sorted(VITALS)), min_size=1)):
        vital = VITALS[name]
        number = st.floats(vital.minimum, vital.maximum) | st.integers(
            int(vital.minimum), int(vital.maximum)
        )
        vitals[name] = float(draw(number))
    if "bp_dia" in vitals and vitals.get("bp_sys", 1000.0) <= vitals["bp_dia"]:
        del vitals["bp_dia"]
    combined = "bp_sys" in vitals and "bp_dia" in vitals and draw(st.booleans())
    for name, value in vitals.items():
        if combined and name in ("bp_sys", "bp_dia"):
            continue
        fields[_key_for(draw, name)] = draw(st.sampled_from([value, str(value)]))
    if combined:
        fields["bp"] = f"{vitals['bp_sys']!r}/{vitals['bp_dia']!r}"
    return vitals


def _draw_time(draw: st.DrawFn, fields: dict[str, object]) -> float:
    """The reading's time: none sent (the receive time), naive, with an offset, or epoch."""
    stamp = draw(st.none() | UTC_TIMES)
    if stamp is None:
        return RECEIVED
    aware = stamp.replace(tzinfo=UTC)
    ts = aware.timestamp()
    offset = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
    form = draw(st.sampled_from(["naive", "offset", "epoch"]))
    sent: object = {"naive": stamp, "offset": aware.astimezone(offset), "epoch": ts}[form]
    fields[_key_for(draw, "ts")] = sent
    return ts


def _draw_patient(draw: st.DrawFn, fields: dict[str, object]) -> dict[str, str]:
    """Any of the patient fields, in the forms a device may send them."""
    patient: dict[str, str] = {}
    for name in ("patient_name", "mrn", "address", "phone"):
        if draw(st.booleans()):
            patient[name] = draw(PATIENT_TEXT)
            fields[_key_for(draw, name)] = patient[name]
    if draw(st.booleans()):
        born = draw(st.dates(max_value=date(2023, 11, 14)))
        patient["birth_date"] = born.isoformat()
        fields[_key_for(draw, "birth_date")] = born
    if draw(st.booleans()):
        sent_gender, gender = draw(
            st.sampled_from(
                [("male", "male"), ("F", "female"), ("other", "other"), ("unknown", "unknown")]
            )
        )
        patient["gender"] = gender
        fields[_key_for(draw, "gender")] = sent_gender
    return patient


@st.composite
def valid_readings(draw: st.DrawFn) -> tuple[dict[str, object], Reading]:
    """Fields for format_line, and the reading they must parse back into."""
    fields: dict[str, object] = {}
    device_id, patient_id = draw(IDENTIFIERS), draw(IDENTIFIERS)
    fields[_key_for(draw, "device_id")] = device_id
    fields[_key_for(draw, "patient_id")] = patient_id
    vitals = _draw_vitals(draw, fields)
    ts = _draw_time(draw, fields)

    seq = draw(st.none() | st.integers(0, 2**63 - 1))
    on_oxygen = draw(st.none() | st.booleans())
    consciousness = draw(st.none() | st.sampled_from(CONSCIOUSNESS_LEVELS))
    if seq is not None:
        fields[_key_for(draw, "seq")] = seq
    if on_oxygen is not None:
        fields[_key_for(draw, "on_oxygen")] = on_oxygen
    if consciousness is not None:
        fields["consciousness"] = draw(st.sampled_from([consciousness, consciousness.lower()]))
    patient = _draw_patient(draw, fields)

    order = draw(st.permutations(list(fields)))
    expected = Reading(
        reading_id=reading_id_for(device_id, seq, round(ts * 1000)),
        device_id=device_id,
        patient_id=patient_id,
        ts=ts,
        received_at=RECEIVED,
        vitals=vitals,
        seq=seq,
        on_oxygen=on_oxygen,
        consciousness=consciousness,
        patient=patient,
    )
    return {key: fields[key] for key in order}, expected


@FUZZ
@given(valid_readings())
def test_format_then_parse_round_trips(case: tuple[dict[str, object], Reading]) -> None:
    fields, expected = case
    line = format_line(fields)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    # Patient text may be 256 multi-byte characters per field, so lift the limit.
    assert parse_line(line, RECEIVED, max_line_bytes=1 << 20) == expected
