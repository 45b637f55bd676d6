"""Topic names and Redis key names, in one place.

Topic names are settings (see :class:`healthsync.config.KafkaSettings`); this
module holds the Redis key layout, which every reader and writer must agree on.
"""

from __future__ import annotations

import zlib
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

    ``{g}`` below is the patient group's part of a key: empty with one group
    (a standalone Redis, ``groups=1``), so those keys are ``{p}:latest:...``;
    ``{gNN}:`` with several (a Redis Cluster), a hash tag, so every key of a
    group is in one hash slot and a batch's transaction for the group stays
    on one node. A patient's group is a CRC-32 of the pseudonym modulo
    ``groups``: anyone with the patient id (the API) finds the keys.

    ``{patient}`` below is the patient id's pseudonym (``pseudonym``, an HMAC
    when encryption at rest is on; see :mod:`healthsync.security.codec`): every
    method that takes a patient id applies it, so no id appears in a key name,
    hash field or set member. Values that hold PHI are sealed by the codec.

    - ``{p}:{g}patients``               sorted set: {patient} -> last reading time
    - ``{p}:{g}patient_ids``            hash: {patient} -> the patient id (sealed)
    - ``{p}:{g}latest:{patient}``       hash: vital -> its reading's JSON {reading_id, ts,
      device_id, values} (the fields one reading gave share one value)
    - ``{p}:{g}history:{patient}``      sorted set: reading JSON scored by measurement time
    - ``{p}:{g}seen:{patient}``         sorted set: reading_id scored by time (idempotency)
    - ``{p}:{g}news2``                  hash: {patient} -> latest NEWS2 JSON
    - ``{p}:{g}engine``                 hash: {patient} -> the anomaly engine's state JSON
    - ``{p}:{g}offsets:{topic}:{partition}`` hash: ``topic:partition`` -> the next offset
                                          the processor's stored batches reach (see
                                          store/live.py); earlier versions kept every
                                          partition's in one ``{p}:offsets``
    - ``{p}:{g}stats:processor``        hash: ``readings_processed_total`` of the group
                                          (one group: the same hash as the processor's stats)
    - ``{p}:{g}stats:processed_by_hour`` hash: hour (epoch s) -> readings stored that were
                                          received in it (see store/hourly.py)
    - ``{p}:alert:{alert_id}``          string: alert JSON; expires after retention once resolved
    - ``{p}:alerts:recent``             sorted set: alert_id scored by when it opened
    - ``{p}:alerts:open``               hash: "{patient}|{kind}" -> alert_id (kind pseudonymous)
    - ``{p}:alerts:acknowledged``       hash: alert_id -> JSON {by, at}
    - ``{p}:rules``                     hash: {patient} -> rules JSON set through the API
    - ``{p}:device_patients``           hash: {device} -> JSON {device_id, patients} (sealed)
    - ``{p}:fhir:{type}:{id}``          string: a FHIR resource's JSON (recent window);
                                          a Patient's and a Device's id is its pseudonym
    - ``{p}:fhir:reading:{reading_id}`` string: the reading its vital-sign Observations are
                                          rebuilt from (they are not stored one by one)
    - ``{p}:fhir:index:{type}``         sorted set: id (a Patient's or Device's pseudonym) by time
    - ``{p}:fhir:index:{type}:{patient}`` sorted set: the same, for one patient
    - ``{p}:fhir:index:reading:{n}[:{patient}]`` sorted set: reading_id by time, for the
                                          readings that make n vital-sign Observations
                                          (indexed once, not once per Observation)
    - ``{p}:events``                    stream of live events for dashboards
    - ``{p}:audit``                     stream: who read which patient's data (API audit log)
    - ``{p}:stats:{component}``         hash of counters shared by all instances
    - ``{p}:latency``                   hash: histogram bucket -> count
    - ``{p}:jobs:runs``                 hash: run id -> run record JSON (no patient data)
    - ``{p}:jobs:recent``               sorted set: run id scored by when it was created
    - ``{p}:jobs:lock:{job}``           string: the run id holding the job, with a TTL
    - ``{p}:jobs:schedule``             hash: job -> the last scheduled time handled
    - ``{p}:jobs:requests``             list: run ids asked for through the API, for the scheduler
    - ``{p}:cloudwatch:leader``         string: the exporter that sends metrics, with a TTL
    """

    prefix: str = "hs"
    pseudonym: Callable[[str], str] = _clear
    groups: int = 1

    def patient(self, patient_id: str) -> str:
        """How a patient appears in set members and hash fields."""
        return self.pseudonym(patient_id)

    # -- patient groups ----------------------------------------------------------------

    @property
    def all_groups(self) -> range:
        return range(self.groups)

    def group_of(self, patient_id: str) -> int:
        """The group of a patient id."""
        return self.group_of_member(self.pseudonym(patient_id))

    def group_of_member(self, member: str) -> int:
        """The group of a pseudonym (a hash field or set member naming a patient)."""
        if self.groups == 1:
            return 0
        return zlib.crc32(member.encode()) % self.groups

    def _in(self, group: int) -> str:
        """The start of a group's key names: the prefix, and the hash tag with several groups."""
        if self.groups == 1:
            return f"{self.prefix}:"
        return f"{self.prefix}:{{g{group:02d}}}:"

    def patients(self, group: int) -> str:
        return f"{self._in(group)}patients"

    def patient_ids(self, group: int) -> str:
        return f"{self._in(group)}patient_ids"

    def latest(self, patient_id: str) -> str:
        member = self.pseudonym(patient_id)
        return f"{self._in(self.group_of_member(member))}latest:{member}"

    def history(self, patient_id: str) -> str:
        member = self.pseudonym(patient_id)
        return f"{self._in(self.group_of_member(member))}history:{member}"

    def seen(self, patient_id: str) -> str:
        member = self.pseudonym(patient_id)
        return f"{self._in(self.group_of_member(member))}seen:{member}"

    def news2(self, group: int) -> str:
        return f"{self._in(group)}news2"

    def engine(self, group: int) -> str:
        return f"{self._in(group)}engine"

    def offsets(self, group: int, topic: str, partition: int) -> str:
        """The hash recording a partition's reach in a group (field ``topic:partition``).

        One per partition (and group), so processors owning different
        partitions never WATCH the same key.
        """
        return f"{self._in(group)}offsets:{topic}:{partition}"

    @property
    def shared_offsets(self) -> str:
        """The one hash in which earlier versions recorded every partition's reach on a
        standalone Redis: read for a partition that has no record of its own yet."""
        return f"{self.prefix}:offsets"

    def processed(self, group: int) -> str:
        """The hash holding the group's ``readings_processed_total``."""
        return f"{self._in(group)}stats:processor"

    def processed_by_hour(self, group: int) -> str:
        return f"{self._in(group)}stats:processed_by_hour"

    def stats_keys(self, component: str) -> list[str]:
        """Every hash holding a component's counters: its own, and the groups' for the processor."""
        names = [self.stats(component)]
        if component == "processor":
            names += [k for k in map(self.processed, self.all_groups) if k not in names]
        return names

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

    def fhir_reading_index(self, observations: int, patient_id: str | None = None) -> str:
        """The index of the readings that each stand for `observations` vital-sign Observations."""
        base = f"{self.prefix}:fhir:index:reading:{observations}"
        return base if patient_id is None else f"{base}:{self.pseudonym(patient_id)}"

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
