"""Compaction: one directory's objects of a Kafka partition merged into one, verified first.

The archiver writes one object per partition, roll and hour: with the
default 60-second roll an hour holds 60 objects per partition, and a query
opens every one. :class:`Compactor` merges them, per directory (an hour of
the identified set, a year of the research set), partition and incarnation
of the topic (:mod:`.layout`: a topic created again starts its offsets over,
so its objects are merged apart from the earlier ones), into one object named
after the offsets it covers (:func:`.coverage.compacted_name`),
in four steps, each safe to interrupt:

1. read the partition's visible objects of the directory (decrypting the
   identified ones) and merge their rows, sorted by patient then time;
2. write the merged object (whole or not at all), with row groups of whole
   patients' runs and statistics, encrypted like its inputs (a fresh data
   key wrapped by the keyring or KMS); from here readers take it instead of
   the inputs it covers (:mod:`.coverage`);
3. read it back and compare it with the inputs: the same number of rows and
   the same multiset of rows, every column (so every reading id) included;
   if it differs, delete it again (it covers the inputs) and refuse;
4. only then delete the inputs, and any covered object an archiver replay
   wrote again since.

A rerun after an interruption finds either the inputs alone (and starts
over: the merged object gets the same key) or the merged object covering
whatever inputs remain (and deletes them). A directory where two visible
objects of a partition overlap in offsets (a replay that cut its batch
elsewhere) is left as it is and reported: merging it would count readings twice.
Such a partition, or one whose merged object does not match its inputs, is
refused (:attr:`Directory.refused`); the other partitions are compacted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from healthsync.store.archive import layout
from healthsync.store.archive.coverage import Piece, compacted_name, overlaps, parse, split
from healthsync.store.archive.encryption import ParquetCrypto
from healthsync.store.archive.errors import ArchiveError, ArchiveReadError
from healthsync.store.archive.layout import Span
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.wrapping import open_encrypted
from healthsync.store.archive.writer import ArchiveWriter

# Called after each step that changes the archive: ("written" | "deleted", key).
Checkpoint = Callable[[str, str], None]


class CompactionError(ArchiveError):
    """A directory could not be compacted safely; nothing of it was deleted."""


@dataclass(frozen=True, slots=True)
class Merge:
    """What compaction did with one directory's objects of one partition (and incarnation)."""

    directory: str
    partition: int
    incarnation: str
    inputs: int
    rows: int
    written: str | None
    deleted: int

    def describe(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "partition": self.partition,
            "incarnation": self.incarnation,
            "inputs": self.inputs,
            "rows": self.rows,
            "written": self.written,
            "deleted": self.deleted,
        }


@dataclass
class Directory:
    """The merges of one directory, and how far each partition's objects there reach
    (per partition and incarnation of the topic: :attr:`.coverage.Piece.stream`)."""

    merges: list[Merge] = field(default_factory=list)
    reach: dict[tuple[int, str], int] = field(default_factory=dict)
    # Partitions left as they were, and why (see CompactionError).
    refused: list[str] = field(default_factory=list)

    def add(self, merge: Callable[[], Merge]) -> None:
        try:
            self.merges.append(merge())
        except CompactionError as exc:
            self.refused.append(str(exc))


class Compactor:
    def __init__(
        self,
        store: ObjectStore,
        crypto: ParquetCrypto,
        writer: ArchiveWriter,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.writer = writer
        self.checkpoint = checkpoint or (lambda _step, _key: None)

    def hour(self, dataset: str, hour: int) -> Directory:
        """Compact one hour of the identified set (hours since the epoch).

        A day object (:mod:`.days`) above the hour covers what it merged: those
        objects are not merged again, only deleted.
        """
        directory = layout.hour_prefix(dataset, hour).rstrip("/")
        pieces = self.pieces(f"{directory}/")
        days = self.pieces(f"{layout.day_prefix(dataset, hour)}p")
        visible, covered = (
            [p for p in found if p.directory == directory] for found in split(pieces + days)
        )
        result = Directory()
        for piece in pieces:
            result.reach[piece.stream] = max(piece.span.last, result.reach.get(piece.stream, -1))
        for stream in sorted(result.reach):
            mine = [p for p in visible if p.stream == stream]
            gone = [p for p in covered if p.stream == stream]
            result.add(functools.partial(self.merge, mine, gone, encrypted=True))
        return result

    def research(self, dataset: str, year: int, reach: dict[tuple[int, str], int]) -> Directory:
        """Compact a year of the research set, up to each stream's offset in `reach`.

        The research set has no hours (its times are shifted), so the objects
        a run merges there are those of the batches its hours reach: per
        partition and incarnation, the visible objects up to the last offset
        the identified hours of the run hold, with any merged object that
        range contains.
        """
        prefix = f"{layout.DEIDENTIFIED}/{dataset}/year={year:04d}/"
        visible, covered = split(self.pieces(prefix))
        result = Directory()
        for stream, last in sorted(reach.items()):
            plain = [
                p for p in visible if p.stream == stream and not p.compacted and p.span.last <= last
            ]
            gone = [p for p in covered if p.stream == stream]
            if not plain and not gone:
                continue
            low = min((p.span.first for p in plain), default=0)
            high = max((p.span.last for p in plain), default=-1)
            merged = [
                p
                for p in visible
                if p.stream == stream
                and p.compacted
                and low <= p.span.first
                and p.span.last <= high
            ]
            result.add(functools.partial(self.merge, plain + merged, gone, encrypted=False))
        return result

    def pieces(self, prefix: str) -> list[Piece]:
        return [piece for key in self.store.list(prefix) if (piece := parse(key)) is not None]

    def merge(
        self,
        visible: list[Piece],
        covered: list[Piece],
        encrypted: bool,
        directory: str | None = None,
        row_group_rows: int | None = None,
    ) -> Merge:
        """Merge `visible` into one object in `directory` (theirs by default), with row
        groups of up to `row_group_rows` (the writer's by default), verify it, then delete
        them and `covered`."""
        first = (visible or covered)[0]
        directory = directory or first.directory
        partition, incarnation = first.stream
        clash = overlaps(visible)
        if clash:
            left, right = clash[0]
            raise CompactionError(
                f"{self.store.location(directory)}: objects {left.span.name} and "
                f"{right.span.name} overlap in offsets; left as they are"
            )
        written = None
        rows = 0
        doomed = list(covered)
        if len(visible) > 1:
            patient = "patient_id" if encrypted else "patient"
            tables = [self._read(p.key, encrypted) for p in visible]
            merged = pa.concat_tables(tables, promote_options="default")
            merged = merged.take(
                pc.sort_indices(merged, sort_keys=[(patient, "ascending"), ("ts", "ascending")])
            )
            low, high = min(p.span.first for p in visible), max(p.span.last for p in visible)
            span = Span(partition, low, high, incarnation)
            written = f"{directory}/{compacted_name(span)}"
            data = self.writer.encode(merged, patient, encrypted, row_group_rows)
            self.store.put(written, data)
            try:
                rows = self._verify(written, encrypted, merged)
            except CompactionError:
                # It covers the inputs: left in place, readers would take it instead.
                self.store.delete(written)
                raise
            self.checkpoint("written", written)
            doomed += [p for p in visible if p.key != written]
        for piece in doomed:
            self.store.delete(piece.key)
            self.checkpoint("deleted", piece.key)
        return Merge(directory, partition, incarnation, len(visible), rows, written, len(doomed))

    def _verify(self, key: str, encrypted: bool, merged: pa.Table) -> int:
        """The merged object read back must hold exactly the inputs' rows (`merged`)."""
        table = self._read(key, encrypted)
        if table.num_rows != merged.num_rows or not same_rows(table, merged):
            raise CompactionError(
                f"{self.store.location(key)} holds {table.num_rows} rows where its inputs hold "
                f"{merged.num_rows}, or other rows: inputs kept"
            )
        found: int = table.num_rows
        return found

    def _read(self, key: str, encrypted: bool) -> pa.Table:
        try:
            source = open_encrypted(self.store, key) if encrypted else self.store.open(key)
            file = pq.ParquetFile(
                source,
                decryption_properties=self.crypto.decryption_properties() if encrypted else None,
            )
            return file.read(use_threads=False)
        except ArchiveReadError as exc:
            raise CompactionError(f"{exc}; left as it is") from exc
        except ArchiveError:
            raise
        except Exception as exc:
            raise CompactionError(f"cannot read {self.store.location(key)}: {exc}") from exc


def same_rows(left: pa.Table, right: pa.Table) -> bool:
    """Whether two tables hold the same multiset of rows (every column), whatever their order.

    Both are put in one canonical order, sorted by every column, and compared
    column by column: equal rows sort next to each other, so the orders agree
    exactly when the multisets do.
    """
    names = sorted(left.column_names)
    if names != sorted(right.column_names) or left.num_rows != right.num_rows:
        return False
    try:
        left, right = left.select(names), right.select(names).cast(left.select(names).schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False  # a column of another type: not the same rows
    keys = [(name, "ascending") for name in names]
    ordered = [table.take(pc.sort_indices(table, sort_keys=keys)) for table in (left, right)]
    return bool(ordered[0].equals(ordered[1]))
