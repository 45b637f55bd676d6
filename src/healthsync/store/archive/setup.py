"""The archive's parts, built from the settings once per process."""

from __future__ import annotations

from dataclasses import dataclass

from healthsync.config import Settings
from healthsync.security.codec import load_keyring
from healthsync.store.archive.deidentify import Deidentifier
from healthsync.store.archive.encryption import ParquetCrypto
from healthsync.store.archive.objects import ObjectStore, open_store
from healthsync.store.archive.reader import ArchiveReader
from healthsync.store.archive.writer import ArchiveWriter


@dataclass(frozen=True)
class Archive:
    """Where the archive is, how its identified files are encrypted, how it de-identifies."""

    store: ObjectStore
    crypto: ParquetCrypto
    deidentifier: Deidentifier
    row_group_rows: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> Archive:
        """The archive of these settings; it needs the keyring even with crypto.enabled off."""
        keyring = load_keyring(settings.crypto)
        return cls(
            open_store(settings.archive),
            ParquetCrypto.from_keyring(
                keyring, settings.crypto, reload=lambda: load_keyring(settings.crypto)
            ),
            Deidentifier.from_keyring(keyring),
            settings.archive.row_group_rows,
        )

    def writer(self) -> ArchiveWriter:
        return ArchiveWriter(self.store, self.crypto, self.deidentifier, self.row_group_rows)

    def reader(self) -> ArchiveReader:
        return ArchiveReader(self.store, self.crypto)
