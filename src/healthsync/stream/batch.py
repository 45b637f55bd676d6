"""What flows through the processor: a batch, the steps that enrich it, the sinks that store it.

The loop that owns the Kafka offsets runs every step over a batch, then writes
it to every sink, flushes them, and only then commits (see processor.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from healthsync.readings import Reading
from healthsync.stream.alerts import AlertEvent
from healthsync.stream.news2 import News2

if TYPE_CHECKING:
    from healthsync.stream.engine import Artefact

# A FHIR resource as JSON-ready data, with the patient id it is about (its Kafka key).
KeyedResource = tuple[str, dict[str, Any]]


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
    alert_events: list[AlertEvent] = field(default_factory=list)
    # FHIR resources for the observations topic: Observation, Patient, Device, RiskAssessment.
    observations: list[KeyedResource] = field(default_factory=list)
    # The Communication and Flag of each alert event, in event order; on the alerts
    # topic they travel inside the events.
    alert_resources: list[KeyedResource] = field(default_factory=list)
    # The latest NEWS2 of each patient the batch touched.
    scores: dict[str, News2] = field(default_factory=dict)
    # Samples the anomaly engine set aside as probable artefacts.
    artefacts: list[Artefact] = field(default_factory=list)
    # The anomaly engine's state of each patient it changed, to be saved with the batch.
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def resources(self) -> list[KeyedResource]:
        """Every FHIR resource the batch produced, for the sinks that store or forward them."""
        return self.observations + self.alert_resources


class Step(Protocol):
    """Derives something from a batch (alerts, FHIR resources) and adds it to the batch.

    A step that reads state from a store does so before it changes anything,
    so a failed read can be retried; `reset` drops state that may be stale
    because the processor's partitions (and so its patients) moved.
    """

    def process(self, batch: Batch) -> None: ...

    def reset(self) -> None: ...


class Sink(Protocol):
    """Stores a batch. `write` may buffer; `flush` returns once everything is durable.

    Both must be idempotent by reading id and alert id: after a crash the batch
    is replayed and written again.
    """

    def write(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...
