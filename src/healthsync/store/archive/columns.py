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


def readings_table(readings: Sequence[Reading]) -> pa.Table:
    """The readings as a table of :data:`SCHEMA`, sorted by patient, then time."""
    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    patients, times, devices = columns["patient_id"], columns["ts"], columns["device_id"]
    seqs, ids, delays = columns["seq"], columns["reading_id"], columns["received_delay_ms"]
    vital_columns = [columns[name] for name in VITAL_NAMES]
    for reading in readings:
        ts_ms = round(reading.ts * 1000)
        patients.append(reading.patient_id)
        times.append(ts_ms)
        devices.append(reading.device_id)
        seqs.append(reading.seq)
        derived = reading_id_for(reading.device_id, reading.seq, ts_ms)
        ids.append(None if derived == reading.reading_id else reading.reading_id)
        delays.append(round(reading.received_at * 1000) - ts_ms)
        vitals = reading.vitals
        for name, column in zip(VITAL_NAMES, vital_columns, strict=True):
            column.append(vitals.get(name))
        other = {k: v for k, v in vitals.items() if k not in VITALS}
        columns["other_vitals"].append(orjson.dumps(other).decode() if other else None)
        columns["on_oxygen"].append(reading.on_oxygen)
        columns["consciousness"].append(reading.consciousness)
        patient = reading.patient
        for name in PATIENT_FIELDS:
            columns[name].append(patient.get(name))
    table = pa.Table.from_pydict(columns, schema=SCHEMA)
    return table.take(pc.sort_indices(table, sort_keys=SORT_KEYS))


def hour_of(table: pa.Table) -> pa.Array:
    """Each row's hour of measurement, in hours since the epoch."""
    millis = pc.cast(table["ts"], pa.int64())
    return pc.divide(millis, 3_600_000)


def to_points(table: pa.Table, vital: str | None = None) -> list[dict[str, Any]]:
    """Rows as the API's history points: ``{ts, reading_id, device_id, vitals}``, in row order."""
    names = list(VITAL_NAMES) if vital is None else [vital] if vital in VITALS else []
    data = table.select(
        ["ts", "device_id", "seq", "reading_id", "other_vitals", *names]
    ).to_pydict()
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
