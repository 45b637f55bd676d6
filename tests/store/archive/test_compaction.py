"""Compaction's safety checks with real files: a merged object that does not hold exactly
its inputs' rows is refused, removed, and the inputs stay what readers take; day
compaction on S3 (moto in server mode) stopped between its write and its deletes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthsync.store.archive.columns import readings_table
from healthsync.store.archive.compact import Compactor
from healthsync.store.archive.days import DAY_S, DayCompactor, day_of
from healthsync.store.archive.errors import ArchiveReadError
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.writer import ArchiveWriter
from tests.store.archive.conftest import OTHER, PATIENT, T0, Moto, batch
from tests.store.archive.test_s3 import s3_settings

HOUR = 3600.0


class AlteringWriter(ArchiveWriter):
    """Encodes one heart rate wrong in every object: a fault verification must catch."""

    def encode(
        self, table: pa.Table, patient: str, encrypted: bool, row_group_rows: int | None = None
    ) -> bytes:
        rates = table["heart_rate"].to_pylist()
        rates[-1] = (rates[-1] or 0) + 1
        column = table.schema.get_field_index("heart_rate")
        altered = table.set_column(column, "heart_rate", pa.array(rates, pa.float64()))
        return super().encode(altered, patient, encrypted, row_group_rows)


class DroppingWriter(ArchiveWriter):
    """Encodes every object without its first row."""

    def encode(
        self, table: pa.Table, patient: str, encrypted: bool, row_group_rows: int | None = None
    ) -> bytes:
        return super().encode(table.slice(1), patient, encrypted, row_group_rows)


@pytest.mark.parametrize("faulty", [AlteringWriter, DroppingWriter])
def test_a_merged_object_with_other_rows_is_refused_and_removed(
    archive: Archive, faulty: type[ArchiveWriter]
) -> None:
    writer = archive.writer()
    readings = batch(T0, 30)  # three rolls of 20 readings in hour 10
    for n in range(3):
        writer.write_readings(Span(0, n * 20, n * 20 + 19), readings[n * 20 : n * 20 + 20])
    before = archive.store.list("identified/")
    points = [archive.reader().readings(p, T0, T0 + HOUR) for p in (PATIENT, OTHER)]

    compactor = Compactor(
        archive.store, archive.crypto, faulty(archive.store, archive.crypto, archive.deidentifier)
    )
    done = compactor.hour("readings", int(T0 // HOUR))

    assert done.merges == []
    assert len(done.refused) == 1 and done.refused[0].endswith("or other rows: inputs kept")
    # The wrong object is gone, so readers take the inputs again: the same answer.
    assert [archive.reader().readings(p, T0, T0 + HOUR) for p in (PATIENT, OTHER)] == points
    assert archive.store.list("identified/") == before


class Crash(Exception):
    """Stands for the process dying at a step."""


def test_day_compaction_on_s3_crashed_after_the_write_then_rerun(
    moto: Moto, session_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3: Any = moto.client("s3")
    s3.create_bucket(
        Bucket="hs-days", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    archive = Archive.from_settings(s3_settings(session_keyring, "s3://hs-days/ward-7"))
    writer = archive.writer()
    late_evening = batch(T0 + 12 * HOUR, 90)  # 22:00 to 23:29, two patients
    for n in range(3):
        writer.write_readings(Span(0, n * 60, n * 60 + 59), late_evening[n * 60 : n * 60 + 60])
    writer.write_readings(Span(0, 180, 199), batch(T0 + 15 * HOUR, 10))  # the next day
    day = day_of(T0)
    period = (T0, T0 + 2 * DAY_S)
    before = [archive.reader().readings(p, *period) for p in (PATIENT, OTHER)]

    def crash(step: str, _key: str) -> None:
        if step == "written":
            raise Crash(step)

    stopping = Compactor(archive.store, archive.crypto, writer, crash)
    with pytest.raises(Crash):
        DayCompactor(stopping, today=day + 1).day("readings", day)
    # The day object is there, its inputs too: each reading is still read once.
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="hs-days")["Contents"])
    merged = "ward-7/identified/readings/date=2026-11-28/p0-0-179.compacted.parquet"
    assert merged in listed and len([k for k in listed if "date=2026-11-28/hour=" in k]) == 3
    assert [archive.reader().readings(p, *period) for p in (PATIENT, OTHER)] == before

    done = DayCompactor(Compactor(archive.store, archive.crypto, writer), day + 1).day(
        "readings", day
    )
    assert [(m.written, m.deleted) for m in done.merges] == [(None, 3)]
    identified = sorted(
        o["Key"]
        for o in s3.list_objects_v2(Bucket="hs-days", Prefix="ward-7/identified/")["Contents"]
    )
    assert identified == [
        merged,
        "ward-7/identified/readings/date=2026-11-29/hour=01/p0-180-199.parquet",
    ]
    assert s3.head_object(Bucket="hs-days", Key=merged)["ServerSideEncryption"] == "AES256"
    assert [archive.reader().readings(p, *period) for p in (PATIENT, OTHER)] == before


def test_a_plain_parquet_file_among_the_identified_objects_is_refused_not_taken_in(
    archive: Archive,
) -> None:
    """Every identified object is encrypted. A plain Parquet file put there (by hand, or
    by whoever could write to the bucket) was read as history, and the hour's compaction
    merged it into an encrypted object, which then looked like one written here."""
    writer = archive.writer()
    writer.write_readings(Span(0, 0, 19), batch(T0, 10))
    sink = pa.BufferOutputStream()
    pq.write_table(readings_table(batch(T0 + 600, 1)), sink)
    planted = "identified/readings/date=2026-11-28/hour=10/p0-20-20.parquet"
    archive.store.put(planted, bytes(sink.getvalue()))

    with pytest.raises(ArchiveReadError, match=r"p0-20-20\.parquet.*not an encrypted"):
        archive.reader().readings(PATIENT, T0, T0 + HOUR)
    done = Compactor(archive.store, archive.crypto, writer).hour("readings", int(T0 // HOUR))
    assert done.merges == []
    assert len(done.refused) == 1 and "p0-20-20.parquet" in done.refused[0]
    assert planted in archive.store.list("identified/")
