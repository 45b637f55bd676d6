"""Topic names and Redis key names, in one place.

Topic names are settings (see :class:`healthsync.config.KafkaSettings`); this
module holds the Redis key layout, which every reader and writer must agree on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis key layout under one prefix.

    - ``{p}:patients``                  sorted set: patient_id -> last reading time
    - ``{p}:latest:{patient}``          hash: vital -> JSON {value, ts, reading_id}
    - ``{p}:history:{patient}``         sorted set: reading JSON scored by measurement time
    - ``{p}:seen:{patient}``            sorted set: reading_id scored by time (idempotency)
    - ``{p}:alert:{alert_id}``          string: alert JSON; expires after retention once resolved
    - ``{p}:alerts:recent``             sorted set: alert_id scored by when it opened
    - ``{p}:alerts:open``               hash: "patient|kind" -> alert_id
    - ``{p}:alerts:acknowledged``       hash: alert_id -> JSON {by, at}
    - ``{p}:news2``                     hash: patient_id -> latest NEWS2 JSON
    - ``{p}:engine``                    hash: patient_id -> the anomaly engine's state JSON
    - ``{p}:rules``                     hash: patient_id -> rules JSON set through the API
    - ``{p}:fhir:{type}:{id}``          string: a FHIR resource's JSON (recent window)
    - ``{p}:fhir:reading:{reading_id}`` string: the reading its vital-sign Observations are
                                          rebuilt from (they are not stored one by one)
    - ``{p}:fhir:index:{type}``         sorted set: id scored by the resource's time
    - ``{p}:fhir:index:{type}:{patient}`` sorted set: the same, for one patient
    - ``{p}:events``                    stream of live events for dashboards
    - ``{p}:audit``                     stream: who read which patient's data (API audit log)
    - ``{p}:stats:{component}``         hash of counters shared by all instances
    - ``{p}:latency``                   hash: histogram bucket -> count
    """

    prefix: str = "hs"

    @property
    def patients(self) -> str:
        return f"{self.prefix}:patients"

    def latest(self, patient_id: str) -> str:
        return f"{self.prefix}:latest:{patient_id}"

    def history(self, patient_id: str) -> str:
        return f"{self.prefix}:history:{patient_id}"

    def seen(self, patient_id: str) -> str:
        return f"{self.prefix}:seen:{patient_id}"

    def alert(self, alert_id: str) -> str:
        return f"{self.prefix}:alert:{alert_id}"

    @property
    def recent_alerts(self) -> str:
        return f"{self.prefix}:alerts:recent"

    @property
    def open_alerts(self) -> str:
        return f"{self.prefix}:alerts:open"

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
    def acknowledged(self) -> str:
        return f"{self.prefix}:alerts:acknowledged"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def fhir(self, resource_type: str, resource_id: str) -> str:
        return f"{self.prefix}:fhir:{resource_type}:{resource_id}"

    def fhir_reading(self, reading_id: str) -> str:
        return f"{self.prefix}:fhir:reading:{reading_id}"

    def fhir_index(self, resource_type: str, patient_id: str | None = None) -> str:
        base = f"{self.prefix}:fhir:index:{resource_type}"
        return base if patient_id is None else f"{base}:{patient_id}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}:audit"

    def stats(self, component: str) -> str:
        return f"{self.prefix}:stats:{component}"

    @property
    def latency(self) -> str:
        return f"{self.prefix}:latency"
