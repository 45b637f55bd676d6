"""`healthsync keys rewrap` and the check behind `keys retire`: the keyring against the archive.

The archive's identified objects are encrypted with data keys wrapped by a
keyring key (or the KMS key): see :mod:`healthsync.store.archive.rekey`.
"""

from __future__ import annotations

from healthsync.config import CryptoSettings, Settings
from healthsync.security.keyring import KeyringError
from healthsync.store.archive.rekey import key_usage, rewrap
from healthsync.store.archive.setup import Archive


def _archive(settings: Settings, crypto: CryptoSettings) -> Archive:
    return Archive.from_settings(settings.model_copy(update={"crypto": crypto}))


def rewrap_archive(settings: Settings, crypto: CryptoSettings) -> list[tuple[str, str]]:
    """Rewrite the archive's objects under the current master key; the objects that could
    not be, each with why."""
    archive = _archive(settings, crypto)
    report = rewrap(archive.store, archive.crypto, archive.writer())
    where = archive.store.location("")
    master = archive.crypto.master_key
    print(
        f"rewrote {report.rewritten} of {report.checked} encrypted archive objects "
        f"in {where} under {master}"
    )
    return report.failed


def refuse_if_archived(settings: Settings, crypto: CryptoSettings, key_id: str) -> None:
    """KeyringError if an archived object's data key is still wrapped by `key_id`."""
    archive = _archive(settings, crypto)
    usage = key_usage(archive.store)
    where = archive.store.location("")
    if usage[key_id]:
        raise KeyringError(
            f"key {key_id!r} still wraps the data keys of {usage[key_id]} archive objects in "
            f"{where}; run `healthsync keys rewrap` first, then retire it"
        )
    # Says where it looked: an archive URL relative to another directory finds nothing.
    print(f"no archive object in {where} depends on {key_id} ({usage.total()} encrypted objects)")
