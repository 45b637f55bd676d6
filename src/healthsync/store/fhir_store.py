"""The recent window of FHIR resources in Redis, for the FHIR read API.

Layout (see names.RedisKeys):

- ``{p}:fhir:reading:{reading_id}``: the reading (without demographics) that
  its vital-sign Observations are a pure function of. They are rebuilt from it
  on read rather than stored: five full resources per reading would cost the
  processor most of its time and Redis twenty times the memory.
- ``{p}:fhir:{type}:{id}``: the resource's JSON, for every other resource.
  NEWS2 Observations and RiskAssessments expire after the history retention; a Communication or Flag
  expires once its alert is over (completed, inactive), never while it is
  open, so a long-open alert keeps its banner. A Patient is removed when its
  patient leaves (:mod:`healthsync.stream.devices`); Devices never expire.
- ``{p}:fhir:index:{type}`` and ``{p}:fhir:index:{type}:{patient}``: sorted
  sets of ids scored by the resource's time (epoch seconds): effective time
  for an Observation, occurrence for a RiskAssessment, sent for a
  Communication, period start for a Flag, last update for Patient and Device
  (which have only the first index). ``{patient}`` is the FHIR id in the
  resource's ``subject``.
- ``{p}:fhir:index:reading:{n}`` and ``{p}:fhir:index:reading:{n}:{patient}``:
  the readings whose vital-sign Observations are rebuilt, by the number ``n``
  of Observations each makes, scored by their effective time. A reading is
  one entry in each, not one per Observation: per-Observation entries took
  about half of Redis's CPU per reading (docs/SCALE.md). Kept apart by ``n``
  so that a search still counts Observations exactly, with one ZCOUNT per
  index; the FHIR reader walks them together with the Observation index,
  which holds the other Observations (NEWS2), and any vital-sign ones
  indexed one by one before this layout.

Indexes are trimmed to the retention now and then: by score for
Observation and RiskAssessment, whose indexes are also set to expire with it
(a patient who stops sending is never trimmed again; see
:mod:`healthsync.store.retention`); for Communication and Flag by whether the
resource is still stored (an alert open for days keeps its index entry).
Every write is a SET or a ZADD of the same member and score, so a replayed
batch changes nothing. Stored JSON is sealed by the codec, bound to its key;
index members are resource ids (a Patient's is its pseudonym), which name no
patient: reading ids and alert ids are digests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from itertools import chain
from typing import Any

import orjson
from redis import Redis

from healthsync.config import RedisSettings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading, isoformat_ms
from healthsync.fhir.ids import fhir_id, is_reading_id, observation_count, reading_of_observation
from healthsync.fhir.observations import unbundled
from healthsync.store import retention
from healthsync.store.fhir_order import indexes_of
from healthsync.store.multi import get_many
from healthsync.store.records import Records
from healthsync.store.transaction import execute_transaction

# Kept for the retention; their indexes are trimmed by score.
_WINDOWED = frozenset({"Observation", "RiskAssessment"})
# An alert's resources: kept while the alert is open, for the retention once it is over;
# their indexes are trimmed of what is no longer stored.
_ALERTS = frozenset({"Communication", "Flag"})
_OVER = frozenset({"completed", "inactive", "entered-in-error", "stopped", "not-done"})


# Where each type keeps the time its indexes score it by.
_TIME_PATHS: dict[str, tuple[str, ...]] = {
    "Observation": ("effectiveDateTime",),
    "Communication": ("sent",),
    "RiskAssessment": ("occurrenceDateTime",),
    "Flag": ("period", "start"),
}
_LAST_UPDATED = ("meta", "lastUpdated")


def resource_time(resource: dict[str, Any]) -> str | None:
    """The instant the indexes score a resource by, as written in the resource."""
    value: Any = resource
    for part in _TIME_PATHS.get(resource["resourceType"], _LAST_UPDATED):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) else None


def subject_id(resource: dict[str, Any]) -> str | None:
    reference = resource.get("subject", {}).get("reference", "")
    kind, _, rid = reference.partition("/")
    return rid if kind == "Patient" and rid else None


# SET of many keys with one expiry, as one command: per-key SET calls cost the
# processor ~25 us each in the client, five times per reading. Sent with EVAL (its
# few hundred bytes each batch; Redis keeps it compiled), not as a registered script:
# in a pipeline, redis-py checks that a registered script is loaded (SCRIPT EXISTS) in
# a round trip of its own before every transaction.
_SET_MANY = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[i + 1])
  end
end
return #KEYS
"""


# Resource times recur (a reading's Observations share one): parse each once.
@lru_cache(maxsize=1 << 14)
def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@lru_cache(maxsize=1 << 14)
def _score(stamp: str) -> bytes:
    """The index score of a reading's Observations, as the client would send it (the
    float's repr), formatted once for both of the reading's index entries."""
    return repr(_epoch(stamp)).encode()


class RedisFhirSink:
    """A Sink: each batch's ``resources`` in one MULTI/EXEC transaction.

    On a Redis Cluster, whose transactions and scripts stay within one hash
    slot, the same writes go in a plain pipeline, split by slot: each is a
    SET or ZADD of the same value, so a batch written in part and replayed
    ends the same; until the replay a search may see part of a batch.
    """

    def __init__(self, client: Redis, settings: RedisSettings, records: Records) -> None:
        self.client = client
        self.settings = settings
        self.records = records
        self.keys = records.keys
        self.clustered = settings.clustered
        self._pipe: Any = None
        self._indexes: dict[str, dict[str, float | bytes]] = {}
        self._index_types: dict[str, str] = {}
        self._trims = retention.TrimClock()

    def load(self, resource_type: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored resources among `ids` (a ResourceLoader for the FHIR step)."""
        if not ids:
            return {}
        keys = [self.keys.fhir(resource_type, i) for i in ids]
        docs = get_many(self.client, keys)
        return {
            i: self.records.decode_resource(key, doc)
            for i, key, doc in zip(ids, keys, docs, strict=True)
            if doc is not None
        }

    def write(self, batch: Batch) -> None:
        resources = batch.resources
        if not resources and not batch.readings and not batch.departed:
            self._pipe = None
            return
        retention_s = self.settings.history_retention_s
        pipe = self.client.pipeline(transaction=not self.clustered)
        # What this batch indexes.
        self._indexes, self._index_types = {}, {}
        # ttl (0 = none) -> (keys, values)
        writes: dict[int, tuple[list[str], list[bytes]]] = {0: ([], []), retention_s: ([], [])}
        self._add_readings(batch.readings, writes[retention_s])
        # A reading's Observations are rebuilt from the reading on read, unless its id is
        # not a reading id: then they are stored whole (see _add_readings).
        whole = [orjson.loads(b.json) for b in batch.bundles if not is_reading_id(b.reading_id)]
        for resource in unbundled(chain((r for _key, r in resources), whole)):
            kind, rid = resource["resourceType"], resource["id"]
            if kind == "Observation" and reading_of_observation(rid) is not None:
                continue  # rebuilt from its reading on read, indexed with it
            expires = kind in _WINDOWED or (kind in _ALERTS and resource.get("status") in _OVER)
            self._add_resource(resource, writes[retention_s if expires else 0])
        for ttl, (names, values) in writes.items():
            if names and self.clustered:
                for name, value in zip(names, values, strict=True):
                    pipe.set(name, value, ex=ttl or None)
            elif names:
                pipe.eval(_SET_MANY, len(names), *names, ttl, *values)
        for index, members in self._indexes.items():
            pipe.zadd(index, members)
        self._trim(pipe, self._indexes, self._index_types)
        self._expire_departed(pipe, batch.departed)
        self._pipe = pipe

    def _index(self, index: str, kind: str, members: Mapping[str, float | bytes]) -> None:
        self._indexes.setdefault(index, {}).update(members)
        self._index_types[index] = kind

    def _add_readings(self, readings: list[Reading], out: tuple[list[str], list[bytes]]) -> None:
        keys, id_key = self.keys, self.records.codec.id_key
        for reading in readings:
            name, value = self.records.encode_fhir_reading(reading)
            out[0].append(name)
            out[1].append(value)
            count = observation_count(reading.vitals)
            if not count or not is_reading_id(reading.reading_id):
                continue  # no Observations, or stored and indexed whole (see write())
            # The reading stands for its Observations in the index of readings that
            # make as many, scored by the instant written in their effectiveDateTime.
            member: dict[str, float | bytes] = {
                reading.reading_id: _score(isoformat_ms(reading.ts))
            }
            self._index(keys.fhir_reading_index(count), "Observation", member)
            patient = fhir_id(reading.patient_id, id_key)
            self._index(keys.fhir_reading_index(count, patient), "Observation", member)

    def _add_resource(self, resource: dict[str, Any], out: tuple[list[str], list[bytes]]) -> None:
        name, value = self.records.encode_resource(resource)
        out[0].append(name)
        out[1].append(value)
        stamp = resource_time(resource)
        if stamp is None:
            return
        score = _epoch(stamp)
        kind = resource["resourceType"]
        member = {self.keys.fhir_member(kind, resource["id"]): score}
        self._index(self.keys.fhir_index(kind), kind, member)
        patient = subject_id(resource)
        if patient is not None:
            self._index(self.keys.fhir_index(kind, patient), kind, member)

    def _trim(
        self, pipe: Any, indexes: dict[str, dict[str, float | bytes]], index_types: dict[str, str]
    ) -> None:
        now = time.time()
        retention_s = self.settings.history_retention_s
        cutoff = now - retention_s
        alerts: list[tuple[str, str]] = []
        for index, kind in index_types.items():
            if kind not in _WINDOWED and kind not in _ALERTS:
                continue
            if not self._trims.due(index, now):
                continue
            if kind in _WINDOWED:
                # Expiring too, should its patient stop sending (see store.retention).
                retention.trim(pipe, index, now, retention_s)
            else:
                alerts.append((index, kind))
        if alerts:
            self._trim_alerts(pipe, alerts, indexes, cutoff)

    def _expire_departed(self, pipe: Any, departed: list[str]) -> None:
        """Trim the windowed indexes of patients who left (see
        :mod:`healthsync.stream.devices`), and let what is left expire with the
        retention: an index written before indexes expired has no expiry of its own.
        Their Patient goes at once: its demographics (name, MRN, address) serve no
        one once the patient has left, and the archive keeps them."""
        keys, id_key = self.keys, self.records.codec.id_key
        now, retention_s = time.time(), self.settings.history_retention_s
        for patient in departed:
            fid = fhir_id(patient, id_key)
            for kind in sorted(_WINDOWED):  # Observation's include the readings' indexes
                for index in indexes_of(keys, kind, fid):
                    retention.trim(pipe, index.key, now, retention_s)
            pipe.delete(keys.fhir("Patient", fid))  # one key a command: a cluster's slots
            pipe.delete(keys.fhir_index("Patient", fid))
            pipe.zrem(keys.fhir_index("Patient"), keys.fhir_member("Patient", fid))

    def _trim_alerts(
        self,
        pipe: Any,
        due: list[tuple[str, str]],
        indexes: dict[str, dict[str, float | bytes]],
        cutoff: float,
    ) -> None:
        """Drop from alert indexes the entries older than the retention whose resource
        has expired; one still open stays, and so does anything this batch writes.

        Two round trips for all of the batch's indexes, not two per index: a
        batch that changes many patients' alerts (a ward's monitors going
        offline together after a network fault, or coming back) finds each
        of their indexes due, and one read each (1,000 patients: 2,000
        reads) held that batch back by most of a second.
        """
        read = self.client.pipeline(transaction=False)
        for index, _kind in due:
            read.zrangebyscore(index, "-inf", cutoff)
        old: list[list[bytes]] = read.execute()
        candidates = [
            (index, kind, rid)
            for (index, kind), members in zip(due, old, strict=True)
            for rid in (m.decode() for m in members)
            if rid not in indexes[index]
        ]
        if not candidates:
            return
        check = self.client.pipeline(transaction=False)
        for _index, kind, rid in candidates:
            check.exists(self.keys.fhir(kind, rid))
        gone: dict[str, list[str]] = {}
        for (index, _kind, rid), there in zip(candidates, check.execute(), strict=True):
            if not there:
                gone.setdefault(index, []).append(rid)
        for index, ids in gone.items():
            pipe.zrem(index, *ids)

    def flush(self) -> None:
        if self._pipe is None:
            return
        pipe, self._pipe = self._pipe, None
        execute_transaction(pipe)
