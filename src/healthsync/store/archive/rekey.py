"""Moving the archive's data keys under the current master key, and counting each key's objects.

Every identified object has its own data key, wrapped by a master key its
footer names (:mod:`.wrapping`): a keyring key, or the KMS key when
``crypto.kms_key_id`` is set. Rotating the keyring changes no object already
written, so before a keyring key is retired each object it wraps is written
again, which is what `healthsync keys rewrap` does here (:func:`rewrap`) and
what `keys retire` checks first (:func:`key_usage`).

An object is rewritten in three steps, each safe to interrupt:

1. read it whole, with the key it names;
2. encode the same rows again, the same way the writer does (row groups of
   whole patients' runs, statistics, zstd), under a fresh data key wrapped by
   the current master key, and decrypt those bytes back: they must hold the
   very same table, every row and column in order, or the object is left as
   it was and reported;
3. replace the object under the same key: the local store writes a
   temporary file and renames it over the object, S3 takes one PutObject
   (with the archive's server-side encryption), so a reader sees the old
   object or the new one, never part of either.

A rerun skips what is already under the current key. An archiver replay or a
compaction running meanwhile writes under the current key as well; an object
compaction merged and deleted while it was being rewritten comes back as an
input the merged object covers, which readers skip and the next compaction
deletes (:mod:`.coverage`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from healthsync.store.archive import layout
from healthsync.store.archive.encryption import ParquetCrypto
from healthsync.store.archive.errors import ArchiveError
from healthsync.store.archive.objects import ObjectStore
from healthsync.store.archive.wrapping import wrapping_key
from healthsync.store.archive.writer import ArchiveWriter


@dataclass
class RekeyReport:
    checked: int = 0  # encrypted objects looked at
    rewritten: int = 0  # objects now under the current master key that were not before
    # (location, reason) of objects that could not be rewritten and were left as they are.
    failed: list[tuple[str, str]] = field(default_factory=list)


def encrypted_objects(store: ObjectStore) -> list[str]:
    """The keys of the archive's encrypted objects: the identified set (the research set
    is plain Parquet by design)."""
    return [key for key in store.list(f"{layout.IDENTIFIED}/") if key.endswith(".parquet")]


def key_usage(store: ObjectStore) -> Counter[str]:
    """How many encrypted objects each master key id wraps the data keys of."""
    usage: Counter[str] = Counter()
    for key in encrypted_objects(store):
        master = wrapping_key(store, key)
        if master is not None:
            usage[master] += 1
    return usage


def rewrap(store: ObjectStore, crypto: ParquetCrypto, writer: ArchiveWriter) -> RekeyReport:
    """Rewrite every encrypted object whose data key another master key than the current
    one (``crypto.master_key``) wraps; see the module doc."""
    report = RekeyReport()
    for key in encrypted_objects(store):
        report.checked += 1
        try:
            if wrapping_key(store, key) in (None, crypto.master_key):
                continue
            store.put(key, _reencoded(store, key, crypto, writer))
        except ArchiveError as exc:
            report.failed.append((store.location(key), str(exc)))
            continue
        report.rewritten += 1
    return report


def _reencoded(store: ObjectStore, key: str, crypto: ParquetCrypto, writer: ArchiveWriter) -> bytes:
    """The object's rows encoded under the current master key, checked to read back equal."""
    old, largest = _read(store.open(key), crypto, store.location(key))
    # A day object's row groups are larger than the writer's own: they stay as large.
    rows = max(largest, writer.row_group_rows)
    fresh = writer.encode(old, "patient_id", encrypted=True, row_group_rows=rows)
    if not _read(pa.BufferReader(fresh), crypto, "the rewritten copy")[0].equals(old):
        raise ArchiveError(
            f"{store.location(key)}: the rewritten copy does not hold the same rows; kept as it was"
        )
    return fresh


def _read(source: pa.NativeFile, crypto: ParquetCrypto, where: str) -> tuple[pa.Table, int]:
    """The object's rows, and the most rows one of its row groups holds."""
    try:
        file = pq.ParquetFile(source, decryption_properties=crypto.decryption_properties())
        meta = file.metadata
        largest = max((meta.row_group(i).num_rows for i in range(meta.num_row_groups)), default=0)
        return file.read(use_threads=False), largest
    except Exception as exc:
        raise ArchiveError(f"cannot read {where}: {exc}") from exc
