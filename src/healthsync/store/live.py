"""The Redis live cache, written by the processor: latest vitals, history, alerts, events.

A batch is written in one MULTI/EXEC transaction that also records its reading
ids as seen, and how far each partition's stored batches reach (``{p}:offsets:...``,
one record per partition, so processors owning different partitions never fail
each other's transactions).

On a Redis Cluster, which refuses a transaction across hash slots, the keys
are in patient groups (:class:`healthsync.names.RedisKeys`), and a batch is
one transaction per group: the group's readings, their seen ids, the
patients' NEWS2 and engine state, the group's processed counters and its own
``{g}offsets``, which every batch updates in every group. Each reading is
still stored exactly once with its seen id. What is not a group's (alerts,
the live event stream, the other counters) goes outside those transactions:
alerts and events before them, written again identically or once more by a
replay (an alert is a SET of the same sealed value; an event may come twice),
and the counters after them (a crash between may lose one batch's counts,
never count twice). On a standalone Redis there is one group and everything
is in the one transaction.
Before the steps run, the processor asks which readings were seen
already (:mod:`healthsync.store.state`), so a batch replayed after a crash
changes nothing: it was either written whole or not at all.

Redis may come back from a restart without its last second of writes (AOF with
``appendfsync everysec``), while the processor already committed those
offsets to Kafka. So before writing, the transaction watches those records:
when a partition's stored reach is below the batch's first offset, the sink
raises :class:`~healthsync.errors.StoreBehindError` and writes nothing; the
processor then consumes again from the stored reach and reloads its state.
Redis's AOF replays a prefix of the transactions, so what remains is
consistent with the offsets it records.

A patient's history and seen set are trimmed to ``redis.history_retention_s``
now and then, and set to expire with it, so the readings of a patient who
stops sending leave with the retention too (:mod:`healthsync.store.retention`).

What is stored under each key, and how it is sealed, is in
:mod:`healthsync.store.records`; patients appear in key names and members only
as pseudonyms.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
from redis import Redis
from redis.typing import EncodableT, FieldT

from healthsync.config import RedisSettings
from healthsync.domain.batch import Batch
from healthsync.domain.news2 import observed_in
from healthsync.domain.readings import Reading
from healthsync.errors import StoreBehindError
from healthsync.metrics import Pending, StatsRecorder, field_name
from healthsync.store import hourly, retention
from healthsync.store.latest import Fields, set_newer
from healthsync.store.records import Records, latest_value
from healthsync.store.transaction import execute_transaction


class RedisLiveSink:
    """A Sink over one Redis or a Redis Cluster (`clustered`); see the module doc."""

    def __init__(
        self,
        client: Redis,
        settings: RedisSettings,
        stats: StatsRecorder,
        records: Records,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clustered = settings.clustered
        self.records = records
        self.keys = records.keys
        self.stats = stats
        # Executed in this order by flush(): shared writes (cluster), the groups', counters.
        self._before: Any = None
        self._units: list[Any] = []
        # The counts a written batch took from `stats`, given back unless its flush
        # succeeds, and the ones it counted itself (counted again by a retry).
        self._taken: Pending | None = None
        self._own: Counter[str] = Counter()
        self._after: Any = None
        self._held: list[Any] = []
        self._trims = retention.TrimClock()
        self._acks_cursor = 0  # where the next look for expired alerts' acknowledgements starts
        self._written: list[Reading] = []

    def write(self, batch: Batch) -> None:
        self._discard()
        self._give_back_counts()
        now = time.time()
        trim_alerts = self._trims.due(self.keys.recent_alerts, now)
        # Read before the transaction starts watching (the alerts' own keys are not watched).
        acks_gone = self._acks_of_expired_alerts() if trim_alerts else []
        cutoff = now - self.settings.history_retention_s
        alerts_gone = (
            retention.expired_recent_alerts(self.client, self.keys, cutoff) if trim_alerts else []
        )
        groups = self._groups_of(batch)
        pipes = self._open(groups, batch.positions)
        shared = pipes[0] if not self.clustered else self.client.pipeline(transaction=False)
        self._write_readings(pipes, shared, batch.readings, now)
        self._write_state(pipes, batch)
        self._write_departures(pipes, batch.departed, now)
        # Resolved alerts expire on their own; drop their index entries and
        # acknowledgements too (an alert expires once: what is gone stays gone).
        if alerts_gone:
            shared.zrem(self.keys.recent_alerts, *alerts_gone)
        if acks_gone:
            shared.hdel(self.keys.acknowledged, *acks_gone)
        own: Counter[str] = Counter()
        self._write_alerts(shared, batch, own)
        self._write_artefacts(shared, batch, own)
        after = shared if not self.clustered else self.client.pipeline(transaction=False)
        self._taken = self.stats.add_to(after)
        for field, n in own.items():
            after.hincrby(self.stats.key, field, n)
        self._own = own
        if self.clustered:
            self._before, self._after = shared, after
        held = {id(p) for p in self._held}
        self._units = [p for p in dict.fromkeys(pipes.values()) if id(p) not in held]
        self._written = batch.readings

    def _groups_of(self, batch: Batch) -> list[int]:
        """The groups the batch writes to: every group when it moves a partition's reach."""
        if batch.positions:
            return list(self.keys.all_groups)
        group_of = self.keys.group_of
        touched = {group_of(r.patient_id) for r in batch.readings}
        touched.update(map(group_of, batch.scores))
        touched.update(map(group_of, batch.states))
        touched.update(map(group_of, batch.departed))
        return sorted(touched) if touched or self.clustered else [0]

    def _open(
        self, groups: list[int], positions: dict[tuple[str, int], tuple[int, int]]
    ) -> dict[int, Any]:
        """A transaction per group (one for all of them on a standalone Redis), guarded.

        Raises StoreBehindError, with nothing written, if a group misses a batch.
        On a cluster, a group that holds this batch already (its transaction
        went through before another group's failed, and the batch is written
        again) gets a pipeline that is never sent, so nothing is counted twice.
        """
        units = [[g] for g in groups] if self.clustered else [groups]
        pipes: dict[int, Any] = {}
        behind: dict[tuple[str, int], int] = {}
        try:
            for unit in units:
                pipe = self.client.pipeline(transaction=True)
                held = self._guard(pipe, unit, positions, behind) if positions else set()
                if not positions:
                    pipe.multi()
                if self.clustered and held:
                    pipe.reset()
                    pipe = self.client.pipeline(transaction=False)  # never executed
                    self._held.append(pipe)
                for group in unit:
                    pipes[group] = pipe
        except BaseException:
            for pipe in dict.fromkeys(pipes.values()):
                pipe.reset()
            raise
        if behind:
            for pipe in dict.fromkeys(pipes.values()):
                pipe.reset()
            raise StoreBehindError(behind)
        return pipes

    def _guard(
        self,
        pipe: Any,
        groups: list[int],
        positions: dict[tuple[str, int], tuple[int, int]],
        behind: dict[tuple[str, int], int],
    ) -> set[int]:
        """Start the transaction only if each group holds every batch before this one.

        WATCH makes the EXEC fail if a reach changes or the connection drops
        (a restart) before it; the processor's retry then checks again. What
        is behind, and from where, is added to `behind` (the lowest reach).
        Returns the groups whose reach covers the whole batch already.
        """
        offsets = self.keys.offsets
        places = [
            (group, offsets(group, topic, partition), f"{topic}:{partition}", tp, span)
            for group in groups
            for tp, span in positions.items()
            for topic, partition in [tp]
        ]
        fields: dict[str, list[str]] = {}
        for _group, key, field, _tp, _span in places:
            fields.setdefault(key, []).append(field)
        pipe.watch(*fields)
        stored: dict[tuple[str, str], bytes | None] = {}
        for key, names in fields.items():
            stored.update(zip([(key, n) for n in names], pipe.hmget(key, names), strict=True))
        self._carry_over(pipe, stored)
        reach: dict[str, dict[str, int]] = {}
        short: set[int] = set()
        for group, key, field, tp, (first, after) in places:
            # No record: nothing of this partition is stored, so it is replayed from the start.
            raw = stored[(key, field)]
            have = int(raw) if raw is not None else 0
            if have < first:
                behind[tp] = min(have, behind.get(tp, have))
            if have < after:
                short.add(group)
            reach.setdefault(key, {})[field] = max(have, after)
        pipe.multi()
        for key, mapping in reach.items():
            pipe.hset(key, mapping=mapping)
        return set(groups) - short

    def _carry_over(self, pipe: Any, stored: dict[tuple[str, str], bytes | None]) -> None:
        """A partition without a record of its own takes the reach an earlier version kept
        for it in the one shared hash, if any, rather than being replayed from its start.
        That reach was written in the transactions of the batches it counts, so it is never
        ahead of what Redis holds. Nothing writes the hash any more, so it needs no WATCH;
        a reach left behind there costs a replay, never a gap."""
        if self.clustered:
            return
        missing = [place for place, raw in stored.items() if raw is None]
        if missing:
            names = [name for _key, name in missing]
            found = pipe.hmget(self.keys.shared_offsets, names)
            stored.update(zip(missing, found, strict=True))

    def _write_readings(
        self, pipes: dict[int, Any], shared: Any, readings: list[Reading], now: float
    ) -> None:
        keys, records = self.keys, self.records
        newest: dict[str, dict[str, tuple[Reading, Any]]] = {}
        history: dict[str, dict[bytes, bytes]] = {}
        seen: dict[str, dict[str, bytes]] = {}
        last_seen: dict[str, float] = {}
        by_group: dict[int, list[Reading]] = {}
        for reading in readings:
            patient = reading.patient_id
            winners = newest.setdefault(patient, {})
            # The newest value of each field: readings of a patient can arrive out of order.
            for name, value in {**reading.vitals, **observed_in(reading)}.items():
                held = winners.get(name)
                if held is None or reading.ts >= held[0].ts:
                    winners[name] = (reading, value)
            # Scores as the client would send them (the float's repr), formatted once. The
            # seen set goes by when the reading arrived, so that it is trimmed a retention
            # after that: a backlog measured a day ago is still known when replayed or resent.
            score = repr(reading.ts).encode()
            history.setdefault(patient, {})[records.encode_history(patient, reading)] = score
            seen.setdefault(patient, {})[reading.reading_id] = repr(reading.received_at).encode()
            last_seen[patient] = max(last_seen.get(patient, 0.0), reading.ts)
            by_group.setdefault(keys.group_of(patient), []).append(reading)
        latest: dict[int, dict[str, Fields]] = {}
        for patient, won in newest.items():
            fields = {name: latest_value(reading, value) for name, (reading, value) in won.items()}
            group = keys.group_of(patient)
            pipe = pipes[group]
            encoded = records.encode_latest(patient, fields)
            latest.setdefault(group, {})[keys.latest(patient)] = [
                (name, won[name][0].ts, value) for name, value in encoded.items()
            ]
            history_key, seen_key = keys.history(patient), keys.seen(patient)
            pipe.zadd(history_key, history[patient])
            pipe.zadd(seen_key, seen[patient])
            self._write_event(shared, "vitals", patient, orjson.dumps(fields))
            if self._trims.due(history_key, now):
                # Expiring too, should the patient stop sending (see store.retention).
                self._trim_readings(pipe, patient, now)
        for group, grouped in by_group.items():
            pipe = pipes[group]
            set_newer(pipe, latest.get(group, {}))
            members = {p: last_seen[p] for p in dict.fromkeys(r.patient_id for r in grouped)}
            ids = dict(records.encode_patient_id(patient) for patient in members)
            tags = {keys.patient(p): ts for p, ts in members.items()}
            pipe.zadd(keys.patients(group), tags, gt=True)
            pipe.hset(keys.patient_ids(group), mapping=ids)
            # The processed counters are the group's, in its transaction: exactly once.
            pipe.hincrby(keys.processed(group), "readings_processed_total", len(grouped))
            hourly.count_into(pipe, keys, group, grouped)

    def _write_state(self, pipes: dict[int, Any], batch: Batch) -> None:
        """The latest NEWS2 and the anomaly engine's state of the patients the batch changed."""
        keys, records = self.keys, self.records
        # One HSET per group and hash, not one per patient: a command costs the
        # processor more than a field.
        scores: dict[int, dict[str, bytes]] = {}
        for patient, score in batch.scores.items():
            field, value = records.encode_score(patient, score)
            scores.setdefault(keys.group_of(patient), {})[field] = value
        for group, mapping in scores.items():
            pipes[group].hset(keys.news2(group), mapping=mapping)
        states: dict[int, dict[str, bytes]] = {}
        for patient, state in batch.states.items():
            field, value = records.encode_state(patient, state)
            states.setdefault(keys.group_of(patient), {})[field] = value
        for group, mapping in states.items():
            pipes[group].hset(keys.engine(group), mapping=mapping)

    def _write_departures(self, pipes: dict[int, Any], departed: list[str], now: float) -> None:
        """Remove the live records of patients who left (see :mod:`healthsync.stream.devices`):
        off the patient list, with their latest values, NEWS2 and engine state. Their
        readings are trimmed, and what is left (dated ahead of its arrival, or within
        the retention when ``anomaly.forget_after_s`` is shorter) expires with it: a
        key written before keys expired has no expiry of its own (see
        :mod:`healthsync.store.retention`)."""
        keys = self.keys
        for patient in departed:
            group, tag = keys.group_of(patient), keys.patient(patient)
            pipe = pipes[group]
            pipe.delete(keys.latest(patient))
            pipe.zrem(keys.patients(group), tag)
            for key in (keys.patient_ids(group), keys.news2(group), keys.engine(group)):
                pipe.hdel(key, tag)
            self._trim_readings(pipe, patient, now)

    def _trim_readings(self, pipe: Any, patient: str, now: float) -> None:
        """The patient's history and seen set, trimmed to the retention and set to expire."""
        for key in (self.keys.history(patient), self.keys.seen(patient)):
            retention.trim(pipe, key, now, self.settings.history_retention_s)

    def _acks_of_expired_alerts(self) -> list[str]:
        self._acks_cursor, gone = retention.acks_of_expired_alerts(
            self.client, self.keys, self._acks_cursor
        )
        return gone

    def _write_alerts(self, pipe: Any, batch: Batch, own: Counter[str]) -> None:
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
            self._write_event(pipe, f"alert.{event.type}", alert.patient_id, doc)
            own[field_name("alerts_total", {"event": event.type})] += 1

    def _write_artefacts(self, pipe: Any, batch: Batch, own: Counter[str]) -> None:
        for artefact in batch.artefacts:
            doc = {
                "vital": artefact.vital,
                "ts": artefact.ts,
                "value": artefact.value,
                "reading_id": artefact.reading_id,
            }
            self._write_event(pipe, "artefact", artefact.patient_id, orjson.dumps(doc))
            own[field_name("artefacts_total", {"vital": artefact.vital})] += 1

    def _write_event(self, pipe: Any, kind: str, patient: str, data: bytes) -> None:
        fields: dict[FieldT, EncodableT] = self.records.encode_event(kind, patient, data)
        pipe.xadd(self.keys.events, fields, maxlen=self.settings.events_maxlen, approximate=True)

    def flush(self) -> None:
        if not self._units and self._before is None:
            return
        try:
            if self._before is not None:
                self._before.execute()
            for pipe in self._units:
                execute_transaction(pipe)
            if self._after is not None:
                self._after.execute()
            self._taken = None  # stored with the batch
            self.stats.lifetime.update(self._own)
        finally:
            self._discard()
        done = time.time()
        self.stats.observe_latencies(done - r.received_at for r in self._written)
        self._written = []

    def _discard(self) -> None:
        for pipe in self._units:
            pipe.reset()  # a unit written but not flushed may still WATCH its offsets
        self._before, self._units, self._after, self._held = None, [], None, []

    def _give_back_counts(self) -> None:
        """The counts the last batch written took, back to `stats` unless they were stored
        with it. On the thread that counts (write's), not on the flush's."""
        if self._taken is not None:
            self.stats.restore(self._taken)
        self._taken, self._own = None, Counter()

    def flush_stats(self) -> None:
        self.stats.flush(self.client)
