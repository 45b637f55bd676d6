"""The processor's contracts: steps enrich a batch, sinks store it.

The loop that owns the Kafka offsets runs every step over a batch, then writes
it to every sink, flushes them, and only then commits (see processor.py).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading


class Step(Protocol):
    """Derives something from a batch (alerts, FHIR resources) and adds it to the batch.

    A step that reads state from a store does so before it changes anything,
    so a failed read can be retried. `on_assign` tells it which partitions (and
    so which patients) the processor now owns: state it holds may be stale.
    """

    def process(self, batch: Batch) -> None: ...

    def on_assign(self, partitions: Collection[int]) -> None: ...


class Sink(Protocol):
    """Stores a batch. `write` may buffer; `flush` returns once everything is durable.

    Both must be idempotent by reading id and alert id: after a crash the batch
    is replayed and written again.
    """

    def write(self, batch: Batch) -> None: ...

    def flush(self) -> None: ...


class SeenFilter(Protocol):
    """Which readings are stored already: a replayed batch skips them."""

    def filter_new(self, readings: list[Reading]) -> list[Reading]: ...
