"""Simulated bedside monitors: many devices, each on its own TCP connection to ingest.

- ``patient``: :class:`PatientModel`, plausible vitals for one patient with
  clinical episodes now and then, and :class:`SimulatedDevice`, the monitor
  that turns them into protocol lines.
- ``connection``: one device's connection, pacing its sends and reading the
  replies, reconnecting and resending what went unanswered.
- ``stats``: :class:`SimulationStats`, what was sent and what came back.
- ``runner``: :func:`run_simulation` drives any number of devices at a given
  rate (:class:`SimulationOptions`) against one :class:`IngestEndpoint`.

The library never prints; the CLI renders :class:`SimulationStats`.
"""

from __future__ import annotations

from healthsync.simulate.errors import SimulationError
from healthsync.simulate.patient import (
    DEFAULT_EPISODE_PROBABILITY,
    EPISODE_KINDS,
    Episode,
    EpisodeKind,
    PatientModel,
    SimulatedDevice,
    VitalSigns,
)
from healthsync.simulate.runner import IngestEndpoint, SimulationOptions, run_simulation
from healthsync.simulate.stats import LatencySummary, SimulationStats

__all__ = [
    "DEFAULT_EPISODE_PROBABILITY",
    "EPISODE_KINDS",
    "Episode",
    "EpisodeKind",
    "IngestEndpoint",
    "LatencySummary",
    "PatientModel",
    "SimulatedDevice",
    "SimulationError",
    "SimulationOptions",
    "SimulationStats",
    "VitalSigns",
    "run_simulation",
]
