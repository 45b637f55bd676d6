"""The Redis live cache, written by the processor: latest vitals, history, alerts, events.

A batch is written in one MULTI/EXEC transaction that also records its reading
ids as seen. Before the steps run, the processor asks which readings were seen
already, so a batch replayed after a crash changes nothing: it was either
written whole or not at all.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis import Redis

from healthsync.config import RedisSettings
from healthsync.metrics import StatsRecorder
from healthsync.readings import Reading
from healthsync.stream.alerts import Alert
from healthsync.stream.batch import Batch
from healthsync.stream.news2 import PARAMETERS, Observed, observed_in
from healthsync.stream.rules import PatientRules

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

    def __init__(self, client: Redis, settings: RedisSettings, stats: StatsRecorder) -> None:
        self.client = client
        self.settings = settings
        self.keys = settings.keys
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
            for name, raw in zip(PARAMETERS, entries, strict=True):
                if raw is not None:
                    entry = orjson.loads(raw)
                    observed[name] = (entry["value"], entry["ts"], entry["reading_id"])
            state[patient] = observed
        return state

    def load_open_alerts(self) -> list[Alert]:
        ids: list[bytes] = self.client.hvals(self.keys.open_alerts)  # type: ignore[assignment]
        if not ids:
            return []
        docs: list[bytes | None] = self.client.mget([self.keys.alert(i.decode()) for i in ids])  # type: ignore[assignment]
        return [Alert.from_dict(orjson.loads(doc)) for doc in docs if doc is not None]

    def load_states(self, patients: list[str] | None) -> dict[str, dict[str, Any]]:
        """The anomaly engine's saved state of these patients (None: of every patient)."""
        if patients is None:
            stored: dict[bytes, bytes] = self.client.hgetall(self.keys.engine)  # type: ignore[assignment]
            return {k.decode(): orjson.loads(v) for k, v in stored.items()}
        values: list[bytes | None] = self.client.hmget(self.keys.engine, patients)  # type: ignore[assignment]
        return {p: orjson.loads(v) for p, v in zip(patients, values, strict=True) if v is not None}

    def load_rules(self, patients: list[str]) -> dict[str, PatientRules]:
        """The rules clinicians set for these patients through the API."""
        values: list[bytes | None] = self.client.hmget(self.keys.rules, patients)  # type: ignore[assignment]
        return {
            p: PatientRules.model_validate_json(v)
            for p, v in zip(patients, values, strict=True)
            if v is not None
        }

    def write(self, batch: Batch) -> None:
        keys = self.keys
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
            pipe.hset(keys.latest(patient), mapping={v: orjson.dumps(e) for v, e in fields.items()})
            pipe.zadd(keys.history(patient), history[patient])
            pipe.zadd(keys.seen(patient), seen[patient])
            pipe.xadd(
                keys.events,
                {"type": "vitals", "patient_id": patient, "data": orjson.dumps(fields)},
                maxlen=self.settings.events_maxlen,
                approximate=True,
            )
            if now - self._trimmed_at.get(patient, 0.0) > _TRIM_INTERVAL_S:
                self._trimmed_at[patient] = now
                pipe.zremrangebyscore(keys.history(patient), "-inf", cutoff)
                pipe.zremrangebyscore(keys.seen(patient), "-inf", cutoff)
        if last_seen:
            pipe.zadd(keys.patients, last_seen, gt=True)
        if now - self._alerts_trimmed_at > _TRIM_INTERVAL_S:
            # Resolved alerts expire on their own; drop their index entries too.
            self._alerts_trimmed_at = now
            pipe.zremrangebyscore(keys.recent_alerts, "-inf", cutoff)
        if batch.scores:
            pipe.hset(
                keys.news2,
                mapping={p: orjson.dumps(score.to_dict()) for p, score in batch.scores.items()},
            )
        if batch.states:
            pipe.hset(
                keys.engine, mapping={p: orjson.dumps(state) for p, state in batch.states.items()}
            )
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
            slot = f"{alert.patient_id}|{alert.kind}"
            if alert.status == "open":
                pipe.set(keys.alert(alert.alert_id), doc)
                pipe.hset(keys.open_alerts, slot, alert.alert_id)
                pipe.zadd(keys.recent_alerts, {alert.alert_id: alert.opened_at}, nx=True)
            else:
                pipe.set(keys.alert(alert.alert_id), doc, ex=self.settings.history_retention_s)
                pipe.hdel(keys.open_alerts, slot)
            pipe.xadd(
                keys.events,
                {"type": f"alert.{event.type}", "patient_id": alert.patient_id, "data": doc},
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
                {"type": "artefact", "patient_id": artefact.patient_id, "data": orjson.dumps(doc)},
                maxlen=self.settings.events_maxlen,
                approximate=True,
            )
            self.stats.inc("artefacts_total", vital=artefact.vital)

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
