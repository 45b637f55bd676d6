"""Topic names and Redis key names, in one place.

Topic names are settings (see :class:`healthsync.config.KafkaSettings`); this
module holds the Redis key layout, which every reader and writer must agree on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The jobs `healthsync job run` knows (healthsync.jobs.catalog), for the layers below it.
JOBS = ("alarm-report", "trends", "reprocess", "verify", "compact")


def _clear(value: str) -> str:
    return value


# FHIR types whose ids are identifiers, so their keys and index members use pseudonyms.
_PSEUDONYMOUS = frozenset({"Patient", "Device"})


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis key layout under one prefix.

    ``{patient}`` below is the patient id's pseudonym (``pseudonym``, an HMAC
    when encryption at rest is on; see :mod:`healthsync.security.codec`): every
    method that takes a patient id applies it, so no id appears in a key name,
    hash field or set member. Values that hold PHI are sealed by the codec.

    - ``{p}:patients``                  sorted set: {patient} -> last reading time
    - ``{p}:patient_ids``               hash: {patient} -> the patient id (sealed)
    - ``{p}:latest:{patient}``          hash: vital -> JSON {value, ts, reading_id}
    - ``{p}:history:{patient}``         sorted set: reading JSON scored by measurement time
    - ``{p}:seen:{patient}``            sorted set: reading_id scored by time (idempotency)
    - ``{p}:alert:{alert_id}``          string: alert JSON; expires after retention once resolved
    - ``{p}:alerts:recent``             sorted set: alert_id scored by when it opened
    - ``{p}:alerts:open``               hash: "{patient}|{kind}" -> alert_id (kind pseudonymous)
    - ``{p}:alerts:acknowledged``       hash: alert_id -> JSON {by, at}
    - ``{p}:news2``                     hash: {patient} -> latest NEWS2 JSON
    - ``{p}:engine``                    hash: {patient} -> the anomaly engine's state JSON
    - ``{p}:rules``                     hash: {patient} -> rules JSON set through the API
    - ``{p}:device_patients``           hash: {device} -> JSON {device_id, patients} (sealed)
    - ``{p}:fhir:{type}:{id}``          string: a FHIR resource's JSON (recent window);
                                          a Patient's and a Device's id is its pseudonym
    - ``{p}:fhir:reading:{reading_id}`` string: the reading its vital-sign Observations are
                                          rebuilt from (they are not stored one by one)
    - ``{p}:fhir:index:{type}``         sorted set: id (a Patient's or Device's pseudonym) by time
    - ``{p}:fhir:index:{type}:{patient}`` sorted set: the same, for one patient
    - ``{p}:events``                    stream of live events for dashboards
    - ``{p}:audit``                     stream: who read which patient's data (API audit log)
    - ``{p}:stats:{component}``         hash of counters shared by all instances
    - ``{p}:offsets``                   hash: ``topic:partition`` -> the next offset the
                                          processor's stored batches reach (see store/live.py)
    - ``{p}:latency``                   hash: histogram bucket -> count
    - ``{p}:stats:processed_by_hour``   hash: hour (epoch s) -> readings stored that were
                                          received in it (see store/hourly.py)
    - ``{p}:jobs:runs``                 hash: run id -> run record JSON (no patient data)
    - ``{p}:jobs:recent``               sorted set: run id scored by when it was created
    - ``{p}:jobs:lock:{job}``           string: the run id holding the job, with a TTL
    - ``{p}:jobs:schedule``             hash: job -> the last scheduled time handled
    - ``{p}:jobs:requests``             list: run ids asked for through the API, for the scheduler
    - ``{p}:cloudwatch:leader``         string: the exporter that sends metrics, with a TTL
    """

    prefix: str = "hs"
    pseudonym: Callable[[str], str] = _clear

    def patient(self, patient_id: str) -> str:
        """How a patient appears in set members and hash fields."""
        return self.pseudonym(patient_id)

    @property
    def patients(self) -> str:
        return f"{self.prefix}:patients"

    @property
    def patient_ids(self) -> str:
        return f"{self.prefix}:patient_ids"

    def latest(self, patient_id: str) -> str:
        return f"{self.prefix}:latest:{self.pseudonym(patient_id)}"

    def history(self, patient_id: str) -> str:
        return f"{self.prefix}:history:{self.pseudonym(patient_id)}"

    def seen(self, patient_id: str) -> str:
        return f"{self.prefix}:seen:{self.pseudonym(patient_id)}"

    def alert(self, alert_id: str) -> str:
        return f"{self.prefix}:alert:{alert_id}"

    @property
    def recent_alerts(self) -> str:
        return f"{self.prefix}:alerts:recent"

    @property
    def open_alerts(self) -> str:
        return f"{self.prefix}:alerts:open"

    def open_slot(self, patient_id: str, kind: str) -> str:
        """The field of ``alerts:open`` for one patient's alert of one kind.

        The kind is a pseudonym too: ``device_offline:<device>`` names a device.
        """
        return f"{self.pseudonym(patient_id)}|{self.pseudonym(kind)}"

    @property
    def news2(self) -> str:
        return f"{self.prefix}:news2"

    @property
    def engine(self) -> str:
        return f"{self.prefix}:engine"

    @property
    def rules(self) -> str:
        return f"{self.prefix}:rules"

    @property
    def device_patients(self) -> str:
        return f"{self.prefix}:device_patients"

    @property
    def acknowledged(self) -> str:
        return f"{self.prefix}:alerts:acknowledged"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def fhir(self, resource_type: str, resource_id: str) -> str:
        return f"{self.prefix}:fhir:{resource_type}:{self.fhir_member(resource_type, resource_id)}"

    def fhir_member(self, resource_type: str, resource_id: str) -> str:
        """A resource's id as its key and its index entries name it.

        A Patient's and a Device's are pseudonyms: a device id in a key name
        would link a patient's pseudonym to a bed.
        """
        return self.pseudonym(resource_id) if resource_type in _PSEUDONYMOUS else resource_id

    def fhir_reading(self, reading_id: str) -> str:
        return f"{self.prefix}:fhir:reading:{reading_id}"

    def fhir_index(self, resource_type: str, patient_id: str | None = None) -> str:
        base = f"{self.prefix}:fhir:index:{resource_type}"
        return base if patient_id is None else f"{base}:{self.pseudonym(patient_id)}"

    @property
    def offsets(self) -> str:
        return f"{self.prefix}:offsets"

    @property
    def processed_by_hour(self) -> str:
        return f"{self.prefix}:stats:processed_by_hour"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def stats(self, component: str) -> str:
        return f"{self.prefix}:stats:{component}"

    @property
    def latency(self) -> str:
        return f"{self.prefix}:latency"

    @property
    def job_runs(self) -> str:
        return f"{self.prefix}:jobs:runs"

    @property
    def job_recent(self) -> str:
        return f"{self.prefix}:jobs:recent"

    def job_lock(self, job: str) -> str:
        return f"{self.prefix}:jobs:lock:{job}"

    @property
    def job_requests(self) -> str:
        return f"{self.prefix}:jobs:requests"

    @property
    def job_schedule(self) -> str:
        return f"{self.prefix}:jobs:schedule"

    @property
    def cloudwatch_leader(self) -> str:
        return f"{self.prefix}:cloudwatch:leader"
