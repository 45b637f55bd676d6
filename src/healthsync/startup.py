"""What `up` checks in the settings, and settles, before it starts anything."""

from __future__ import annotations

from healthsync.config import Settings
from healthsync.errors import ConfigError


def check_before_start(settings: Settings, stages: tuple[str, ...]) -> None:
    """ConfigError for settings these stages cannot run with; the number of processors,
    when the settings leave it to its default, fitted to the vitals topic."""
    if "process" in stages:
        _fit_processes(settings)
    # Behind HAProxy the replicas listen on loopback: the front's public port is checked.
    ingest = settings.ingest
    refusal = ingest.plain_refusal()
    if "ingest" in stages and ingest.plain_enabled is not False and refusal:
        raise ConfigError(refusal)


def _fit_processes(settings: Settings) -> None:
    processor = settings.processor
    count, partitions = processor.processes, settings.kafka.partitions
    if "processes" not in processor.model_fields_set:
        processor.processes = min(count, partitions)  # the default fits the topic
    elif count > partitions:
        raise ConfigError(
            f"processor.processes is {count} but kafka.partitions is {partitions}: "
            "a processor beyond one per partition of the vitals topic would get none"
        )
