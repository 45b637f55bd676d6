"""The base error every HealthSync exception derives from."""

from __future__ import annotations


class HealthSyncError(Exception):
    """Something HealthSync could not do; the message says what and why."""


class ConfigError(HealthSyncError):
    """The settings do not allow the requested operation."""


class MissingBinaryError(HealthSyncError):
    """A system program the embedded stack needs is not installed."""

    def __init__(self, binary: str, hint: str) -> None:
        super().__init__(f"{binary} not found on PATH; install it with: {hint}")
        self.binary = binary
        self.hint = hint


class StoreBehindError(HealthSyncError):
    """The store holds less than the consumer already moved past (a restart lost writes).

    `positions` maps (topic, partition) to the offset to consume again from.
    """

    def __init__(self, positions: dict[tuple[str, int], int]) -> None:
        where = ", ".join(f"{t}[{p}] from {o}" for (t, p), o in sorted(positions.items()))
        super().__init__(f"the store is behind the consumer; replay {where}")
        self.positions = positions
