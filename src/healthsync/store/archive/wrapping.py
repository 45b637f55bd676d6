"""Which master key wraps an archived object's data key, read from the object's last bytes.

An identified object is Parquet with an encrypted footer (:mod:`.encryption`).
It ends with::

    FileCryptoMetaData | encrypted footer | length (4 bytes, little-endian) | "PARE"

``FileCryptoMetaData`` is plain Thrift (compact protocol): the algorithm and
the footer key's metadata, which with internal key material is a JSON
document naming the master key (``masterKeyID``: a keyring key id, or the KMS
key) beside the wrapped data key. With uniform encryption that one data key
encrypts every column as well. So the key an object depends on is learnt from
its tail alone, with nothing unwrapped or decrypted: one short read per object
(two when the footer is longer than :data:`TAIL_BYTES`).

A plain Parquet object (``PAR1``: the de-identified set) depends on no key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from healthsync.store.archive.errors import ArchiveReadError
from healthsync.store.archive.objects import ObjectStore

ENCRYPTED_MAGIC = b"PARE"
PLAIN_MAGIC = b"PAR1"
# Enough for the footer of an object of a few thousand row groups.
TAIL_BYTES = 64 * 1024


def open_encrypted(store: ObjectStore, key: str) -> pa.NativeFile:
    """The object opened for reading, refused unless its footer is encrypted: every
    identified object is, so a plain Parquet file among them was not written here, and
    would otherwise be read as history (the decryption settings open plain files too)."""
    source = store.open(key)
    size = source.size()
    if size < 8 or source.read_at(4, size - 4) != ENCRYPTED_MAGIC:
        raise ArchiveReadError(store.location(key), "not an encrypted archive object")
    return source


def wrapping_key(store: ObjectStore, key: str) -> str | None:
    """The master key id of an encrypted object's footer key; None for a plain object."""
    tail = store.read_tail(key, TAIL_BYTES)
    magic = tail[-4:]
    if magic == PLAIN_MAGIC:
        return None
    if magic != ENCRYPTED_MAGIC or len(tail) < 8:
        raise ArchiveReadError(store.location(key), "not a Parquet file")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 8 > len(tail):
        tail = store.read_tail(key, length + 8)
        if length + 8 > len(tail):
            raise ArchiveReadError(store.location(key), "truncated: its footer is cut off")
    try:
        metadata = footer_key_metadata(tail[len(tail) - 8 - length : -8])
        master: str = json.loads(metadata)["masterKeyID"]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ArchiveReadError(store.location(key), f"unreadable key metadata ({exc})") from None
    return master


def footer_key_metadata(data: bytes) -> bytes:
    """Field 2 (``key_metadata``) of a compact-Thrift ``FileCryptoMetaData`` at `data`'s start."""
    reader = _Compact(data)
    for field_id, kind in reader.fields():
        if field_id == 2 and kind == _BINARY:
            return reader.binary()
        reader.skip(kind)
    raise ValueError("the footer names no key")


_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = range(1, 9)
_LIST, _SET, _MAP, _STRUCT = range(9, 13)
_FIXED = {_BYTE: 1, _DOUBLE: 8}


class _Compact:
    """Just enough of Thrift's compact protocol to walk a struct and skip what it holds."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        result = shift = 0
        while True:
            value = self.byte()
            result |= (value & 0x7F) << shift
            if not value & 0x80:
                return result
            shift += 7

    def binary(self) -> bytes:
        size = self.varint()
        value = self.data[self.pos : self.pos + size]
        if len(value) != size:
            raise ValueError("truncated binary field")
        self.pos += size
        return value

    def fields(self) -> Iterator[tuple[int, int]]:
        """(field id, type) of each field of a struct, up to its stop byte; the caller
        reads or skips each field's value before the next is asked for."""
        last = 0
        while (header := self.byte()) != 0:
            delta = header >> 4
            if delta:
                last += delta
            else:
                raw = self.varint()
                last = (raw >> 1) ^ -(raw & 1)  # zigzag
            yield last, header & 0x0F

    def skip(self, kind: int, in_collection: bool = False) -> None:
        if kind in (_TRUE, _FALSE):
            self.pos += 1 if in_collection else 0  # a field's bool is in its header
        elif kind in _FIXED:
            self.pos += _FIXED[kind]
        elif kind in (_I16, _I32, _I64):
            self.varint()
        elif kind == _BINARY:
            self.binary()
        elif kind == _STRUCT:
            for _id, inner in self.fields():
                self.skip(inner)
        else:
            self._skip_collection(kind)

    def _skip_collection(self, kind: int) -> None:
        if kind in (_LIST, _SET):
            header = self.byte()
            size = header >> 4 if header >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(header & 0x0F, in_collection=True)
        elif kind == _MAP:
            size = self.varint()
            types = self.byte() if size else 0
            for _ in range(size):
                self.skip(types >> 4, in_collection=True)
                self.skip(types & 0x0F, in_collection=True)
        else:
            raise ValueError(f"unknown Thrift type {kind}")
