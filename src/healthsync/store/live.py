"""The Redis live cache, written by the processor: latest vitals, history, alerts, events.

A batch is written in one MULTI/EXEC transaction that also records its reading
ids as seen, and how far each partition's stored batches reach (``{p}:offsets``).
Before the steps run, the processor asks which readings were seen
already (:mod:`healthsync.store.state`), so a batch replayed after a crash
changes nothing: it was either written whole or not at all.

Redis may come back from a restart without its last second of writes (AOF with
``appendfsync everysec``), while the processor already committed those
offsets to Kafka. So before writing, the transaction watches ``{p}:offsets``:
when a partition's stored reach is below the batch's first offset, the sink
raises :class:`~healthsync.errors.StoreBehindError` and writes nothing; the
processor then consumes again from the stored reach and reloads its state.
Redis's AOF replays a prefix of the transactions, so what remains is
consistent with the offsets it records.

What is stored under each key, and how it is sealed, is in
:mod:`healthsync.store.records`; patients appear in key names and members only
as pseudonyms.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis import Redis
from redis.typing import EncodableT, FieldT

from healthsync.config import RedisSettings
from healthsync.domain.batch import Batch
from healthsync.domain.news2 import observed_in
from healthsync.domain.readings import Reading
from healthsync.errors import StoreBehindError
from healthsync.metrics import StatsRecorder
from healthsync.store import hourly
from healthsync.store.records import LatestValue, Records, latest_value

# Trim a patient's history and seen-set at most this often, not on every batch.
_TRIM_INTERVAL_S = 60.0


class RedisLiveSink:
    """A Sink over one Redis; `stats` are flushed inside the same transaction."""

    def __init__(
        self, client: Redis, settings: RedisSettings, stats: StatsRecorder, records: Records
    ) -> None:
        self.client = client
        self.settings = settings
        self.records = records
        self.keys = records.keys
        self.stats = stats
        self._pipe: Any = None
        self._trimmed_at: dict[str, float] = {}
        self._alerts_trimmed_at = 0.0
        self._written: list[Reading] = []

    def write(self, batch: Batch) -> None:
        pipe = self.client.pipeline(transaction=True)
        if batch.positions:
            self._guard(pipe, batch.positions)
        now = time.time()
        self._write_readings(pipe, batch.readings, now)
        if now - self._alerts_trimmed_at > _TRIM_INTERVAL_S:
            # Resolved alerts expire on their own; drop their index entries too.
            self._alerts_trimmed_at = now
            cutoff = now - self.settings.history_retention_s
            pipe.zremrangebyscore(self.keys.recent_alerts, "-inf", cutoff)
        self._write_state(pipe, batch)
        self._write_alerts(pipe, batch)
        self._write_artefacts(pipe, batch)
        self.stats.inc("readings_processed_total", len(batch.readings))
        self.stats.add_to(pipe)
        hourly.count_into(pipe, self.keys, batch.readings)
        self._pipe = pipe
        self._written = batch.readings

    def _guard(self, pipe: Any, positions: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Start the transaction only if Redis holds every batch before this one.

        WATCH makes the EXEC fail if the reach changes or the connection drops
        (a restart) before it; the processor's retry then checks again.
        """
        key = self.keys.offsets
        fields = [f"{topic}:{partition}" for topic, partition in positions]
        pipe.watch(key)
        stored = pipe.hmget(key, fields)
        behind: dict[tuple[str, int], int] = {}
        reach: dict[str, int] = {}
        for name, (tp, (first, after)), raw in zip(fields, positions.items(), stored, strict=True):
            # No record: nothing of this partition is stored, so it is replayed from the start.
            have = int(raw) if raw is not None else 0
            if have < first:
                behind[tp] = have
            reach[name] = max(have, after)
        if behind:
            pipe.reset()
            raise StoreBehindError(behind)
        pipe.multi()
        pipe.hset(key, mapping=reach)

    def _write_readings(self, pipe: Any, readings: list[Reading], now: float) -> None:
        keys, records = self.keys, self.records
        cutoff = now - self.settings.history_retention_s
        latest: dict[str, dict[str, LatestValue]] = {}
        history: dict[str, dict[bytes, float]] = {}
        seen: dict[str, dict[str, float]] = {}
        last_seen: dict[str, float] = {}
        for reading in readings:
            patient = reading.patient_id
            fields = latest.setdefault(patient, {})
            for name, value in observed_in(reading).items():
                fields[name] = latest_value(reading, value)
            for vital, value in reading.vitals.items():
                if vital not in fields:
                    fields[vital] = latest_value(reading, value)
            history.setdefault(patient, {})[records.encode_history(patient, reading)] = reading.ts
            seen.setdefault(patient, {})[reading.reading_id] = reading.ts
            last_seen[patient] = max(last_seen.get(patient, 0.0), reading.ts)
        for patient, fields in latest.items():
            pipe.hset(keys.latest(patient), mapping=records.encode_latest(patient, fields))
            pipe.zadd(keys.history(patient), history[patient])
            pipe.zadd(keys.seen(patient), seen[patient])
            self._event(pipe, "vitals", patient, orjson.dumps(fields))
            if now - self._trimmed_at.get(patient, 0.0) > _TRIM_INTERVAL_S:
                self._trimmed_at[patient] = now
                pipe.zremrangebyscore(keys.history(patient), "-inf", cutoff)
                pipe.zremrangebyscore(keys.seen(patient), "-inf", cutoff)
        if last_seen:
            ids = dict(records.encode_patient_id(patient) for patient in last_seen)
            tags = {patient: keys.patient(patient) for patient in last_seen}
            pipe.zadd(keys.patients, {tags[p]: ts for p, ts in last_seen.items()}, gt=True)
            pipe.hset(keys.patient_ids, mapping=ids)

    def _write_state(self, pipe: Any, batch: Batch) -> None:
        """The latest NEWS2 and the anomaly engine's state of the patients the batch changed."""
        records = self.records
        if batch.scores:
            scores = dict(records.encode_score(p, score) for p, score in batch.scores.items())
            pipe.hset(self.keys.news2, mapping=scores)
        if batch.states:
            states = dict(records.encode_state(p, state) for p, state in batch.states.items())
            pipe.hset(self.keys.engine, mapping=states)

    def _write_alerts(self, pipe: Any, batch: Batch) -> None:
        keys = self.keys
        for event in batch.alert_events:
            alert = event.alert
            doc = orjson.dumps(alert.to_dict())
            slot = keys.open_slot(alert.patient_id, alert.kind)
            key = keys.alert(alert.alert_id)
            sealed = self.records.encode_alert(alert, doc)
            if alert.status == "open":
                pipe.set(key, sealed)
                pipe.hset(keys.open_alerts, slot, alert.alert_id)
                pipe.zadd(keys.recent_alerts, {alert.alert_id: alert.opened_at}, nx=True)
            else:
                pipe.set(key, sealed, ex=self.settings.history_retention_s)
                pipe.hdel(keys.open_alerts, slot)
            self._event(pipe, f"alert.{event.type}", alert.patient_id, doc)
            self.stats.inc("alerts_total", event=event.type)

    def _write_artefacts(self, pipe: Any, batch: Batch) -> None:
        for artefact in batch.artefacts:
            doc = {
                "vital": artefact.vital,
                "ts": artefact.ts,
                "value": artefact.value,
                "reading_id": artefact.reading_id,
            }
            self._event(pipe, "artefact", artefact.patient_id, orjson.dumps(doc))
            self.stats.inc("artefacts_total", vital=artefact.vital)

    def _event(self, pipe: Any, kind: str, patient: str, data: bytes) -> None:
        fields: dict[FieldT, EncodableT] = self.records.encode_event(kind, patient, data)
        pipe.xadd(self.keys.events, fields, maxlen=self.settings.events_maxlen, approximate=True)

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
