"""What flows through the processor: a batch of readings and what the steps derived from it.

The steps that enrich a batch and the sinks that store it are in
:mod:`healthsync.stream.contracts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from healthsync.domain.alerts import AlertEvent, Artefact
from healthsync.domain.news2 import News2
from healthsync.domain.readings import Reading

# A FHIR resource as JSON-ready data, with the patient id it is about (its Kafka key).
KeyedResource = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ReadingBundle:
    """A reading's Observations as one FHIR collection Bundle, already JSON (see
    :mod:`healthsync.fhir.bundle_json`); its Kafka key is the patient id."""

    patient_id: str
    reading_id: str
    json: bytes


@dataclass
class Batch:
    """The new readings of one consume() call and what the steps derived from them.

    A batch with no readings and `now` set is a clock tick: the anomaly engine
    checks for devices that went quiet.
    """

    readings: list[Reading]
    # The partition each patient's readings came from (the engine keeps it with its state).
    partitions: dict[str, int] = field(default_factory=dict)
    now: float | None = None
    # Per (topic, partition): the first offset in the batch and the one after its last.
    positions: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    alert_events: list[AlertEvent] = field(default_factory=list)
    # FHIR resources for the observations topic: Patient, Device, and NEWS2's Observation
    # and RiskAssessment.
    observations: list[KeyedResource] = field(default_factory=list)
    # Each reading's Observations as one collection Bundle, already JSON: for the
    # observations topic, between the Patients and Devices they refer to and the NEWS2
    # resources that refer to them.
    bundles: list[ReadingBundle] = field(default_factory=list)
    # The Communication and Flag of each alert event, in event order; on the alerts
    # topic they travel inside the events.
    alert_resources: list[KeyedResource] = field(default_factory=list)
    # The latest NEWS2 of each patient the batch touched.
    scores: dict[str, News2] = field(default_factory=dict)
    # Samples the anomaly engine set aside as probable artefacts.
    artefacts: list[Artefact] = field(default_factory=list)
    # The anomaly engine's state of each patient it changed (a JSON object), to be saved
    # with the batch.
    states: dict[str, bytes] = field(default_factory=dict)
    # Patients the anomaly engine forgot: none of their devices sent for the live cache's
    # retention. The live sink removes their live records.
    departed: list[str] = field(default_factory=list)
    # Values on the vitals topic that are not readings, for the dead-letter topic: each
    # message's key and a JSON record of what it was and why it was set aside. They are
    # stored with the batch, so its offsets are committed only once Kafka has them.
    dead_letters: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def resources(self) -> list[KeyedResource]:
        """The FHIR resources the batch produced as data, for the sinks that store or forward
        them; the readings' Bundles, already JSON, are in `bundles`."""
        return self.observations + self.alert_resources
