"""`healthsync keys rewrap` and the check behind `keys retire`: the keyring against job outputs.

The files of job runs that name patients are sealed with the keyring's keys:
see :mod:`healthsync.store.job_rewrap`.
"""

from __future__ import annotations

import os

from healthsync.config import CryptoSettings, Settings
from healthsync.errors import ConfigError
from healthsync.redis_client import connect
from healthsync.security.codec import Codec, load_keyring
from healthsync.security.crypto import Cipher
from healthsync.security.keyring import KeyringError
from healthsync.store.job_files import ObjectStore, jobs_store
from healthsync.store.job_rewrap import JobFilesReport, key_usage, rewrite, stale_files
from healthsync.store.runs import RunStore


def _store(settings: Settings) -> ObjectStore:
    return jobs_store(settings)


def _codec(settings: Settings, crypto: CryptoSettings) -> tuple[Codec, Cipher]:
    """The codec that reseals, and its cipher: the stages' own, or with encryption at rest
    off (files sealed before it was turned off stay sealed) the keyring's keys alone."""
    codec = Codec.from_settings(settings.model_copy(update={"crypto": crypto}))
    cipher = codec.cipher
    if cipher is None:
        cipher = Cipher(load_keyring(crypto))
        codec = Codec(cipher, settings.redis.prefix)
    return codec, cipher


def rewrap_job_files(settings: Settings, crypto: CryptoSettings) -> list[tuple[str, str]]:
    """Reseal the jobs' output files under the active key; the files that could not be,
    each with why."""
    store = _store(settings)
    codec, cipher = _codec(settings, crypto)
    try:
        sealed, stale = stale_files(store, cipher.keyring.active)
    except Exception as exc:
        raise _unusable(store, exc) from exc
    report = JobFilesReport()
    if stale:
        runs = _runs(settings)
        try:
            report = rewrite(store, codec, stale, runs, f"keys-rewrap-{os.getpid()}")
        finally:
            runs.client.close()
    print(
        f"rewrote {report.rewritten} of {sealed} sealed job output files in {store.url} "
        f"under {cipher.keyring.active}"
    )
    return report.failed


def _unusable(store: ObjectStore, exc: Exception) -> ConfigError:
    return ConfigError(f"the job outputs in {store.url} cannot be read: {exc}")


def _runs(settings: Settings) -> RunStore:
    if not settings.redis.url:
        raise ConfigError(
            "job runs are locked in Redis while their files are resealed: "
            "set HEALTHSYNC_REDIS_URL (and its TLS settings)"
        )
    return RunStore(connect(settings.redis), settings.redis.keys)


def refuse_if_job_files(settings: Settings, key_id: str) -> None:
    """KeyringError if a job output file is still sealed under `key_id`."""
    store = _store(settings)
    try:
        usage = key_usage(store)
    except Exception as exc:
        raise _unusable(store, exc) from exc
    if usage[key_id]:
        raise KeyringError(
            f"key {key_id!r} still seals {usage[key_id]} job output files in {store.url}; "
            "run `healthsync keys rewrap` first, then retire it"
        )
    # Says where it looked: a store URL relative to another directory finds nothing.
    print(
        f"no job output file in {store.url} is sealed under {key_id} ({usage.total()} sealed files)"
    )
