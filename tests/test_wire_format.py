"""format_line: the text it writes, what it refuses, and that any valid fields
it formats parse back into the same reading."""

from __future__ import annotations

import string
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthsync.domain.readings import CONSCIOUSNESS_LEVELS, VITALS, Reading, reading_id_for
from healthsync.wire import format_line, parse_line
from tests.wire_cases import ALIASES, FUZZ, RECEIVED, parse


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
