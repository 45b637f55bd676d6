"""The Redis live cache, written by the processor: latest vitals, history, alerts, events.

A batch is written in one MULTI/EXEC transaction that also records its reading
ids as seen. Before the steps run, the processor asks which readings were seen
already, so a batch replayed after a crash changes nothing: it was either
written whole or not at all.

Every value that holds PHI goes through the codec (sealed, bound to its key and
field) and patients appear in key names and members only as pseudonyms; a
value the keyring can no longer open (its key retired) reads as absent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from redis import Redis
from redis.typing import EncodableT, FieldT

from healthsync.config import RedisSettings
from healthsync.metrics import StatsRecorder
from healthsync.readings import Reading
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.stream.alerts import Alert
from healthsync.stream.batch import Batch
from healthsync.stream.news2 import PARAMETERS, Observed, observed_in
from healthsync.stream.rules import PatientRules

log = logging.getLogger(__name__)

# Trim a patient's history and seen-set at most this often, not on every batch.
_TRIM_INTERVAL_S = 60.0


def latest_entry(reading: Reading, value: Any) -> dict[str, Any]:
    return {
        "value": value,
        "ts": reading.ts,
        "reading_id": reading.reading_id,
        "device_id": reading.device_id,
    }


def history_entry(reading: Reading) -> bytes:
    return orjson.dumps(
        {
            "id": reading.reading_id,
            "ts": reading.ts,
            "device": reading.device_id,
            "v": reading.vitals,
        }
    )


class RedisLiveSink:
    """A Sink over one Redis; `stats` are flushed inside the same transaction."""

    def __init__(
        self, client: Redis, settings: RedisSettings, stats: StatsRecorder, codec: Codec
    ) -> None:
        self.client = client
        self.settings = settings
        self.codec = codec
        self.keys = codec.keys
        self.stats = stats
        self._pipe: Any = None
        self._trimmed_at: dict[str, float] = {}
        self._alerts_trimmed_at = 0.0
        self._written: list[Reading] = []

    def filter_new(self, readings: list[Reading]) -> list[Reading]:
        """The readings not stored yet, first occurrence only, in their original order."""
        by_patient: dict[str, list[str]] = {}
        for reading in readings:
            by_patient.setdefault(reading.patient_id, []).append(reading.reading_id)
        pipe = self.client.pipeline(transaction=False)
        patients = list(by_patient)
        for patient in patients:
            pipe.zmscore(self.keys.seen(patient), by_patient[patient])
        seen: set[str] = set()
        for patient, scores in zip(patients, pipe.execute(), strict=True):
            seen.update(
                rid
                for rid, score in zip(by_patient[patient], scores, strict=True)
                if score is not None
            )
        fresh = []
        for reading in readings:
            if reading.reading_id not in seen:
                seen.add(reading.reading_id)  # a duplicate inside the batch counts once
                fresh.append(reading)
        return fresh

    def load_observed(self, patients: list[str]) -> dict[str, Observed]:
        """Per patient and NEWS2 parameter: the latest value, its time and its reading id."""
        pipe = self.client.pipeline(transaction=False)
        for patient in patients:
            pipe.hmget(self.keys.latest(patient), list(PARAMETERS))
        state: dict[str, Observed] = {}
        for patient, entries in zip(patients, pipe.execute(), strict=True):
            observed: Observed = {}
            key = self.keys.latest(patient)
            for name, raw in zip(PARAMETERS, entries, strict=True):
                plain = self._open(raw, self.codec.field(key, name))
                if plain is not None:
                    entry = orjson.loads(plain)
                    observed[name] = (entry["value"], entry["ts"], entry["reading_id"])
            state[patient] = observed
        return state

    def load_open_alerts(self) -> list[Alert]:
        ids: list[bytes] = self.client.hvals(self.keys.open_alerts)  # type: ignore[assignment]
        if not ids:
            return []
        keys = [self.keys.alert(i.decode()) for i in ids]
        docs: list[bytes | None] = self.client.mget(keys)  # type: ignore[assignment]
        plain = (self._open(doc, key) for doc, key in zip(docs, keys, strict=True))
        return [Alert.from_dict(orjson.loads(doc)) for doc in plain if doc is not None]

    def _open(self, value: bytes | None, place: str) -> bytes | None:
        """A stored value's plaintext; None if absent or no longer readable (key retired)."""
        if value is None:
            return None
        try:
            return self.codec.open(value, place)
        except DecryptError as exc:
            # Treated as absent: state sealed with a retired key is gone by design.
            self.stats.inc("undecryptable_total")
            log.warning("stored state unreadable, ignored", extra={"error": str(exc)})
            return None

    def load_states(self, patients: list[str] | None) -> dict[str, dict[str, Any]]:
        """The anomaly engine's saved state of these patients (None: of every patient)."""
        key = self.keys.engine
        if patients is None:
            stored: dict[bytes, bytes] = self.client.hgetall(key)  # type: ignore[assignment]
            pairs: list[tuple[str, bytes | None]] = [
                (tag.decode(), value) for tag, value in stored.items()
            ]
        else:
            tags = [self.keys.patient(p) for p in patients]
            values: list[bytes | None] = self.client.hmget(key, tags)  # type: ignore[assignment]
            pairs = list(zip(tags, values, strict=True))
        states: dict[str, dict[str, Any]] = {}
        for tag, value in pairs:
            plain = self._open(value, self.codec.field(key, tag))
            if plain is not None:
                doc = orjson.loads(plain)
                states[doc.pop("patient_id")] = doc  # the field is only a pseudonym
        return states

    def load_rules(self, patients: list[str]) -> dict[str, PatientRules]:
        """The rules clinicians set for these patients through the API."""
        key = self.keys.rules
        tags = [self.keys.patient(p) for p in patients]
        values: list[bytes | None] = self.client.hmget(key, tags)  # type: ignore[assignment]
        rules: dict[str, PatientRules] = {}
        for patient, tag, value in zip(patients, tags, values, strict=True):
            plain = self._open(value, self.codec.field(key, tag))
            if plain is not None:
                rules[patient] = PatientRules.model_validate_json(plain)
        return rules

    def write(self, batch: Batch) -> None:
        keys, codec = self.keys, self.codec
        pipe = self.client.pipeline(transaction=True)
        now = time.time()
        cutoff = now - self.settings.history_retention_s
        latest: dict[str, dict[str, dict[str, Any]]] = {}
        history: dict[str, dict[bytes, float]] = {}
        seen: dict[str, dict[str, float]] = {}
        last_seen: dict[str, float] = {}
        for reading in batch.readings:
            patient = reading.patient_id
            fields = latest.setdefault(patient, {})
            for name, value in observed_in(reading).items():
                fields[name] = latest_entry(reading, value)
            for vital, value in reading.vitals.items():
                if vital not in fields:
                    fields[vital] = latest_entry(reading, value)
            history.setdefault(patient, {})[history_entry(reading)] = reading.ts
            seen.setdefault(patient, {})[reading.reading_id] = reading.ts
            last_seen[patient] = max(last_seen.get(patient, 0.0), reading.ts)
        for patient, fields in latest.items():
            key = keys.latest(patient)
            pipe.hset(
                key,
                mapping={
                    v: codec.seal(orjson.dumps(e), codec.field(key, v)) for v, e in fields.items()
                },
            )
            key = keys.history(patient)
            pipe.zadd(key, {codec.seal(entry, key): ts for entry, ts in history[patient].items()})
            pipe.zadd(keys.seen(patient), seen[patient])
            pipe.xadd(
                keys.events,
                self._event("vitals", patient, orjson.dumps(fields)),
                maxlen=self.settings.events_maxlen,
                approximate=True,
            )
            if now - self._trimmed_at.get(patient, 0.0) > _TRIM_INTERVAL_S:
                self._trimmed_at[patient] = now
                pipe.zremrangebyscore(keys.history(patient), "-inf", cutoff)
                pipe.zremrangebyscore(keys.seen(patient), "-inf", cutoff)
        if last_seen:
            tags = {patient: keys.patient(patient) for patient in last_seen}
            pipe.zadd(keys.patients, {tags[p]: ts for p, ts in last_seen.items()}, gt=True)
            pipe.hset(
                keys.patient_ids,
                mapping={
                    tag: codec.seal(patient.encode(), codec.field(keys.patient_ids, tag))
                    for patient, tag in tags.items()
                },
            )
        if now - self._alerts_trimmed_at > _TRIM_INTERVAL_S:
            # Resolved alerts expire on their own; drop their index entries too.
            self._alerts_trimmed_at = now
            pipe.zremrangebyscore(keys.recent_alerts, "-inf", cutoff)
        if batch.scores:
            mapping: dict[FieldT, EncodableT] = {}
            for patient, score in batch.scores.items():
                tag = keys.patient(patient)
                mapping[tag] = codec.seal(
                    orjson.dumps(score.to_dict()), codec.field(keys.news2, tag)
                )
            pipe.hset(keys.news2, mapping=mapping)
        if batch.states:
            mapping = {}
            for patient, state in batch.states.items():
                tag = keys.patient(patient)
                doc = orjson.dumps({"patient_id": patient, **state})
                mapping[tag] = codec.seal(doc, codec.field(keys.engine, tag))
            pipe.hset(keys.engine, mapping=mapping)
        self._write_alerts(pipe, batch)
        self._write_artefacts(pipe, batch)
        self.stats.inc("readings_processed_total", len(batch.readings))
        self.stats.add_to(pipe)
        self._pipe = pipe
        self._written = batch.readings

    def _write_alerts(self, pipe: Any, batch: Batch) -> None:
        keys = self.keys
        for event in batch.alert_events:
            alert = event.alert
            doc = orjson.dumps(alert.to_dict())
            slot = keys.open_slot(alert.patient_id, alert.kind)
            key = keys.alert(alert.alert_id)
            sealed = self.codec.seal(doc, key)
            if alert.status == "open":
                pipe.set(key, sealed)
                pipe.hset(keys.open_alerts, slot, alert.alert_id)
                pipe.zadd(keys.recent_alerts, {alert.alert_id: alert.opened_at}, nx=True)
            else:
                pipe.set(key, sealed, ex=self.settings.history_retention_s)
                pipe.hdel(keys.open_alerts, slot)
            pipe.xadd(
                keys.events,
                self._event(f"alert.{event.type}", alert.patient_id, doc),
                maxlen=self.settings.events_maxlen,
                approximate=True,
            )
            self.stats.inc("alerts_total", event=event.type)

    def _write_artefacts(self, pipe: Any, batch: Batch) -> None:
        for artefact in batch.artefacts:
            doc = {
                "vital": artefact.vital,
                "ts": artefact.ts,
                "value": artefact.value,
                "reading_id": artefact.reading_id,
            }
            pipe.xadd(
                self.keys.events,
                self._event("artefact", artefact.patient_id, orjson.dumps(doc)),
                maxlen=self.settings.events_maxlen,
                approximate=True,
            )
            self.stats.inc("artefacts_total", vital=artefact.vital)

    def _event(self, kind: str, patient: str, data: bytes) -> dict[FieldT, EncodableT]:
        """A live event; its patient id and data are sealed, each bound to its field."""
        codec, stream = self.codec, self.keys.events
        return {
            "type": kind,
            "patient_id": codec.seal(patient.encode(), codec.field(stream, "patient_id")),
            "data": codec.seal(data, codec.field(stream, "data")),
        }

    def flush(self) -> None:
        if self._pipe is None:
            return
        self._pipe.execute()
        self._pipe = None
        done = time.time()
        self.stats.observe_latencies(done - r.received_at for r in self._written)
        self._written = []

    def flush_stats(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.stats.add_to(pipe)
        pipe.execute()
