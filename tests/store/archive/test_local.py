"""The archive in a local directory: its key layout, reading one patient back, clear errors."""

from __future__ import annotations

from dataclasses import replace
from itertools import chain
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthsync.config import Settings
from healthsync.domain.readings import reading_id_for
from healthsync.security.keyring import Keyring
from healthsync.store.archive.errors import ArchiveReadError
from healthsync.store.archive.layout import Span
from healthsync.store.archive.setup import Archive
from healthsync.store.archive.writer import find_span, row_groups
from tests.store.archive.conftest import OTHER, PATIENT, T0, batch, reading

HOUR = 3600.0


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_batch_becomes_one_object_per_hour_and_one_research_object(
    archive: Archive, archive_settings: Settings
) -> None:
    # 90 minutes from 10:00: the batch spans the hours 10 and 11 of 2026-11-28.
    readings = batch(T0, 90)
    keys = archive.writer().write_readings(Span(2, 1000, 1179), readings)

    root = Path(archive_settings.archive.url.removeprefix("file://"))
    assert (
        files(root)
        == sorted(keys)
        == [
            f"deidentified/readings/year={archive.writer().deidentifier.research_year(T0)}"
            "/p2-1000-1179.parquet",
            "identified/readings/date=2026-11-28/hour=10/p2-1000-1179.parquet",
            "identified/readings/date=2026-11-28/hour=11/p2-1000-1179.parquet",
        ]
    )
    # The hour of the first reading is written first: a restart looks for it.
    assert keys[0].endswith("hour=10/p2-1000-1179.parquet")
    assert find_span(archive.store, Span(2, 1000, 1000), T0) == Span(2, 1000, 1179)
    assert find_span(archive.store, Span(2, 1180, 1180), T0) is None
    # A topic created again starts over at the same offsets: another batch.
    assert find_span(archive.store, Span(2, 1000, 1000, "0a" * 16), T0) is None


def test_a_reading_in_the_last_half_millisecond_of_an_hour_goes_to_the_next_one_alone(
    archive: Archive,
) -> None:
    """Rows are stored to the millisecond, rounded, so 10:59:59.9996 is 11:00:00.000. The
    batch's first hour was taken unrounded: an empty object went to hour 10, written
    first (where a restart looks), and the row to hour 11."""
    ts = T0 + 3600 - 0.0004
    keys = archive.writer().write_readings(
        Span(0, 0, 0), [reading(PATIENT, "mon-1", 0, ts, heart_rate=70)]
    )
    identified = [k for k in keys if k.startswith("identified/")]
    assert identified == ["identified/readings/date=2026-11-28/hour=11/p0-0-0.parquet"]
    assert find_span(archive.store, Span(0, 0, 0), ts) == Span(0, 0, 0)
    [point] = archive.reader().readings(PATIENT, T0, T0 + 7200)
    assert point["ts"] == T0 + 3600


def test_one_patients_readings_come_back_ordered_and_exact(archive: Archive) -> None:
    writer = archive.writer()
    first, second = batch(T0, 60), batch(T0 + 60 * 60, 60)
    # Kafka order within a batch is not time order: the archive sorts.
    writer.write_readings(Span(0, 0, 119), list(reversed(first)))
    writer.write_readings(Span(0, 120, 239), second)
    reader = archive.reader()

    points = reader.readings(PATIENT, T0 + 30 * 60, T0 + 90 * 60)
    expected = [r for r in first + second if r.patient_id == PATIENT]
    expected = [r for r in expected if T0 + 30 * 60 <= r.ts <= T0 + 90 * 60]
    assert [p["reading_id"] for p in points] == [r.reading_id for r in expected]
    assert [p["ts"] for p in points] == [r.ts for r in expected]
    assert points[0]["vitals"] == expected[0].vitals
    assert {p["device_id"] for p in points} == {"mon-41"}

    only_hr = reader.readings(OTHER, T0, T0 + 2 * HOUR, vital="heart_rate")
    assert len(only_hr) == 120
    assert all(list(p["vitals"]) == ["heart_rate"] for p in only_hr)
    assert reader.readings(PATIENT, T0 - 5 * HOUR, T0 - HOUR) == []


def test_an_hour_of_several_batches_comes_back_in_time_order(archive: Archive) -> None:
    writer = archive.writer()
    early, late = batch(T0, 10), batch(T0 + 10 * 60, 10)
    writer.write_readings(Span(0, 200, 219), early)
    # Names sort as text, so this later batch's object is listed first.
    writer.write_readings(Span(0, 1000, 1019), late)

    points = archive.reader().readings(PATIENT, T0, T0 + HOUR)
    assert [p["ts"] for p in points] == [r.ts for r in early + late if r.patient_id == PATIENT]


SIX = {"heart_rate": 71.0, "spo2": 97.0, "temp": 36.8, "resp_rate": 15.0, "bp_sys": 118.0}


def test_every_vital_and_id_comes_back_as_sent(archive: Archive) -> None:
    six = SIX | {"bp_dia": 76.0}
    full = reading(PATIENT, "mon-41", 1, T0, **six)
    extra = reading(PATIENT, "mon-41", 2, T0 + 5, **six, etco2=35.0)
    # No sequence number: the id derives from the time, rounded half to even (.5 ms down).
    no_seq = replace(reading(PATIENT, "mon-41", 0, T0 + 10.0125, heart_rate=90.0), seq=None)
    no_seq = replace(no_seq, reading_id=reading_id_for("mon-41", None, round(no_seq.ts * 1000)))
    later = reading(PATIENT, "mon-41", 4, T0 + 15, **six)
    writer = archive.writer()
    writer.write_readings(Span(0, 0, 1), [full, extra])
    writer.write_readings(Span(0, 2, 3), [later, no_seq])

    points = archive.reader().readings(PATIENT, T0, T0 + HOUR)
    sent = [full, extra, no_seq, later]
    assert [p["reading_id"] for p in points] == [r.reading_id for r in sent]
    assert [p["ts"] for p in points] == [T0, T0 + 5, T0 + 10.012, T0 + 15]
    assert [p["vitals"] for p in points] == [r.vitals for r in sent]
    table = archive.reader().readings_table(PATIENT, T0, T0 + HOUR)
    # Ids ingest derives are not stored, and the receive delay is kept to the millisecond.
    assert table["reading_id"].null_count == 4
    assert table["received_delay_ms"].to_pylist() == [250] * 4


def test_reading_ids_that_cannot_be_derived_are_kept(archive: Archive) -> None:
    odd = replace(reading(PATIENT, "mon-41", 7, T0, heart_rate=80), reading_id="from-elsewhere")
    archive.writer().write_readings(Span(0, 0, 0), [odd])
    assert [p["reading_id"] for p in archive.reader().readings(PATIENT, T0, T0)] == [
        "from-elsewhere"
    ]


def test_a_query_reads_only_the_hours_it_covers(
    archive: Archive, archive_settings: Settings
) -> None:
    writer = archive.writer()
    writer.write_readings(Span(0, 0, 119), batch(T0, 60))
    writer.write_readings(Span(0, 120, 239), batch(T0 + 5 * HOUR, 60))
    root = Path(archive_settings.archive.url.removeprefix("file://"))
    # Garbage where the later hour's object is: a query that opened it would fail.
    (root / "identified/readings/date=2026-11-28/hour=15/p0-120-239.parquet").write_bytes(b"junk")

    assert len(archive.reader().readings(PATIENT, T0, T0 + HOUR)) == 60
    with pytest.raises(ArchiveReadError, match=r"file://.*hour=15/p0-120-239\.parquet"):
        archive.reader().readings(PATIENT, T0, T0 + 6 * HOUR)


def test_a_query_skips_row_groups_its_patient_only_sorts_between(
    archive: Archive, archive_settings: Settings
) -> None:
    # Both patients share one row group: its statistics span PX-20077 to PX-73910.
    keys = archive.writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    reader = archive.reader()
    assert reader.readings("PX-50000", T0, T0 + HOUR) == []
    table = reader.readings_table(PATIENT, T0, T0 + HOUR)
    assert table.num_rows == 60
    # The object's list of patients stays in its footer, out of the answer.
    assert OTHER.encode() not in b"".join(chain(*(table.schema.metadata or {}).items()))

    root = Path(archive_settings.archive.url.removeprefix("file://"))
    (root / keys[0]).write_bytes(b"junk")
    # The remembered footer lists who is in it: the object is not opened again.
    assert reader.readings("PX-50000", T0, T0 + HOUR) == []


def test_objects_unreadable_with_other_keys_or_damaged_name_the_object(
    archive: Archive, archive_settings: Settings, tmp_path: Path
) -> None:
    archive.writer().write_readings(Span(1, 5, 124), batch(T0, 60))
    other_ring = tmp_path / "other-keyring.json"
    Keyring.generate().save(other_ring)
    foreign = Archive.from_settings(
        archive_settings.model_copy(
            update={
                "crypto": archive_settings.crypto.model_copy(update={"keyring_file": other_ring})
            }
        )
    )
    with pytest.raises(ArchiveReadError, match=r"hour=10/p1-5-124\.parquet.*does not authenticate"):
        foreign.reader().readings(PATIENT, T0, T0 + HOUR)

    root = Path(archive_settings.archive.url.removeprefix("file://"))
    target = root / "identified/readings/date=2026-11-28/hour=10/p1-5-124.parquet"
    data = target.read_bytes()
    target.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ArchiveReadError, match=r"p1-5-124\.parquet"):
        archive.reader().readings(PATIENT, T0, T0 + HOUR)
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveReadError, match=r"p1-5-124\.parquet"):
        archive.reader().readings(PATIENT, T0, T0 + HOUR)


def test_a_retired_key_leaves_its_files_unreadable_with_a_clear_error(
    archive_settings: Settings, tmp_path: Path
) -> None:
    ring_file = tmp_path / "ring.json"
    ring = Keyring.generate()
    ring.save(ring_file)
    settings = archive_settings.model_copy(
        update={"crypto": archive_settings.crypto.model_copy(update={"keyring_file": ring_file})}
    )
    Archive.from_settings(settings).writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    ring.rotate()
    ring.save(ring_file)
    # After a rotation the old key still opens old files.
    assert len(Archive.from_settings(settings).reader().readings(PATIENT, T0, T0 + HOUR)) == 60
    ring.retire("k1")
    ring.save(ring_file)
    with pytest.raises(ArchiveReadError, match="'k1' was retired"):
        Archive.from_settings(settings).reader().readings(PATIENT, T0, T0 + HOUR)


def test_a_running_reader_opens_files_written_under_a_key_made_after_it_started(
    archive_settings: Settings, tmp_path: Path
) -> None:
    """The API builds its reader once. After a rotation (automatic, after enough seals,
    or `healthsync keys rotate`) a new process (the hourly compact job, a restarted
    archiver) wraps its files' data keys under the new key: history reads that reached
    them were 500s until the API was restarted."""
    ring_file = tmp_path / "ring.json"
    ring = Keyring.generate()
    ring.save(ring_file)
    settings = archive_settings.model_copy(
        update={"crypto": archive_settings.crypto.model_copy(update={"keyring_file": ring_file})}
    )
    reader = Archive.from_settings(settings).reader()
    Archive.from_settings(settings).writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    assert len(reader.readings(PATIENT, T0, T0 + HOUR)) == 60
    ring.rotate()
    ring.save(ring_file)
    later = batch(T0 + 120, 60)
    Archive.from_settings(settings).writer().write_readings(Span(0, 120, 239), later)
    assert len(reader.readings(PATIENT, T0, T0 + 2 * HOUR)) == 120


def test_files_are_lz4_with_row_group_statistics(
    archive: Archive, archive_settings: Settings
) -> None:
    small_groups = replace(archive, row_group_rows=16)
    keys = small_groups.writer().write_readings(Span(0, 0, 119), batch(T0, 60))
    root = Path(archive_settings.archive.url.removeprefix("file://"))
    research = pq.ParquetFile(root / keys[-1])
    assert research.metadata.num_row_groups == 8
    column = research.metadata.row_group(0).column(0)
    assert column.compression == "LZ4"  # pyarrow's name for Parquet's LZ4_RAW codec
    assert column.statistics.has_min_max
    # Sorted by patient, then time, and cut where a patient's run ends: 60 rows of
    # each patient in groups of at most 16 make 16+16+16+12 each, one patient a group.
    groups = [research.metadata.row_group(i) for i in range(8)]
    assert [g.num_rows for g in groups] == [16, 16, 16, 12] * 2
    patients = [g.column(0).statistics for g in groups]
    assert all(s.min == s.max for s in patients)
    assert [s.min for s in patients] == sorted(s.min for s in patients)
    # The identified object needs the keys even for its footer.
    with pytest.raises(OSError, match="encrypted"):
        pq.ParquetFile(root / keys[0])
    assert len(small_groups.reader().readings(PATIENT, T0, T0 + HOUR)) == 60


def test_row_groups_hold_whole_patients_up_to_the_limit() -> None:
    runs = pa.chunked_array([["a"] * 3 + ["b"] * 4 + ["c"] * 2 + ["d"] * 11])
    # a+b fit in 8, c would overflow them; c alone, then d split at the limit.
    assert row_groups(runs, 8) == [(0, 7), (7, 2), (9, 8), (17, 3)]
    assert row_groups(pa.chunked_array([["a"] * 5]), 8) == [(0, 5)]


def test_a_reader_keeps_up_with_an_object_a_replay_rewrote(archive: Archive) -> None:
    writer, reader = archive.writer(), archive.reader()
    writer.write_readings(Span(0, 0, 119), batch(T0, 60))
    assert len(reader.readings(PATIENT, T0, T0 + HOUR)) == 60
    # The same batch again, as after a crash: same readings, but a fresh data key.
    writer.write_readings(Span(0, 0, 119), batch(T0, 60))
    assert len(reader.readings(PATIENT, T0, T0 + HOUR)) == 60
