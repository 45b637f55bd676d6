"""One patient's archived readings for a period, reading as little as it can.

A query lists only the days its period touches and keeps the hour
directories inside it; of each object it reads the footer (decrypted with
the keyring or KMS) and then only the row groups whose statistics can hold
the patient and the period. Footers are kept in memory by key: objects are
immutable (a replay rewrites identical content), so a repeated query opens
no footer again and skips objects without the patient unread. Where
compaction merged an hour's objects, or a day's (the day object, in the
day's directory above its hours), the merged object stands for the inputs
it covers, whether or not they are deleted yet (:mod:`.coverage`).

An object that cannot be opened (a retired or foreign key, a corrupt or
truncated file) raises :class:`ArchiveReadError` naming it: a query never
returns a silently shorter answer.
"""

from __future__ import annotations

import functools
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from threading import Lock
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from healthsync.store.archive import coverage, layout
from healthsync.store.archive.alerts import ALERT_SCHEMA
from healthsync.store.archive.columns import HISTORY_COLUMNS, SCHEMA, TS, to_points
from healthsync.store.archive.encryption import ParquetCrypto
from healthsync.store.archive.errors import ArchiveReadError
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.wrapping import open_encrypted
from healthsync.store.archive.writer import GROUP_PATIENTS

_HOUR_DIR = re.compile(r"/hour=(\d\d)/")
_FOOTERS_KEPT = 50_000


@dataclass(frozen=True, slots=True)
class _Footer:
    metadata: pq.FileMetaData
    # Per row group: (first patient, last patient, first ts ms, last ts ms).
    ranges: tuple[tuple[str, str, int, int], ...]
    # The groups each patient is in, where the footer tells exactly: its list of
    # patients, or statistics of a group of one patient. Other groups are `loose`.
    exact: dict[str, tuple[int, ...]]
    loose: tuple[int, ...]

    @classmethod
    def of(
        cls,
        metadata: pq.FileMetaData,
        ranges: list[tuple[str, str, int, int]],
        members: tuple[frozenset[str], ...] | None,
    ) -> _Footer:
        exact: dict[str, list[int]] = {}
        loose: list[int] = []
        for index, (low, high, _first, _last) in enumerate(ranges):
            patients = members[index] if members is not None else {low} if low == high else None
            if patients is None:
                loose.append(index)
            for patient in patients or ():
                exact.setdefault(patient, []).append(index)
        return cls(metadata, tuple(ranges), {p: tuple(g) for p, g in exact.items()}, tuple(loose))

    def groups(self, patient_id: str, since_ms: int, until_ms: int) -> list[int]:
        """The row groups that may hold the patient in the period, in file order.

        Called for every remembered object of a period on every query: a lookup,
        not a scan of the groups."""
        ranges = self.ranges
        candidates = self.exact.get(patient_id, ())
        if self.loose:
            loose = [i for i in self.loose if ranges[i][0] <= patient_id <= ranges[i][1]]
            candidates = tuple(sorted((*candidates, *loose)))
        return [i for i in candidates if ranges[i][2] <= until_ms and ranges[i][3] >= since_ms]

    def only(self, groups: list[int], patient_id: str, since_ms: int, until_ms: int) -> bool:
        """True if those groups hold nothing but the patient's rows inside the period."""
        return all(
            low == high == patient_id and first >= since_ms and last <= until_ms
            for low, high, first, last in (self.ranges[i] for i in groups)
        )


class ArchiveReader:
    def __init__(self, store: ObjectStore, crypto: ParquetCrypto, threads: int = 0) -> None:
        self.store = store
        self.crypto = crypto
        self._pool = ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1))
        self._footers: OrderedDict[str, _Footer] = OrderedDict()
        self._lock = Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def objects(self, dataset: str, since: float, until: float) -> list[str]:
        """The identified objects whose hour lies in the period, by listing its days only,
        and the day objects of those days.

        Objects a compacted object covers are left out (:mod:`.coverage`).
        """
        hours = layout.hours_between(since, until)
        # Days are 24 whole hours since the epoch: a day's first hour, plus hour=HH, is the hour.
        days = {layout.day_prefix(dataset, hour): hour - hour % 24 for hour in hours}
        keys: list[str] = []
        for day, first_hour in days.items():
            for key in self.store.list(day):
                match = _HOUR_DIR.search(key)
                if match is None:
                    if "/" not in key[len(day) :]:
                        keys.append(key)  # a day object: the day's rows of its partition
                elif first_hour + int(match.group(1)) in hours:
                    keys.append(key)
        return coverage.visible_keys(keys)

    def readings_table(
        self,
        patient_id: str,
        since: float,
        until: float,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The patient's rows with `since` <= ts <= `until` (epoch seconds), oldest first."""
        return self._table(layout.READINGS, SCHEMA, patient_id, (since, until), columns)

    def alerts_table(self, patient_id: str, since: float, until: float) -> pa.Table:
        """The patient's alert events (:data:`ALERT_SCHEMA`) in the period, oldest first."""
        return self._table(layout.ALERTS, ALERT_SCHEMA, patient_id, (since, until), None)

    def _table(
        self,
        dataset: str,
        schema: pa.Schema,
        patient_id: str,
        period: tuple[float, float],
        columns: Sequence[str] | None,
    ) -> pa.Table:
        since, until = period
        span = round(since * 1000), round(until * 1000)
        wanted = list(dict.fromkeys(["patient_id", "ts", *(columns or schema.names)]))
        read = functools.partial(self._read, patient_id=patient_id, span=span, columns=wanted)
        keys = self.objects(dataset, since, until)
        try:
            parts = [t for t in self._pool.map(read, self._may_hold(keys, patient_id, span)) if t]
        except ArchiveReadError:
            # A compaction may have merged and deleted an object since the listing:
            # list again, once. Anything else fails as before.
            again = self.objects(dataset, since, until)
            if set(keys) <= set(again):
                raise
            parts = [t for t in self._pool.map(read, self._may_hold(again, patient_id, span)) if t]
        if not parts:
            return schema.empty_table().select(wanted)
        # Objects in time order (a day's late hour objects list before its day object).
        parts.sort(key=_first_ts)
        table = pa.concat_tables(parts)
        if _ascending(table["ts"]):
            return table  # hours come in order, and each object's rows by time: the usual case
        return table.take(pc.sort_indices(table, sort_keys=[("ts", "ascending")]))

    def _may_hold(self, keys: list[str], patient_id: str, span: tuple[int, int]) -> list[str]:
        """Of these keys, those whose remembered footer (if any) may hold the patient then:
        most of a period's objects are other partitions', ruled out without a thread. (A
        rewrite after a replay holds the same readings: a footer rules it out as well.)"""
        footers = self._footers
        return [
            key
            for key in keys
            if (footer := footers.get(key)) is None or footer.groups(patient_id, *span)
        ]

    def readings(
        self, patient_id: str, since: float, until: float, vital: str | None = None
    ) -> list[dict[str, Any]]:
        """As :meth:`readings_table`, as the API's history points."""
        return to_points(self.readings_table(patient_id, since, until, HISTORY_COLUMNS), vital)

    def _read(
        self, key: str, patient_id: str, span: tuple[int, int], columns: list[str]
    ) -> pa.Table | None:
        since_ms, until_ms = span
        footer = self._footers.get(key)
        try:
            found = self._load(key, footer, patient_id, span, columns)
        except ArchiveReadError:
            if footer is None:
                raise
            # A replay rewrote the object: same readings, but a fresh data key, so the
            # remembered footer no longer fits. Once more with the object's own footer.
            with self._lock:
                self._footers.pop(key, None)
            found = self._load(key, None, patient_id, span, columns)
        if found is None:
            return None
        table, footer, groups = found
        if footer.only(groups, patient_id, since_ms, until_ms):
            return table  # row groups cut at patients: most need no filtering
        since_ts = pa.scalar(since_ms, pa.int64()).cast(TS)
        until_ts = pa.scalar(until_ms, pa.int64()).cast(TS)
        mask = pc.and_(
            pc.equal(table["patient_id"], patient_id),
            pc.and_(pc.greater_equal(table["ts"], since_ts), pc.less_equal(table["ts"], until_ts)),
        )
        return table.filter(mask)

    def _load(
        self,
        key: str,
        footer: _Footer | None,
        patient_id: str,
        span: tuple[int, int],
        columns: list[str],
    ) -> tuple[pa.Table, _Footer, list[int]] | None:
        """The row groups of one object that may hold the patient in the period."""
        try:
            file = pq.ParquetFile(
                open_encrypted(self.store, key),
                metadata=footer.metadata if footer else None,
                decryption_properties=self.crypto.decryption_properties(),
                # The file is in memory or mapped: pre-buffering would only add a
                # round trip through Arrow's I/O threads for every column chunk.
                pre_buffer=False,
            )
            if footer is None:
                footer = self._remember(key, file.metadata)
            groups = footer.groups(patient_id, *span)
            if not groups:
                return None
            table = file.read_row_groups(groups, columns=columns, use_threads=False)
            # The footer's metadata names every patient of the object: it stays here.
            return table.replace_schema_metadata(None), footer, groups
        except ArchiveReadError:
            raise
        except Exception as exc:
            raise ArchiveReadError(self.store.location(key), str(exc)) from exc

    def _remember(self, key: str, metadata: pq.FileMetaData) -> _Footer:
        names = metadata.schema.names
        patient, ts = names.index("patient_id"), names.index("ts")
        ranges = []
        for index in range(metadata.num_row_groups):
            group = metadata.row_group(index)
            patients, times = group.column(patient).statistics, group.column(ts).statistics
            if patients is None or times is None or not patients.has_min_max:
                # No statistics: the group could hold anyone at any time.
                ranges.append(("", "\U0010ffff", -(2**63), 2**63 - 1))
                continue
            ranges.append((patients.min, patients.max, _millis(times.min), _millis(times.max)))
        footer = _Footer.of(metadata, ranges, _members(metadata))
        with self._lock:
            self._footers[key] = footer
            if len(self._footers) > _FOOTERS_KEPT:
                self._footers.popitem(last=False)
        return footer


def _members(metadata: pq.FileMetaData) -> tuple[frozenset[str], ...] | None:
    """The writer's list of each row group's patients, if it is there and fits."""
    listed = (metadata.metadata or {}).get(GROUP_PATIENTS)
    if listed is None:
        return None  # written before the list was
    members = tuple(frozenset(group) for group in orjson.loads(listed))
    return members if len(members) == metadata.num_row_groups else None


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    return int(value)


def _first_ts(table: pa.Table) -> int:
    first: int = table["ts"][0].value
    return first


def _ascending(times: pa.ChunkedArray) -> bool:
    """Whether the times never step back (equal neighbours keep their order, as a stable
    sort would)."""
    flat = times.combine_chunks()
    if len(flat) < 2:
        return True
    return bool(pc.all(pc.less_equal(flat[:-1], flat[1:])).as_py())
