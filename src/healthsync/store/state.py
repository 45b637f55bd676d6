"""The processor's reads of Redis: which readings are stored already, and its steps' state.

The steps load what they remember about a patient (latest NEWS2 inputs, the
anomaly engine's state and open alerts, clinicians' rules) from here the first
time they meet the patient, and again after ``on_assign`` (see
:mod:`healthsync.stream.contracts`), so a restart or a moved partition
forgets nothing. The live sink (:mod:`healthsync.store.live`) writes all of it
back with each batch.

A stored value the keyring can no longer open (its key retired, tampering) is
treated as absent and counted: the processor goes on rather than stalling the
partition, and the loss shows in ``undecryptable_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from redis import Redis

from healthsync.domain.alerts import Alert
from healthsync.domain.bands import PatientRules
from healthsync.domain.news2 import PARAMETERS, Observed
from healthsync.domain.readings import Reading
from healthsync.metrics import StatsRecorder
from healthsync.security.crypto import DecryptError
from healthsync.store.multi import get_many
from healthsync.store.records import Records

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisStateStore:
    """The seen filter and the state loaders of the processor's steps, over one Redis."""

    def __init__(self, client: Redis, records: Records, stats: StatsRecorder) -> None:
        self.client = client
        self.records = records
        self.keys = records.keys
        self.stats = stats

    def _readable(self, decode: Callable[..., T], *args: Any) -> T | None:
        """What `decode(*args)` returns; None, counted, if the value can no longer be opened."""
        try:
            return decode(*args)
        except DecryptError as exc:
            # Treated as absent: state sealed with a retired key is gone by design.
            self.stats.inc("undecryptable_total")
            log.warning("stored state unreadable, ignored", extra={"error": str(exc)})
            return None

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
        decode = self.records.decode_latest
        for patient, entries in zip(patients, pipe.execute(), strict=True):
            observed: Observed = {}
            for name, raw in zip(PARAMETERS, entries, strict=True):
                if raw is None:
                    continue
                entry = self._readable(decode, patient, name, raw)
                if entry is not None:
                    observed[name] = (entry["value"], entry["ts"], entry["reading_id"])
            state[patient] = observed
        return state

    def load_open_alerts(self) -> list[Alert]:
        ids = [i.decode() for i in self.client.hvals(self.keys.open_alerts)]  # type: ignore[union-attr]
        if not ids:
            return []
        docs = get_many(self.client, [self.keys.alert(i) for i in ids])
        decode = self.records.decode_alert
        alerts = []
        for alert_id, raw in zip(ids, docs, strict=True):
            if raw is None:
                continue
            doc = self._readable(decode, alert_id, raw)
            if doc is not None:
                alerts.append(Alert.from_dict(doc))
        return alerts

    def load_states(self, patients: list[str] | None) -> dict[str, dict[str, Any]]:
        """The anomaly engine's saved state of these patients (None: of every patient)."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=False)
        pairs: list[tuple[str, bytes]] = []
        if patients is None:
            for group in keys.all_groups:
                pipe.hgetall(keys.engine(group))
            for stored in cast("list[dict[bytes, bytes]]", pipe.execute()):
                pairs += [(tag.decode(), value) for tag, value in stored.items()]
        else:
            by_group: dict[int, list[str]] = {}
            for patient in patients:
                by_group.setdefault(keys.group_of(patient), []).append(keys.patient(patient))
            for group, tags in by_group.items():
                pipe.hmget(keys.engine(group), tags)
            for tags, values in zip(by_group.values(), pipe.execute(), strict=True):
                pairs += [(t, v) for t, v in zip(tags, values, strict=True) if v is not None]
        decode = self.records.decode_state
        states: dict[str, dict[str, Any]] = {}
        for tag, raw in pairs:
            found = self._readable(decode, tag, raw)
            if found is not None:
                patient, state = found
                states[patient] = state
        return states

    def load_rules(self, patients: list[str]) -> dict[str, PatientRules]:
        """The rules clinicians set for these patients through the API."""
        tags = [self.keys.patient(p) for p in patients]
        values: list[bytes | None] = self.client.hmget(self.keys.rules, tags)  # type: ignore[assignment]
        decode = self.records.decode_rules
        rules: dict[str, PatientRules] = {}
        for patient, raw in zip(patients, values, strict=True):
            if raw is None:
                continue
            found = self._readable(decode, patient, raw)
            if found is not None:
                rules[patient] = found
        return rules
