"""Moving the jobs' sealed output files to the keyring's active key, and counting each key's files.

A job writes the files that name patients sealed with the keyring's active
key at the time (:meth:`healthsync.jobs.output.JobOutput.write_sealed`), and
the sealed format names that key in its first bytes
(:mod:`healthsync.security.crypto`). So which key a file depends on is learnt
from its head alone, with nothing decrypted: one short read per file, which
is what `keys retire` checks (:func:`key_usage`). `keys rewrap` writes each
file under another key again (:func:`stale_files`, then :func:`rewrite`):

1. read it whole and open it with the key it names, at its own place (the
   associated data is the file's key in the store, which does not change);
2. seal the same bytes under the active key and open that copy back: it must
   give the very same bytes, or the file is left as it was and reported;
3. replace the file under the same name: the local store writes a temporary
   file and renames it over the old one, S3 takes one PutObject with the
   store's server-side encryption, so a reader sees the old file or the new
   one, never part of either.

While a job's files are rewritten the job's run lock is held (the lock a run
takes, :class:`healthsync.store.runs.RunStore`), so a run of that job that
reuses a run id cannot write or remove a file meanwhile only to have an older
copy put back; a job that is running is left for the next rewrap. A rerun
skips what is already under the active key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from healthsync.errors import HealthSyncError
from healthsync.security.codec import Codec
from healthsync.security.crypto import is_current, key_id_of
from healthsync.store.job_files import ObjectStore, missing, sealed_place
from healthsync.store.runs import JobBusyError, RunStore

JOBS = "jobs/"
# MAGIC, version, the key id's length and the longest key id: all a header can hold.
HEADER_BYTES = 3 + 255
# The lock is taken again before each file, so a rewrap that stops frees the job soon.
LOCK_TTL_S = 120.0


class JobFileError(HealthSyncError):
    """A job output file could not be rewritten; the message says why."""


@dataclass
class JobFilesReport:
    sealed: int = 0  # sealed files looked at
    rewritten: int = 0  # files now under the active key that were not before
    # (location, reason) of files that could not be rewritten and were left as they are.
    failed: list[tuple[str, str]] = field(default_factory=list)


def location(store: ObjectStore, key: str) -> str:
    return f"{store.url.rstrip('/')}/{key}"


def _sealed(store: ObjectStore) -> Iterator[tuple[str, bytes]]:
    """(key, head) of each sealed file under ``jobs/``; plain files (counts, reports) are
    left out."""
    for key in store.list(JOBS):
        try:
            head = store.read_head(key, HEADER_BYTES)
        except Exception as exc:
            if missing(exc):
                continue  # removed since it was listed: a rerun's commit
            raise
        if key_id_of(head) is not None:
            yield key, head


def key_usage(store: ObjectStore) -> Counter[str]:
    """How many job output files each key id sealed."""
    return Counter(key_id_of(head) or "" for _key, head in _sealed(store))


def stale_files(store: ObjectStore, active: str) -> tuple[int, dict[str, list[str]]]:
    """How many files are sealed, and those that are not under `active` (or are in an
    older format) by job name."""
    sealed = 0
    stale: dict[str, list[str]] = {}
    for key, head in _sealed(store):
        sealed += 1
        if not is_current(head, active):
            stale.setdefault(key.split("/")[1], []).append(key)
    return sealed, stale


def rewrite(
    store: ObjectStore, codec: Codec, stale: dict[str, list[str]], runs: RunStore, holder: str
) -> JobFilesReport:
    """Seal each of `stale`'s files again under the codec's active key, holding its job's
    lock as `holder`; see the module doc."""
    report = JobFilesReport()
    for job, keys in stale.items():
        left = list(keys)
        try:
            while left:
                # Taken again before each file: the lock stays ours however many there are.
                runs.acquire(job, holder, LOCK_TTL_S)
                key = left.pop(0)
                try:
                    store.put(key, _resealed(store, codec, key))
                except Exception as exc:  # noqa: BLE001 - any failure: report it, go on
                    report.failed.append((location(store, key), str(exc)))
                    continue
                report.rewritten += 1
        except JobBusyError as exc:
            reason = f"{exc}; run `healthsync keys rewrap` again when it is done"
            report.failed += [(location(store, key), reason) for key in left]
        finally:
            runs.release(job, holder)
    return report


def _resealed(store: ObjectStore, codec: Codec, key: str) -> bytes:
    """The file's contents sealed under the active key, checked to open to the same bytes."""
    place = sealed_place(key)
    plain = codec.open(store.get(key), place)
    fresh = codec.seal(plain, place)
    if codec.open(fresh, place) != plain:
        raise JobFileError("the resealed copy does not open to the same bytes; kept as it was")
    return fresh
