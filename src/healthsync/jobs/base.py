"""What a job is: a name, a run over a period (and optionally some patients), a summary.

A job reads through its context (the archive reader, the output store) and
returns a short summary, which becomes part of its run record. It raises
:class:`JobError` with a message a user can act on when it cannot do its work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from healthsync.errors import HealthSyncError

if TYPE_CHECKING:
    from healthsync.jobs.output import JobOutput
    from healthsync.security.codec import Codec
    from healthsync.store.period import ArchiveReader


class JobError(HealthSyncError):
    """A job could not do its work; the message says why."""


@dataclass(frozen=True, slots=True)
class JobParams:
    """What one run covers. `patients` empty means every patient."""

    run_id: str
    since: float
    until: float
    patients: frozenset[str] = frozenset()
    options: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For the run record: the period and how many patients, never which."""
        doc: dict[str, Any] = {"since": self.since, "until": self.until}
        if self.patients:
            doc["patients"] = len(self.patients)
        if self.options:
            doc["options"] = dict(self.options)
        return doc

    def wants(self, patient_id: str) -> bool:
        return not self.patients or patient_id in self.patients


@dataclass(frozen=True, slots=True)
class JobContext:
    params: JobParams
    output: JobOutput
    reader: ArchiveReader
    # Seals what names a patient before it is written (see JobOutput.write_sealed).
    codec: Codec


class Job(Protocol):
    name: str
    description: str

    def run(self, ctx: JobContext) -> dict[str, Any]:
        """Do the work, write the output, return a short summary (counts, no PHI)."""
        ...
