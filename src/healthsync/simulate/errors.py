"""The simulator's one error."""

from __future__ import annotations

from healthsync.errors import HealthSyncError


class SimulationError(HealthSyncError):
    """The simulation could not run as asked (bad arguments, server unreachable)."""
