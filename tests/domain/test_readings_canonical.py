"""A value on the vitals topic is trusted only as far as ingest would have accepted it.

Ingest writes every reading on the topic, but anything that can produce to it
(a tool replaying data, another writer, a future version) can put a
well-formed JSON reading there that ingest would have refused. The processor
and the archiver read it with `Reading.from_json`: what it accepts must be a
reading every later stage can handle, and what it refuses becomes a dead
letter instead of a batch that fails for ever.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from healthsync.domain.readings import LAST_EPOCH, Reading

RECEIVED = 1_700_000_000.0


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "reading_id": "r-1",
        "device_id": "mon-1",
        "patient_id": "P-1",
        "ts_epoch": RECEIVED - 1.5,
        "received_at": RECEIVED,
        "vitals": {"heart_rate": 78.0, "spo2": 96.0},
    }
    doc.update(changes)
    return doc


def test_a_reading_ingest_writes_comes_back_equal() -> None:
    reading = Reading(
        "r-1",
        "mon-1",
        "P-1",
        RECEIVED - 1.5,
        RECEIVED,
        {"heart_rate": 350.0, "spo2": 20.0, "temp": 36.9},
        seq=7,
        on_oxygen=True,
        consciousness="V",
        patient={"patient_name": "Jane Doe", "gender": "female", "birth_date": "1950-02-03"},
        quality={"sqi": 0.4},
    )
    assert Reading.from_json(reading.to_json()) == reading


def test_a_nurses_observation_without_vitals_is_a_reading() -> None:
    reading = Reading.from_json(orjson.dumps(_doc(vitals={}, consciousness="U")))
    assert reading.vitals == {}
    assert reading.consciousness == "U"


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"vitals": {"heart_rate": "inf"}}, "heart_rate"),
        ({"vitals": {"heart_rate": "nan"}}, "heart_rate"),
        ({"vitals": {"spo2": "96"}}, "spo2"),
        ({"vitals": {"heart_rate": True}}, "heart_rate"),
        ({"vitals": {"heart_rate": None}}, "heart_rate"),
        ({"vitals": {"heart_rate": 351}}, "heart_rate"),
        ({"vitals": {"spo2": 19.9}}, "spo2"),
        ({"vitals": {"colour": 1.0}}, "colour"),
        ({"vitals": [78]}, "vitals"),
        ({"quality": {"sqi": 1.5}}, "sqi"),
        ({"quality": {"glare": 0.5}}, "glare"),
        ({"consciousness": "X"}, "consciousness"),
        ({"patient_id": ""}, "patient_id"),
        ({"patient_id": "P/../1"}, "patient_id"),
        ({"device_id": "m" * 65}, "device_id"),
        ({"reading_id": 12}, "reading_id"),
        ({"on_oxygen": "yes"}, "on_oxygen"),
        ({"seq": "7"}, "seq"),
        ({"seq": -1}, "seq"),
        ({"ts_epoch": "nan"}, "ts_epoch"),
        ({"ts_epoch": 1e300}, "ts_epoch"),
        ({"ts_epoch": RECEIVED + 301}, "ts_epoch"),
        ({"ts_epoch": 900_000_000.0}, "ts_epoch"),
        ({"received_at": None}, "received_at"),
        ({"received_at": 1e300, "ts_epoch": 1e300}, "received_at"),
        # Demographics: the research set keeps `gender` and derives an age from
        # `birth_date`, so free text there would carry a name or a note into it.
        ({"patient": {"gender": "Jane Doe, bed 4"}}, "gender"),
        ({"patient": {"gender": "M"}}, "gender"),
        ({"patient": {"birth_date": "3 Feb 1950"}}, "birth_date"),
        ({"patient": {"birth_date": "1950-02-30"}}, "birth_date"),
        ({"patient": {"birth_date": "2023-11-17"}}, "birth_date"),
        ({"patient": {"ssn": "078-05-1120"}}, "ssn"),
        ({"patient": {"patient_name": 12}}, "patient_name"),
        ({"patient": {"patient_name": ""}}, "patient_name"),
        ({"patient": {"patient_name": "J" * 257}}, "patient_name"),
        ({"patient": {"mrn": "A\n1"}}, "mrn"),
        ({"patient": ["Jane"]}, "patient"),
        # The last second a time can be shown: a time past it, or a birth date checked
        # against the day after it, raised past the processor and the archiver.
        ({"received_at": LAST_EPOCH, "ts_epoch": LAST_EPOCH + 200}, "ts_epoch"),
        (
            {"received_at": LAST_EPOCH, "ts_epoch": LAST_EPOCH, "patient": {"birth_date": "x"}},
            "birth_date",
        ),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_a_value_ingest_would_refuse_is_not_a_reading(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Reading.from_json(orjson.dumps(_doc(**changes)))


def test_a_birth_date_on_the_last_day_a_time_can_show_is_a_reading() -> None:
    doc = _doc(received_at=LAST_EPOCH, ts_epoch=LAST_EPOCH, patient={"birth_date": "1950-02-03"})
    assert Reading.from_json(orjson.dumps(doc)).patient == {"birth_date": "1950-02-03"}
