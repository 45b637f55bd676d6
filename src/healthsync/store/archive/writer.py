"""One batch of a partition's readings -> the archive's objects.

A batch is what the archiver buffered for one Kafka partition between two
rolls, with the offsets it covers (:class:`Span`). It becomes:

1. one encrypted Parquet object per hour of measurement under ``identified/``,
   the hour of the batch's first reading written first: an archiver that
   restarts at the batch's first offset finds that object (``find_span``) and
   cuts its replay where the crashed run did, so the replay rewrites the same
   keys instead of adding overlapping ones;
2. one plain Parquet object under ``deidentified/`` (Safe Harbor).

``write`` returns once every object is durable; only then may the caller
commit the offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from healthsync.domain.alerts import Alert
from healthsync.domain.readings import Reading
from healthsync.store.archive import coverage, layout
from healthsync.store.archive.alerts import alerts_table
from healthsync.store.archive.columns import hour_of, readings_table
from healthsync.store.archive.deidentify import Deidentifier
from healthsync.store.archive.encryption import ParquetCrypto
from healthsync.store.archive.layout import Span
from healthsync.store.archive.objects import ObjectStore

# Pages here are small (a row group is a few patients' hour) and mostly dictionary or
# delta encoded already: zstd saved under 1% of bytes, while setting up a zstd context
# for every page cost a fifth of the writer's time and a third of a reader's. LZ4 (raw
# blocks) compresses these pages as well at a fraction of the cost; DuckDB, pandas
# (pyarrow) and Athena read it.
COMPRESSION = "lz4_raw"
# Sorted by patient then time, these climb in small steps: delta encoding stores the
# steps in a few bits where a dictionary of mostly unique values would not help.
DELTA_COLUMNS = frozenset({"ts", "seq", "received_delay_ms"})
# Footer key: for each row group, the patients it holds (a JSON list of lists).
GROUP_PATIENTS = b"healthsync.row_group_patients"


class ArchiveWriter:
    def __init__(
        self,
        store: ObjectStore,
        crypto: ParquetCrypto,
        deidentifier: Deidentifier,
        row_group_rows: int = 1024,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.deidentifier = deidentifier
        self.row_group_rows = row_group_rows

    def write_readings(self, span: Span, readings: Sequence[Reading]) -> list[str]:
        """Archive one batch (readings in offset order); the keys written, once all are durable."""
        if not readings:
            return []
        return self.write_table(
            layout.READINGS, span, readings_table(readings), _hour(readings[0].ts)
        )

    def write_alerts(self, span: Span, events: Sequence[tuple[str, Alert]]) -> list[str]:
        """Archive one batch of alert events (in offset order), like :meth:`write_readings`."""
        if not events:
            return []
        first_hour = _hour(events[0][1].updated_at)
        return self.write_table(layout.ALERTS, span, alerts_table(events), first_hour)

    def write_table(self, dataset: str, span: Span, table: pa.Table, first_hour: int) -> list[str]:
        """Archive a table of `dataset`; `first_hour` is the hour of the batch's first row."""
        hours = hour_of(table)
        written: list[str] = []
        others = sorted(set(pc.unique(hours).to_pylist()) - {first_hour})
        for hour in [first_hour, *others]:
            part = table.filter(pc.equal(hours, hour))
            key = layout.identified_key(dataset, hour, span)
            self.store.put(key, self.encode(part, "patient_id", encrypted=True))
            written.append(key)
        research = self.deidentifier.table(table)
        year = self.deidentifier.research_year(first_hour * layout.HOUR_S)
        key = layout.deidentified_key(dataset, year, span)
        self.store.put(key, self.encode(research, "patient", encrypted=False))
        written.append(key)
        return written

    def encode(
        self, table: pa.Table, patient: str, encrypted: bool, row_group_rows: int | None = None
    ) -> bytes:
        """A table sorted by `patient` then time as one archive object's bytes: row groups
        of whole patients' runs (up to `row_group_rows`, the writer's by default) with
        statistics, LZ4, and encrypted when `encrypted`."""
        sink = pa.BufferOutputStream()
        delta = [name for name in table.column_names if name in DELTA_COLUMNS]
        groups = row_groups(table[patient], row_group_rows or self.row_group_rows)
        schema = table.schema
        if encrypted:
            # Statistics give a group's lowest and highest patient only; the list names
            # exactly who is in it, so a reader skips groups (and other partitions'
            # objects) that merely sort around a patient. In the encrypted footer.
            members = [pc.unique(table[patient].slice(start, n)).to_pylist() for start, n in groups]
            schema = schema.with_metadata({GROUP_PATIENTS: orjson.dumps(members)})
        with pq.ParquetWriter(
            sink,
            schema,
            use_dictionary=[name for name in table.column_names if name not in DELTA_COLUMNS],
            column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
            compression=COMPRESSION,
            write_statistics=True,
            encryption_properties=self.crypto.encryption_properties() if encrypted else None,
        ) as out:
            for start, length in groups:
                out.write_table(table.slice(start, length), row_group_size=length)
        return bytes(sink.getvalue())


def row_groups(patients: pa.ChunkedArray, limit: int) -> list[tuple[int, int]]:
    """(start, length) of each row group: whole patients' runs, packed up to `limit` rows.

    A group ends where a patient's run ends whenever the next run would not
    fit, so a one-patient query reads one or two small groups of an object,
    not a share of everyone's rows; a run longer than `limit` is split.
    """
    groups: list[tuple[int, int]] = []
    start = end = 0
    run_ends = pc.run_end_encode(patients.combine_chunks()).run_ends.to_pylist()
    for run_end in run_ends:
        if run_end - start > limit and end > start:
            groups.append((start, end - start))
            start = end
        while run_end - start > limit:
            groups.append((start, limit))
            start += limit
        end = run_end
    if end > start:
        groups.append((start, end - start))
    return groups


def find_span(
    store: ObjectStore, start: Span, first_ts: float, dataset: str = layout.READINGS
) -> Span | None:
    """The batch a crashed archiver wrote from where `start` starts, if any (see the module doc).

    Only the partition, first offset and incarnation of `start` count: a batch
    of an earlier incarnation of the topic that started at the same offset is
    another batch. A batch that starts before `start` and covers it counts too:
    the archiver commits past messages it cannot archive without writing
    anything, so a restart may begin after the crashed batch's first offset
    (never after its first row). `first_ts` is the time of the batch's first
    row: its hour names the directory the batch's first object went to. If
    compaction has merged that object already (an hour's or a day's), the
    merged object's last offset is the cut: the crashed batch was the
    partition's last one written, so nothing after it is in there.
    """
    partition, first = start.partition, start.first
    hour = _hour(first_ts)
    prefixes = (layout.hour_prefix(dataset, hour), layout.day_prefix(dataset, hour))
    pieces = [
        piece
        for prefix in prefixes
        for key in store.list(f"{prefix}p{partition}-")
        if (piece := coverage.parse(key)) is not None
        and piece.stream == (partition, start.incarnation)
    ]
    spans = [p.span for p in pieces if not p.compacted and p.span.first <= first <= p.span.last]
    if spans:
        return max(spans, key=lambda s: s.last)
    merged = [p.span for p in pieces if p.compacted and p.span.first <= first <= p.span.last]
    if merged:
        return Span(partition, first, max(s.last for s in merged), start.incarnation)
    return None


def _hour(ts: float) -> int:
    """The hour of a time as its row stores it: to the millisecond, rounded as
    :func:`.columns.hour_of` finds it (10:59:59.9996 is 11:00)."""
    return round(ts * 1000) // 3_600_000
