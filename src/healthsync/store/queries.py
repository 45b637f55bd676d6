"""Reads of the Redis live cache, for the API (asyncio)."""

from __future__ import annotations

from typing import Any, cast, get_args

import orjson
from redis.asyncio import Redis

from healthsync.metrics import COMPONENTS
from healthsync.names import RedisKeys
from healthsync.stream.alerts import Severity
from healthsync.stream.news2 import Band
from healthsync.stream.rules import PatientRules


class LiveReader:
    def __init__(self, client: Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    async def patients(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Monitored patients, most recently seen first, with latest vitals and open alerts."""
        rows = cast(
            "list[tuple[bytes, float]]",
            await self.client.zrevrange(self.keys.patients, 0, limit - 1, withscores=True),
        )
        open_by_patient: dict[str, int] = {}
        slots = cast("list[bytes]", await self.client.hkeys(self.keys.open_alerts))
        for slot in slots:
            patient = slot.decode().split("|", 1)[0]
            open_by_patient[patient] = open_by_patient.get(patient, 0) + 1
        if not rows:
            return []
        patients = [member.decode() for member, _score in rows]
        pipe = self.client.pipeline(transaction=False)
        for patient in patients:
            pipe.hgetall(self.keys.latest(patient))
        pipe.hmget(self.keys.news2, patients)
        *latests, scores = await pipe.execute()
        return [
            {
                "patient_id": patient,
                "last_seen": last_seen,
                "vitals": _decode_latest(latest),
                "news2": orjson.loads(news2) if news2 else None,
                "open_alerts": open_by_patient.get(patient, 0),
            }
            for patient, (_member, last_seen), latest, news2 in zip(
                patients, rows, latests, scores, strict=True
            )
        ]

    async def news2(self, patient_id: str) -> dict[str, Any] | None:
        raw = await self.client.hget(self.keys.news2, patient_id)
        return cast("dict[str, Any]", orjson.loads(raw)) if raw else None

    async def latest(self, patient_id: str) -> dict[str, Any] | None:
        raw = cast("dict[bytes, bytes]", await self.client.hgetall(self.keys.latest(patient_id)))
        return _decode_latest(raw) if raw else None

    async def history(
        self, patient_id: str, vital: str | None, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """Readings between `since` and `until` (epoch seconds), oldest first."""
        members = cast(
            "list[bytes]",
            await self.client.zrangebyscore(
                self.keys.history(patient_id), since, until, start=0, num=limit
            ),
        )
        points = []
        for member in members:
            entry = orjson.loads(member)
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

    async def alerts(self, status: str, patient_id: str | None, limit: int) -> list[dict[str, Any]]:
        if status == "open":
            raw_ids = cast("list[bytes]", await self.client.hvals(self.keys.open_alerts))
        else:
            raw_ids = cast(
                "list[bytes]", await self.client.zrevrange(self.keys.recent_alerts, 0, -1)
            )
        ids = [i.decode() for i in raw_ids]
        if not ids:
            return []
        alerts = [
            a
            for a in await self._with_acks(ids)
            if (status == "all" or a["status"] == status)
            and (patient_id is None or a["patient_id"] == patient_id)
        ]
        alerts.sort(key=lambda a: a["opened_at"], reverse=True)
        return alerts[:limit]

    async def alert(self, alert_id: str) -> dict[str, Any] | None:
        alerts = await self._with_acks([alert_id])
        return alerts[0] if alerts else None

    async def summary(self) -> dict[str, Any]:
        """De-identified aggregates: counts only, no patient id and no value of one patient."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.patients)
        pipe.hvals(self.keys.open_alerts)
        pipe.hvals(self.keys.news2)
        patients, open_ids, scores = await pipe.execute()
        by_severity = dict.fromkeys(get_args(Severity), 0)
        by_kind: dict[str, int] = {}
        ids = [i.decode() for i in open_ids]
        docs: list[bytes | None] = []
        if ids:
            raw = await self.client.mget([self.keys.alert(i) for i in ids])
            docs = cast("list[bytes | None]", raw)
        for doc in docs:
            if doc is None:
                continue
            alert = orjson.loads(doc)
            by_severity[alert["severity"]] = by_severity.get(alert["severity"], 0) + 1
            by_kind[alert["kind"]] = by_kind.get(alert["kind"], 0) + 1
        bands = dict.fromkeys(get_args(Band), 0)
        for raw in scores:
            band = orjson.loads(raw)["band"]
            bands[band] = bands.get(band, 0) + 1
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
        await self.client.hset(self.keys.acknowledged, alert_id, orjson.dumps({"by": by, "at": at}))
        alerts = await self._with_acks([alert_id])
        return alerts[0] if alerts else None

    async def _with_acks(self, ids: list[str]) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([self.keys.alert(i) for i in ids])
        pipe.hmget(self.keys.acknowledged, ids)
        docs, acks = await pipe.execute()
        alerts = []
        for doc, ack in zip(docs, acks, strict=True):
            if doc is None:
                continue
            alert = orjson.loads(doc)
            alert["acknowledged"] = ack is not None
            if ack is not None:
                alert["acknowledgement"] = orjson.loads(ack)
            alerts.append(alert)
        return alerts

    async def stored_rules(self, patient_id: str) -> PatientRules | None:
        """The rules set for a patient through the API, if any."""
        raw = cast("bytes | None", await self.client.hget(self.keys.rules, patient_id))
        return None if raw is None else PatientRules.model_validate_json(raw)

    async def set_rules(self, patient_id: str, rules: PatientRules | None) -> None:
        """Store (or with None, drop) a patient's rules; processors pick them up within seconds."""
        if rules is None:
            await self.client.hdel(self.keys.rules, patient_id)
        else:
            await self.client.hset(self.keys.rules, patient_id, rules.model_dump_json())

    async def stats(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for component in COMPONENTS:
            pipe.hgetall(self.keys.stats(component))
        pipe.hgetall(self.keys.latency)
        *hashes, latency = await pipe.execute()
        snapshot = {
            component: {k.decode(): v.decode() for k, v in raw.items()}
            for component, raw in zip(COMPONENTS, hashes, strict=True)
        }
        return snapshot, {k.decode(): v.decode() for k, v in latency.items()}


def _decode_latest(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}
