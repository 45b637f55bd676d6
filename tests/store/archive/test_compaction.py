"""Compaction's safety checks with real files: a merged object that does not hold exactly
its inputs' rows is refused, removed, and the inputs stay what readers take."""

from __future__ import annotations

import pyarrow as pa
import pytest

from healthsync.store.archive.compact import Compactor
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.writer import ArchiveWriter
from tests.store.archive.conftest import OTHER, PATIENT, T0, batch

HOUR = 3600.0


class AlteringWriter(ArchiveWriter):
    """Encodes one heart rate wrong in every object: a fault verification must catch."""

    def encode(self, table: pa.Table, patient: str, encrypted: bool) -> bytes:
        rates = table["heart_rate"].to_pylist()
        rates[-1] = (rates[-1] or 0) + 1
        column = table.schema.get_field_index("heart_rate")
        altered = table.set_column(column, "heart_rate", pa.array(rates, pa.float64()))
        return super().encode(altered, patient, encrypted)


class DroppingWriter(ArchiveWriter):
    """Encodes every object without its first row."""

    def encode(self, table: pa.Table, patient: str, encrypted: bool) -> bytes:
        return super().encode(table.slice(1), patient, encrypted)


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
