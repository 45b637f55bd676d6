"""Compression of values before they are sealed (sealed bytes do not compress).

Two formats, told apart by their first bytes (JSON starts with neither):

- an LZ4 frame (magic ``04 22 4D 18``): the anomaly engine's state in Redis, and
  the Kafka values written before 2026-12-05;
- ``HSZ``, a dictionary's number (one byte), then a Zstandard frame compressed
  against that dictionary: Kafka values.

A reading's Bundle of Observations is about 7.5 kB of JSON that differs from
every other reading's only in ids, times and values. LZ4 makes 1.4 kB of it.
Against a dictionary of the topics' own documents Zstandard makes about 260
bytes, in about the time LZ4 takes (3 us), and the seal after it has a fifth of
the bytes to encrypt. The broker holds each message, so it holds a fifth too.

A Zstandard raw-content dictionary is text that a frame may refer back to as if
it came before it. Dictionary 1 (``dictionaries/1.json``) is one of each
document the topics carry, as the FHIR step wrote them for synthetic readings: a
Patient, a Device, NEWS2's Observation and RiskAssessment, an alert event with
its Communication and Flag, and a reading's Bundle. A dictionary never changes
once values are written with it: a better one is added under the next number,
and every number stays readable.

The engine's state (5-6 kB of numbers, rewritten with every reading) stays LZ4:
Zstandard makes it a third smaller but takes two and a half times as long.
"""

from __future__ import annotations

import functools
import importlib.resources
import threading

import lz4.frame
import zstandard

from healthsync.security.crypto import DecryptError

# The most an opened value may expand to: far above any message the pipeline writes.
MAX_EXPANDED = 16 << 20
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_ZSTD_PREFIX = b"HSZ"
# The dictionary new values are compressed with, and every one that can be read.
_DICTIONARY = 1
_DICTIONARIES = frozenset({1})
# Zstandard's level 3 (its default): with a dictionary faster than level 1 here, and smaller.
_LEVEL = 3
# What every value compressed now starts with.
_HEADER = _ZSTD_PREFIX + bytes([_DICTIONARY])


@functools.cache
def _dictionary(number: int) -> zstandard.ZstdCompressionDict:
    text = importlib.resources.files(__package__).joinpath(f"dictionaries/{number}.json")
    dictionary = zstandard.ZstdCompressionDict(
        text.read_bytes(), dict_type=zstandard.DICT_TYPE_RAWCONTENT
    )
    dictionary.precompute_compress(level=_LEVEL)
    return dictionary


class _PerThread(threading.local):
    """Zstandard's compressors and decompressors must not be shared between threads."""

    def __init__(self) -> None:
        self.compressor: zstandard.ZstdCompressor | None = None
        self.decompressors: dict[int, zstandard.ZstdDecompressor] = {}


_local = _PerThread()


def compress_lz4(value: bytes) -> bytes:
    """An LZ4 frame of `value`, its size recorded."""
    frame: bytes = lz4.frame.compress(value, store_size=True)
    return frame


def compress_with_dictionary(value: bytes) -> bytes:
    """`value` compressed against the current dictionary (for the Kafka topics' values)."""
    compressor = _local.compressor
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(
            dict_data=_dictionary(_DICTIONARY), write_content_size=True
        )
    return _HEADER + compressor.compress(value)


def expand(value: bytes) -> bytes:
    """The bytes of a compressed value; any other value as it is. DecryptError (it cannot
    be opened) if a compressed value is not sound or would expand past MAX_EXPANDED."""
    if value[:4] == _LZ4_MAGIC:
        return _expand_lz4(value)
    if value[:3] == _ZSTD_PREFIX:
        if len(value) < len(_HEADER):
            raise DecryptError("damaged compressed value: it ends before its dictionary's number")
        return _expand_zstd(value[3], value[4:])
    return value


def _expand_lz4(frame: bytes) -> bytes:
    try:
        size = lz4.frame.get_frame_info(frame)["content_size"]
        _check_size(size)
        expanded: bytes = lz4.frame.decompress(frame)
    except RuntimeError as exc:  # what python-lz4 raises on a damaged frame
        raise DecryptError(f"damaged compressed value: {exc}") from exc
    return _checked(expanded, size)


def _expand_zstd(number: int, frame: bytes) -> bytes:
    if number not in _DICTIONARIES:
        raise DecryptError(f"compressed with dictionary {number}, which this version lacks")
    decompressor = _local.decompressors.get(number)
    if decompressor is None:
        decompressor = _local.decompressors[number] = zstandard.ZstdDecompressor(
            dict_data=_dictionary(number)
        )
    try:
        size = zstandard.frame_content_size(frame)
        _check_size(size)
        expanded = decompressor.decompress(frame)
    except zstandard.ZstdError as exc:
        raise DecryptError(f"damaged compressed value: {exc}") from exc
    return _checked(expanded, size)


def _check_size(size: int) -> None:
    if not 0 < size <= MAX_EXPANDED:
        raise DecryptError(f"compressed value of {size} bytes, outside 1 to {MAX_EXPANDED}")


def _checked(expanded: bytes, size: int) -> bytes:
    if len(expanded) != size:
        raise DecryptError(f"compressed value expanded to {len(expanded)} bytes, not {size}")
    return expanded
