"""No identifier in clear in the archive; the research set follows Safe Harbor.

The scan looks at every byte of every object and, where a file opens without
keys, at every value in it. Run over a deliberately un-stripped, unencrypted
file it finds the identifiers, so it is shown able to fail.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from healthsync.config import Settings
from healthsync.store.archive.alerts import alerts_table
from healthsync.store.archive.columns import readings_table
from healthsync.store.archive.deidentify import Deidentifier
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from tests.store.archive.conftest import DEMOGRAPHICS, PATIENT, T0, batch, reading
from tests.stream.engine_cases import Run
from tests.stream.engine_cases import reading as engine_reading

DAY = 86_400.0


def admitted() -> list:  # type: ignore[type-arg]
    first = replace(
        reading(PATIENT, "mon-41", 0, T0, heart_rate=128, spo2=86, temp=38.73),
        patient=DEMOGRAPHICS,
    )
    return [first, *batch(T0 + 60, 30)]


IDENTIFIERS = [
    t.encode() for t in (PATIENT, "mon-41", *(v for k, v in DEMOGRAPHICS.items() if k != "gender"))
]
# The identified set shows nothing at all without its keys: not even a vital or the gender.
EVERYTHING = [*IDENTIFIERS, b"female", b"38.73", struct.pack("<d", 38.73)]


def values_text(data: bytes) -> bytes | None:
    """Every value of a Parquet file as text, or None if it does not open without keys."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except OSError:
        return None
    return repr(table.to_pydict()).encode()


def found(data: bytes, needles: list[bytes]) -> list[bytes]:
    opened = values_text(data) or b""
    return [n for n in needles if n in data or n in opened]


def test_no_identifier_or_vital_in_clear_in_any_archived_byte(
    archive: Archive, archive_settings: Settings
) -> None:
    archive.writer().write_readings(Span(0, 0, 60), admitted())
    root = Path(archive_settings.archive.url.removeprefix("file://"))
    objects = sorted(p for p in root.rglob("*.parquet"))
    assert len(objects) == 2
    identified, research = (p.read_bytes() for p in objects[::-1])
    assert found(identified, EVERYTHING) == []
    assert values_text(identified) is None  # the footer too is encrypted
    assert found(research, IDENTIFIERS) == []
    assert values_text(research) is not None  # opened: its values were scanned
    # The same scans over a plain, un-stripped file find every needle.
    sink = pa.BufferOutputStream()
    pq.write_table(readings_table(admitted()), sink, compression="zstd")
    assert found(bytes(sink.getvalue()), EVERYTHING) == EVERYTHING


def test_research_set_has_safe_harbor_columns_only(
    archive: Archive, archive_settings: Settings, codec_settings_pseudonym: str
) -> None:
    readings = admitted()
    keys = archive.writer().write_readings(Span(0, 0, 60), readings)
    root = Path(archive_settings.archive.url.removeprefix("file://"))
    research = pq.read_table(root / keys[-1])

    assert set(research.column_names) == {
        "patient", "ts", "device", "received_delay_ms", "heart_rate", "spo2", "temp",
        "resp_rate", "bp_sys", "bp_dia", "other_vitals", "on_oxygen", "consciousness",
        "gender", "birth_year", "age",
    }  # fmt: skip
    rows = research.to_pylist()
    patients = {r["patient"] for r in rows}
    assert len(patients) == 2 and all(len(p) == 32 for p in patients)
    # Not the live store's pseudonym either: the research set cannot be joined to Redis.
    assert codec_settings_pseudonym not in patients
    # Born 1931-12-09, measured 2026-11-28: 94 years old, so "90+" and no birth year.
    admission = next(r for r in rows if r["age"] is not None)
    assert (admission["age"], admission["birth_year"], admission["gender"]) == (
        "90+",
        None,
        "female",
    )


def test_time_shift_is_whole_days_per_patient_and_keeps_intervals(
    archive: Archive,
) -> None:
    readings = admitted()
    table = readings_table(readings)
    shifted = archive.deidentifier.table(table)
    mine = archive.deidentifier.pseudonym("patient", PATIENT)
    real = sorted(round(r.ts * 1000) for r in readings if r.patient_id == PATIENT)
    moved = [round(r["ts"].timestamp() * 1000) for r in shifted.to_pylist() if r["patient"] == mine]
    shifts = {a - b for a, b in zip(real, moved, strict=True)}
    assert len(shifts) == 1
    (shift_ms,) = shifts
    assert shift_ms % int(DAY * 1000) == 0 and 1 <= shift_ms // int(DAY * 1000) <= 365
    assert shift_ms // int(DAY * 1000) == archive.deidentifier.shift_days(PATIENT)


def test_ages_up_to_89_keep_the_birth_year() -> None:
    ages = Deidentifier(b"p" * 32, b"s" * 32)
    young = replace(
        reading(PATIENT, "mon-1", 1, T0, heart_rate=80),
        patient={"birth_date": "1937-11-29"},  # 88 on 2026-11-28
    )
    older = replace(
        reading("PX-2", "mon-2", 1, T0, heart_rate=80),
        patient={"birth_date": "1936-11-28"},  # 90 that day
    )
    rows = ages.table(readings_table([young, older])).to_pylist()
    assert sorted((r["age"], r["birth_year"]) for r in rows) == [("88", 1937), ("90+", None)]
    assert datetime.fromtimestamp(T0, UTC).date().isoformat() == "2026-11-28"


def test_a_device_offline_alert_names_no_device_in_the_research_set(archive: Archive) -> None:
    """The engine's offline alert says which device went quiet, in its kind and its rule."""
    run = Run()
    for t in range(0, 60, 5):
        run.send(engine_reading(t, patient=PATIENT, device="mon-bed-12", heart_rate=70))
    (event,) = run.send(now=655)
    assert "mon-bed-12" in event.alert.rule  # what the bedside sees, from the live store
    research = archive.deidentifier.table(alerts_table([(event.type, event.alert)]))

    (row,) = research.to_pylist()
    assert row["kind"] == "device_offline"
    assert row["rule"].startswith("no data from the device for 600 s")
    assert b"mon-bed-12" not in repr(row).encode()


def test_a_monitor_moved_to_another_patient_does_not_link_their_shifted_times() -> None:
    # Each patient's times move by a secret shift of their own. A device pseudonym the
    # same for both patients showed where the monitor went from one to the other: its
    # handover at two shifted times gave away the difference of the two shifts, and
    # whoever knew one patient's real dates could then unshift the other's.
    research = Deidentifier(b"p" * 32, b"s" * 32)
    first = [reading(PATIENT, "mon-7", n, T0 + n * 60, heart_rate=80) for n in range(3)]
    later = [reading("PX-2", "mon-7", n, T0 + 600 + n * 60, heart_rate=80) for n in range(3, 6)]
    rows = research.table(readings_table([*first, *later])).to_pylist()
    devices: dict[str, set[str]] = {}
    for row in rows:
        devices.setdefault(row["patient"], set()).add(row["device"])
    assert len(devices) == 2
    mine, theirs = devices.values()
    assert len(mine) == len(theirs) == 1, "one pseudonym per device within a patient"
    assert mine.isdisjoint(theirs), "the device links the two patients"


def test_the_research_set_files_no_object_by_the_real_new_year(archive: Archive) -> None:
    """A research object went under the real year of its batch while its rows show
    shifted times: the first objects under a new year marked the real 1 January at a
    shifted time of each patient in them, giving away their shifts."""
    writer = archive.writer()
    new_year = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    written = [
        writer.write_readings(
            Span(0, i, i), [reading(PATIENT, "mon-41", i, new_year + (i - 5) * 60, heart_rate=70)]
        )
        for i in range(10)
    ]
    years = {key.split("/")[2] for keys in written for key in keys if key.startswith("deid")}
    assert len(years) == 1, sorted(years)
