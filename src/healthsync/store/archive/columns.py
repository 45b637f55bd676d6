"""Readings as Arrow tables: the identified archive's schema, and back to points.

One row per reading, one column per vital (null where the reading lacks it):
six narrow columns compress far better than one row per vital. Rows are
sorted by patient, then time, so each row group covers few patients and its
statistics let a one-patient query skip the rest.

``reading_id`` is usually a hash of the device id and its sequence number or
timestamp (:func:`healthsync.domain.readings.reading_id_for`); storing those
twelve random bytes would cost more than all six vitals, so the column holds
an id only where it cannot be derived, and :func:`to_points` derives the rest.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from healthsync.domain.readings import PATIENT_FIELDS, VITALS, Reading, reading_id_for

TS = pa.timestamp("ms", tz="UTC")
VITAL_NAMES = tuple(VITALS)

SCHEMA = pa.schema(
    [
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("seq", pa.int64()),
        pa.field("reading_id", pa.string()),
        # When ingest accepted it, relative to `ts`: small numbers that compress well.
        pa.field("received_delay_ms", pa.int64(), nullable=False),
        *(pa.field(name, pa.float64()) for name in VITAL_NAMES),
        # Vitals this version does not know, as JSON: archived rather than dropped.
        pa.field("other_vitals", pa.string()),
        pa.field("on_oxygen", pa.bool_()),
        pa.field("consciousness", pa.string()),
        *(pa.field(name, pa.string()) for name in PATIENT_FIELDS),
    ]
)
SORT_KEYS = [("patient_id", "ascending"), ("ts", "ascending")]
# What a history point is made of (:func:`to_points`): demographics are not read.
HISTORY_COLUMNS = ("ts", "device_id", "seq", "reading_id", *VITAL_NAMES, "other_vitals")


def readings_table(readings: Sequence[Reading]) -> pa.Table:
    """The readings as a table of :data:`SCHEMA`, sorted by patient, then time."""
    # This runs for every archived reading: one plain pass per attribute, and the
    # arithmetic in Arrow, cost a fraction of building each row in Python.
    times = _millis([r.ts for r in readings])
    columns: dict[str, pa.Array | list[Any]] = {
        "patient_id": [r.patient_id for r in readings],
        "ts": times,
        "device_id": [r.device_id for r in readings],
        "seq": [r.seq for r in readings],
        "reading_id": _stored_ids(readings, times),
        "received_delay_ms": pc.subtract(_millis([r.received_at for r in readings]), times),
    }
    vitals = [r.vitals for r in readings]
    columns |= _vital_columns(vitals)
    columns["on_oxygen"] = [r.on_oxygen for r in readings]
    columns["consciousness"] = [r.consciousness for r in readings]
    # Demographics come with few readings: fill them in where they are.
    with_patient = [i for i, r in enumerate(readings) if r.patient]
    for name in PATIENT_FIELDS:
        column: list[str | None] = [None] * len(readings)
        for i in with_patient:
            column[i] = readings[i].patient.get(name)
        columns[name] = column
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    return table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))


_KNOWN = frozenset(VITALS)


def _millis(seconds: list[float]) -> pa.Array:
    """Epoch seconds to whole milliseconds, rounded half to even as Python's round()."""
    scaled = pc.multiply(pa.array(seconds, pa.float64()), 1000.0)
    return pc.cast(pc.round(scaled, round_mode="half_to_even"), pa.int64())


def _stored_ids(readings: Sequence[Reading], times: pa.Array) -> list[str | None]:
    """Each reading's id where it is not the one ingest derives, else None."""
    # Only readings without a sequence number derive their id from the time.
    if any(r.seq is None for r in readings):
        millis: list[int] = times.to_pylist()
    else:
        millis = [0] * len(readings)
    return [
        None if reading_id_for(r.device_id, r.seq, ts_ms) == r.reading_id else r.reading_id
        for r, ts_ms in zip(readings, millis, strict=True)
    ]


def _vital_columns(vitals: list[dict[str, float]]) -> dict[str, list[Any]]:
    """One column per known vital, and ``other_vitals``."""
    columns: dict[str, list[Any]] = {}
    complete = True
    for name in VITAL_NAMES:
        try:
            # Most devices send every vital: a C-level pass of lookups takes a column.
            columns[name] = list(map(operator.itemgetter(name), vitals))
        except KeyError:
            columns[name] = [v.get(name) for v in vitals]
            complete = False
    if complete and max(map(len, vitals), default=0) == len(VITAL_NAMES):
        columns["other_vitals"] = [None] * len(vitals)  # all six and nothing else
    else:
        columns["other_vitals"] = [None if v.keys() <= _KNOWN else _other_vitals(v) for v in vitals]
    return columns


def _other_vitals(vitals: dict[str, float]) -> str:
    return orjson.dumps({k: v for k, v in vitals.items() if k not in _KNOWN}).decode()


def hour_of(table: pa.Table) -> pa.Array:
    """Each row's hour of measurement, in hours since the epoch."""
    millis = pc.cast(table["ts"], pa.int64())
    return pc.divide(millis, 3_600_000)


def to_points(table: pa.Table, vital: str | None = None) -> list[dict[str, Any]]:
    """Rows as the API's history points: ``{ts, reading_id, device_id, vitals}``, in row order."""
    names = list(VITAL_NAMES) if vital is None else [vital] if vital in VITALS else []
    data = table.select(["device_id", "seq", "reading_id", "other_vitals", *names]).to_pydict()
    millis = pc.cast(table["ts"], pa.int64()).to_pylist()
    points: list[dict[str, Any]] = []
    for i, ts_ms in enumerate(millis):
        vitals = {name: data[name][i] for name in names if data[name][i] is not None}
        other = data["other_vitals"][i]
        if other is not None:
            extra: dict[str, float] = orjson.loads(other)
            vitals |= extra if vital is None else {k: v for k, v in extra.items() if k == vital}
        if not vitals:
            continue
        device = data["device_id"][i]
        reading_id = data["reading_id"][i] or reading_id_for(device, data["seq"][i], ts_ms)
        points.append(
            {"ts": ts_ms / 1000, "reading_id": reading_id, "device_id": device, "vitals": vitals}
        )
    return points
