"""Objects in, de-identified objects out: Parquet, JSON lines and CSV.

What the S3 Object Lambda (:mod:`healthsync.aws.object_lambda`) does to an
object's bytes. Each format is read into an Arrow table, brought to the
archive's column types, stripped by the archive's own
:class:`~healthsync.store.archive.deidentify.Deidentifier`, and written back
in the format it came in. So an object served here and the archiver's
research set agree row for row: same safe columns, same pseudonyms, same
time shifts.

Before de-identification the columns are made to mean what the archive's do:

- ``patient_id`` and ``device_id`` are text (a CSV of numeric ids would
  otherwise read as integers), and so is ``birth_date``;
- time columns (``ts``, ``opened_at``, ``resolved_at``, ``updated_at``) become
  UTC timestamps in milliseconds: Parquet and CSV timestamps as they are, ISO
  8601 text (without a zone it is taken as UTC), and numbers as epoch seconds,
  the unit of the wire protocol and the API;
- a JSON line in the shape of a canonical reading (the vitals topic's value)
  has its ``vitals`` and ``patient`` objects spread into columns, so its
  vitals survive and its demographics are handled like the archive's.

Anything that cannot be read that way raises :class:`UnreadableObjectError`,
whose message names the format only: the bytes may hold PHI, so no part of
them, nor a parser's message quoting them, goes into the error.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from healthsync.errors import HealthSyncError
from healthsync.store.archive.columns import TS
from healthsync.store.archive.deidentify import TIME_COLUMNS, Deidentifier

PARQUET = "parquet"
JSON_LINES = "jsonl"
CSV = "csv"
CONTENT_TYPES = {
    PARQUET: "application/vnd.apache.parquet",
    JSON_LINES: "application/x-ndjson",
    CSV: "text/csv",
}
_SUFFIXES = {
    ".parquet": PARQUET,
    ".jsonl": JSON_LINES,
    ".ndjson": JSON_LINES,
    ".csv": CSV,
}
_MEDIA_TYPES = {
    "application/vnd.apache.parquet": PARQUET,
    "application/x-parquet": PARQUET,
    "application/x-ndjson": JSON_LINES,
    "application/jsonl": JSON_LINES,
    "application/jsonlines": JSON_LINES,
    "text/csv": CSV,
}
_TEXT_COLUMNS = ("patient_id", "device_id", "birth_date")
# Objects of a canonical reading (Reading.to_json) spread into columns.
_NESTED = ("vitals", "patient")
# An encrypted footer ends a Parquet file with this magic instead of PAR1.
ENCRYPTED_FOOTER_MAGIC = b"PARE"
# What a malformed object raises (orjson's and UTF-8 decoding errors are ValueErrors).
_ERRORS = (pa.ArrowException, ValueError)


class UnreadableObjectError(HealthSyncError):
    """The object is not valid in its format; the message names the format, never content."""

    def __init__(self, fmt: str) -> None:
        super().__init__(f"the object is not readable as {fmt}")
        self.format = fmt


def format_of(key: str, content_type: str | None) -> str | None:
    """The object's format by its key's suffix, else by its content type; None if neither."""
    name = key.rsplit("/", 1)[-1].lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return _MEDIA_TYPES.get(media)


def is_encrypted_parquet(data: bytes) -> bool:
    """Parquet Modular Encryption with an encrypted footer, as the identified archive has."""
    return data[:4] == ENCRYPTED_FOOTER_MAGIC and data[-4:] == ENCRYPTED_FOOTER_MAGIC


def read(data: bytes, fmt: str, decryption_properties: Any = None) -> pa.Table:
    """The object as a table; `decryption_properties` open an encrypted Parquet file."""
    try:
        if fmt == PARQUET:
            return pq.read_table(pa.BufferReader(data), decryption_properties=decryption_properties)
        if fmt == JSON_LINES:
            return _read_json_lines(data)
        return _read_csv(data)
    except _ERRORS:
        raise UnreadableObjectError(fmt) from None


def deidentify(table: pa.Table, fmt: str, deidentifier: Deidentifier) -> bytes:
    """The table de-identified as the archive's research set is, written as `fmt`."""
    try:
        result = deidentifier.table(prepare(table))
    except _ERRORS:
        raise UnreadableObjectError(fmt) from None
    return _WRITERS[fmt](result)


def prepare(table: pa.Table) -> pa.Table:
    """The table with the column types the archive's de-identification expects."""
    for name in table.column_names:
        column = table[name]
        if name in _TEXT_COLUMNS and not pa.types.is_string(column.type):
            column = pc.cast(column, pa.string())
        elif name in TIME_COLUMNS:
            column = _as_utc_ms(column)
        else:
            continue
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _as_utc_ms(column: pa.ChunkedArray) -> pa.ChunkedArray:
    kind = column.type
    if pa.types.is_timestamp(kind):
        # A naive timestamp is taken as UTC; an aware one keeps its instant.
        return pc.cast(column, TS, safe=False)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        millis = pc.round(pc.multiply(pc.cast(column, pa.float64()), 1000.0))
        return pc.cast(pc.cast(millis, pa.int64()), TS)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return pc.cast(column, TS)
        except pa.ArrowInvalid:
            return pc.cast(pc.cast(column, pa.timestamp("ms")), TS)
    if pa.types.is_null(kind):
        return pc.cast(column, TS)
    raise ValueError("a time column of an unknown type")


def _read_json_lines(data: bytes) -> pa.Table:
    rows: list[dict[str, Any]] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        row = orjson.loads(line)
        if not isinstance(row, dict):
            raise ValueError("a JSON line is not an object")
        for name in _NESTED:
            nested = row.get(name)
            if isinstance(nested, dict):
                del row[name]
                row = {**nested, **row}
        rows.append(row)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    # Every key of every line: pa.Table.from_pylist would take the first line's only.
    return pa.table({name: pa.array([row.get(name) for row in rows]) for name in names})


def _write_json_lines(table: pa.Table) -> bytes:
    out = io.BytesIO()
    for row in table.to_pylist():
        out.write(orjson.dumps(row, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE))
    return out.getvalue()


def _read_csv(data: bytes) -> pa.Table:
    types = dict.fromkeys(_TEXT_COLUMNS, pa.string())
    return pacsv.read_csv(
        pa.BufferReader(data), convert_options=pacsv.ConvertOptions(column_types=types)
    )


def _write_csv(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    return bytes(sink.getvalue())


def _write_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue())


_WRITERS: dict[str, Callable[[pa.Table], bytes]] = {
    PARQUET: _write_parquet,
    JSON_LINES: _write_json_lines,
    CSV: _write_csv,
}
