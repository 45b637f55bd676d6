"""The archive's errors: each names the object or setting it is about."""

from __future__ import annotations

from healthsync.errors import HealthSyncError


class ArchiveError(HealthSyncError):
    """The archive could not be written or read."""


class ObjectStoreError(ArchiveError):
    """The object store refused or failed a request (retry: nothing was lost)."""


class ArchiveReadError(ArchiveError):
    """An archived object could not be opened or decoded; the message names it."""

    def __init__(self, location: str, reason: str) -> None:
        super().__init__(f"cannot read archived object {location}: {reason}")
        self.location = location
