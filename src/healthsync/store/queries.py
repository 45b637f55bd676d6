"""Reads of the Redis live cache, for the API (asyncio).

Values are decoded by :mod:`healthsync.store.records`, the same codec the
processor writes them with; a value it cannot open (a retired or missing key,
tampering) raises :class:`healthsync.security.crypto.DecryptError`. A read of
one thing turns that into a clear error rather than returning garbage; a list
(patients, alerts, history, the summary) leaves the unreadable entry out and
reports it to `on_unreadable`, so one bad value never takes the list down.

A list decrypts its entries in a worker thread, :data:`DECODE_BATCH` at a
time, never on the event loop: thousands of decryptions would otherwise hold
up every other request of the process (health checks, the live stream) until
they were done. `on_unreadable` is then called from that thread.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar, cast, get_args

import anyio.to_thread
import orjson
from redis.asyncio import Redis

from healthsync.domain.alerts import Severity
from healthsync.domain.bands import PatientRules
from healthsync.domain.news2 import Band
from healthsync.metrics import COMPONENTS, merge_counters
from healthsync.security.crypto import DecryptError
from healthsync.store.alert_listing import AlertListing, Position
from healthsync.store.latest import value_fields
from healthsync.store.multi import aget_many
from healthsync.store.records import Records

# Entries a list decodes per hop to a worker thread: few hops, each short.
DECODE_BATCH = 500
P = ParamSpec("P")
T = TypeVar("T")


def _ignore(_error: DecryptError) -> None:
    pass


class LiveReader:
    def __init__(
        self,
        client: Redis,
        records: Records,
        on_unreadable: Callable[[DecryptError], None] = _ignore,
    ) -> None:
        self.client = client
        self.records = records
        self.keys = records.keys
        self.on_unreadable = on_unreadable
        self.listing = AlertListing(client, self.keys, self._with_acks)

    def _readable(self, decode: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """`decode(*args)`, or None (reported) when the value cannot be opened."""
        try:
            return decode(*args, **kwargs)
        except DecryptError as exc:
            self.on_unreadable(exc)
            return None

    async def _decoded(
        self, decode: Callable[..., T], entries: Sequence[tuple[Any, ...]]
    ) -> list[T | None]:
        """`decode(*entry)` for each entry, None where it cannot be opened (reported),
        computed in a worker thread a batch at a time (see the module doc)."""
        found: list[T | None] = []
        for start in range(0, len(entries), DECODE_BATCH):
            batch = entries[start : start + DECODE_BATCH]
            found += await anyio.to_thread.run_sync(self._decode_batch, decode, batch)
        return found

    def _decode_batch(
        self, decode: Callable[..., T], batch: Sequence[tuple[Any, ...]]
    ) -> list[T | None]:
        return [self._readable(decode, *entry) for entry in batch]

    async def patients(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Monitored patients, most recently seen first, with latest vitals and open alerts."""
        rows = await self._recent_patients(limit)
        open_by_tag: dict[str, int] = {}
        slots = cast("list[bytes]", await self.client.hkeys(self.keys.open_alerts))
        for slot in slots:
            tag = slot.decode().split("|", 1)[0]
            open_by_tag[tag] = open_by_tag.get(tag, 0) + 1
        if not rows:
            return []
        records, keys = self.records, self.keys
        rows_by_tag = {member.decode(): last_seen for member, last_seen in rows}
        tags = list(rows_by_tag)
        found_ids = await self._by_group(keys.patient_ids, tags)
        sealed_ids = [found_ids[tag] for tag in tags]
        sealed = [(tag, value) for tag, value in zip(tags, sealed_ids, strict=True) if value]
        opened = await self._decoded(records.decode_patient_id, sealed)
        by_tag = dict(zip([tag for tag, _ in sealed], opened, strict=True))
        ids: dict[str, str] = {}
        for tag, value in zip(tags, sealed_ids, strict=True):
            patient = by_tag[tag] if value else tag
            if patient is not None:
                ids[tag] = patient
        pipe = self.client.pipeline(transaction=False)
        for patient in ids.values():
            pipe.hgetall(keys.latest(patient))
        latests = await pipe.execute()
        found_scores = await self._by_group(keys.news2, list(ids))
        scores = [found_scores[tag] for tag in ids]
        entries = [
            (patient, tag, latest, news2)
            for (tag, patient), latest, news2 in zip(ids.items(), latests, scores, strict=True)
        ]
        decoded = await self._decoded(self._decode_row, entries)
        found = []
        for tag, row in zip(ids, decoded, strict=True):
            if row is not None:
                row["last_seen"] = rows_by_tag[tag]
                row["open_alerts"] = open_by_tag.get(tag, 0)
                found.append(row)
        return found

    async def _recent_patients(self, limit: int) -> list[tuple[bytes, float]]:
        """The `limit` patients seen last, across the patient groups."""
        pipe = self.client.pipeline(transaction=False)
        for group in self.keys.all_groups:
            pipe.zrevrange(self.keys.patients(group), 0, limit - 1, withscores=True)
        rows = [row for rows in await pipe.execute() for row in rows]
        return heapq.nlargest(limit, rows, key=lambda row: float(row[1]))

    async def _by_group(
        self, key_of: Callable[[int], str], tags: list[str]
    ) -> dict[str, bytes | None]:
        """Fields `tags` (pseudonyms) of a per-group hash, each read from its patient's group."""
        by_group: dict[int, list[str]] = {}
        for tag in tags:
            by_group.setdefault(self.keys.group_of_member(tag), []).append(tag)
        pipe = self.client.pipeline(transaction=False)
        for group, members in by_group.items():
            pipe.hmget(key_of(group), members)
        found: dict[str, bytes | None] = {}
        for members, values in zip(by_group.values(), await pipe.execute(), strict=True):
            found.update(zip(members, values, strict=True))
        return found

    def _decode_row(
        self, patient: str, tag: str, latest: dict[bytes, bytes], news2: bytes | None
    ) -> dict[str, Any]:
        return {
            "patient_id": patient,
            "vitals": self._decode_latest(patient, latest),
            "news2": self.records.decode_score(tag, news2) if news2 else None,
        }

    async def news2(self, patient_id: str) -> dict[str, Any] | None:
        tag = self.keys.patient(patient_id)
        news2 = self.keys.news2(self.keys.group_of_member(tag))
        raw = cast("bytes | None", await self.client.hget(news2, tag))
        if not raw:
            return None
        return self.records.decode_score(tag, raw)

    async def latest(self, patient_id: str) -> dict[str, Any] | None:
        key = self.keys.latest(patient_id)
        raw = cast("dict[bytes, bytes]", await self.client.hgetall(key))
        return self._decode_latest(patient_id, raw) if raw else None

    def _decode_latest(self, patient_id: str, raw: dict[bytes, bytes]) -> dict[str, Any]:
        decode = self.records.decode_latest
        return {name: decode(patient_id, name, v) for name, v in value_fields(raw)}

    async def history(
        self, patient_id: str, vital: str | None, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """Readings between `since` and `until` (epoch seconds), oldest first."""
        key = self.keys.history(patient_id)
        members = cast(
            "list[bytes]",
            await self.client.zrangebyscore(key, since, until, start=0, num=limit),
        )
        points = []
        entries = [(patient_id, member) for member in members]
        for entry in await self._decoded(self.records.decode_history, entries):
            if entry is None:
                continue
            vitals: dict[str, float] = entry["v"]
            if vital is not None:
                if vital not in vitals:
                    continue
                vitals = {vital: vitals[vital]}
            points.append(
                {
                    "ts": entry["ts"],
                    "reading_id": entry["id"],
                    "device_id": entry["device"],
                    "vitals": vitals,
                }
            )
        return points

    async def alerts(
        self, status: str, patient_id: str | None, limit: int, after: Position | None = None
    ) -> tuple[list[dict[str, Any]], Position | None]:
        """A page of the alerts listing (:mod:`healthsync.store.alert_listing`)."""
        return await self.listing.page(status, patient_id, limit, after)

    async def alerts_opened(
        self, patient_id: str, since: float, until: float
    ) -> list[dict[str, Any]]:
        """The patient's alerts opened in the period that Redis still holds, with acks."""
        raw = cast(
            "list[bytes]", await self.client.zrangebyscore(self.keys.recent_alerts, since, until)
        )
        open_ids = cast("list[bytes]", await self.client.hvals(self.keys.open_alerts))
        ids = list(dict.fromkeys(i.decode() for i in [*raw, *open_ids]))
        if not ids:
            return []
        return [
            a
            for a in await self._with_acks(ids)
            if a["patient_id"] == patient_id and since <= a["opened_at"] <= until
        ]

    async def alert(self, alert_id: str) -> dict[str, Any] | None:
        alerts = await self._with_acks([alert_id])
        return alerts[0] if alerts else None

    async def summary(self) -> dict[str, Any]:
        """De-identified aggregates: counts only, no patient id and no value of one patient."""
        records, keys = self.records, self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.hvals(keys.open_alerts)
        for group in keys.all_groups:
            pipe.zcard(keys.patients(group))
            pipe.hgetall(keys.news2(group))
        open_ids, *per_group = await pipe.execute()
        patients = sum(per_group[0::2])
        scores = {tag: raw for found in per_group[1::2] for tag, raw in found.items()}
        by_severity = dict.fromkeys(get_args(Severity), 0)
        by_kind: dict[str, int] = {}
        ids = [i.decode() for i in open_ids]
        places = [keys.alert(i) for i in ids]
        docs = await aget_many(self.client, places)
        stored = [(alert_id, doc) for alert_id, doc in zip(ids, docs, strict=True) if doc]
        for alert in await self._decoded(records.decode_alert, stored):
            if alert is None:
                continue
            by_severity[alert["severity"]] = by_severity.get(alert["severity"], 0) + 1
            # Per-device kinds are counted together: a device id can point to a bed.
            kind = alert["kind"].partition(":")[0] if alert.get("device_id") else alert["kind"]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        bands = dict.fromkeys(get_args(Band), 0)
        sealed = [(tag.decode(), raw) for tag, raw in cast("dict[bytes, bytes]", scores).items()]
        for score in await self._decoded(records.decode_score, sealed):
            if score is not None:
                bands[score["band"]] = bands.get(score["band"], 0) + 1
        return {
            "patients": int(patients),
            "open_alerts": {
                "total": sum(by_severity.values()),
                "by_severity": by_severity,
                "by_kind": by_kind,
            },
            "news2_bands": bands,
        }

    async def acknowledge(self, alert_id: str, by: str, at: float) -> dict[str, Any] | None:
        """Record that a clinician saw an alert; it stays open until its condition resolves.

        Kept apart from the alert record, which the processor rewrites as the
        alert escalates or resolves.
        """
        if not await self.client.exists(self.keys.alert(alert_id)):
            return None
        ack = self.records.encode_ack(alert_id, {"by": by, "at": at})
        await self.client.hset(self.keys.acknowledged, alert_id, ack)
        alerts = await self._with_acks([alert_id])
        if not alerts:
            return None
        # Every open dashboard shows who saw it; the processor's next write trims the stream.
        alert = alerts[0]
        event = self.records.encode_event(
            "alert.acknowledged", alert["patient_id"], orjson.dumps(alert)
        )
        await self.client.xadd(self.keys.events, event)
        return alert

    async def _with_acks(self, ids: list[str]) -> list[dict[str, Any]]:
        docs = await aget_many(self.client, [self.keys.alert(i) for i in ids])
        acks = await self.client.hmget(self.keys.acknowledged, ids)
        stored = [e for e in zip(ids, docs, acks, strict=True) if e[1] is not None]
        return [a for a in await self._decoded(self._decode_alert, stored) if a is not None]

    def _decode_alert(self, alert_id: str, doc: bytes, ack: bytes | None) -> dict[str, Any]:
        alert = self.records.decode_alert(alert_id, doc)
        alert["acknowledged"] = ack is not None
        if ack is not None:
            alert["acknowledgement"] = self.records.decode_ack(alert_id, ack)
        return alert

    async def stored_rules(self, patient_id: str) -> PatientRules | None:
        """The rules set for a patient through the API, if any."""
        tag = self.keys.patient(patient_id)
        raw = cast("bytes | None", await self.client.hget(self.keys.rules, tag))
        if raw is None:
            return None
        return self.records.decode_rules(patient_id, raw)

    async def set_rules(self, patient_id: str, rules: PatientRules | None) -> None:
        """Store (or with None, drop) a patient's rules; processors pick them up within seconds."""
        tag = self.keys.patient(patient_id)
        if rules is None:
            await self.client.hdel(self.keys.rules, tag)
            return
        tag, sealed = self.records.encode_rules(patient_id, rules)
        await self.client.hset(self.keys.rules, tag, sealed)

    async def stats(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        names = {component: self.keys.stats_keys(component) for component in COMPONENTS}
        for keys in names.values():
            for key in keys:
                pipe.hgetall(key)
        pipe.hgetall(self.keys.latency)
        *hashes, latency = await pipe.execute()
        snapshot: dict[str, dict[str, str]] = {}
        for component, keys in names.items():
            found, hashes = hashes[: len(keys)], hashes[len(keys) :]
            snapshot[component] = merge_counters(found)
        return snapshot, {k.decode(): v.decode() for k, v in latency.items()}
