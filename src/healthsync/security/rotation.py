"""Seals counted per key across processes, and the active key rotated before a limit.

Every process that seals (ingest, processor, API, archiver) counts its seals
in memory and adds them, every `batch` seals, to a count per key id kept
beside the keyring (``<keyring>.seals``, JSON, mode 0600). That costs one
file update per batch, nothing per value. When a key's count reaches the
limit (``crypto.rotate_after_seals``, 2^31 by default: half of NIST's 2^32
messages per AES-GCM key), the process that noticed adds a new active key to
the keyring file; the others see the new active key with their next batch,
and a process that meets a value under a key it does not know reads the
keyring again (:meth:`KeyUsage.reload`).

All of it happens under an exclusive lock on ``<keyring>.lock`` (``flock``),
and the process that rotates first re-reads the keyring inside the lock: so
processes sharing the keyring file (one host, or a file system with working
``flock``) rotate once, to the same new key, never into two different ones.
Copies of a keyring on several hosts do not share the lock: turn automatic
rotation off there and rotate by hand (see docs/SECURITY.md).

A process stopping loses the count of fewer than `batch` seals; the limit's
margin to 2^32 covers that many times over.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from healthsync.security.keyring import Keyring, KeyringError, KeyService

# At most this many seals are counted in memory before they are added to the file.
_MAX_BATCH = 65_536


def counts_file(keyring_file: Path) -> Path:
    return keyring_file.with_name(keyring_file.name + ".seals")


def _lock_file(keyring_file: Path) -> Path:
    return keyring_file.with_name(keyring_file.name + ".lock")


@contextmanager
def keyring_lock(keyring_file: Path) -> Iterator[None]:
    """Exclusive use of the keyring file among the processes of this host.

    Not re-entrant: a second lock in the same process waits for the first.
    """
    descriptor = os.open(_lock_file(keyring_file), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def seal_counts(keyring_file: Path) -> dict[str, int]:
    """Seals made per key id, as counted so far by every process (empty if none yet)."""
    try:
        doc = json.loads(counts_file(keyring_file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise KeyringError(f"{counts_file(keyring_file)} is malformed: {exc}") from exc
    return {str(k): int(v) for k, v in doc.items()}


def _write_counts(keyring_file: Path, counts: dict[str, int]) -> None:
    path = counts_file(keyring_file)
    partial = path.with_name(path.name + ".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        json.dump(counts, out, sort_keys=True)
    partial.replace(path)


def _active_in(keyring_file: Path) -> str:
    """The active key id the file names, without decrypting any key (no KMS call)."""
    try:
        return str(json.loads(keyring_file.read_text(encoding="utf-8"))["active"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyringError(f"keyring file {keyring_file} cannot be read: {exc}") from exc


class KeyUsage:
    """The shared seal counts of one keyring file, and rotation when a key has sealed enough."""

    def __init__(self, keyring_file: Path, limit: int, kms: KeyService | None = None) -> None:
        if limit < 1:
            raise KeyringError(f"the rotation limit must be at least 1 seal, got {limit}")
        self.keyring_file = keyring_file
        self.limit = limit
        self.kms = kms
        # Small enough that the count is never far behind the limit.
        self.batch = max(1, min(_MAX_BATCH, limit // 64))
        try:  # now, not at the first batch: a stage must not fail later, while sealing
            os.close(os.open(_lock_file(keyring_file), os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise KeyringError(
                f"cannot count seals beside {keyring_file} ({exc.strerror}); make its "
                "directory writable or set HEALTHSYNC_CRYPTO_ROTATE_AFTER_SEALS=0"
            ) from None

    def record(self, key_id: str, sealed: int) -> Keyring | None:
        """Add `sealed` seals under `key_id`; the keyring to use if its active key changed.

        Rotates when `key_id` is still the file's active key and has reached
        the limit; returns None while `key_id` stays the active key.
        """
        with keyring_lock(self.keyring_file):
            counts = seal_counts(self.keyring_file)
            counts[key_id] = counts.get(key_id, 0) + sealed
            _write_counts(self.keyring_file, counts)
            active = _active_in(self.keyring_file)
            if active != key_id:
                return Keyring.load(self.keyring_file, self.kms)  # rotated elsewhere
            if counts[key_id] < self.limit:
                return None
            ring = Keyring.load(self.keyring_file, self.kms)
            ring.rotate(self.kms)
            ring.save(self.keyring_file)
            return ring

    def reload(self) -> Keyring:
        """The keyring as the file holds it now (another process may have rotated)."""
        with keyring_lock(self.keyring_file):
            return Keyring.load(self.keyring_file, self.kms)
