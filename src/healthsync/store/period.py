"""Readings and alerts for a period: what jobs read.

The archive (``store/archive``) provides :class:`ArchiveReader`; jobs depend
on nothing else of it. :class:`LiveWindow` provides the same over the live
cache's window (``redis.history_retention_s``), and tests give jobs a small
dataset through :class:`MemoryArchive`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, cast

from redis import Redis

from healthsync.domain.alerts import Alert
from healthsync.domain.readings import Reading
from healthsync.store.multi import get_many
from healthsync.store.records import Records


@dataclass(frozen=True, slots=True)
class ArchivedAlert:
    """An alert as it stands at the end of the period, and when it was acknowledged."""

    alert: Alert
    acknowledged_at: float | None = None


class ArchiveReader(Protocol):
    def readings(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> Iterator[Reading]:
        """Readings measured in [since, until), in measurement time order; all patients if
        `patients` is empty."""
        ...

    def alerts(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> Iterator[ArchivedAlert]:
        """Alerts opened in [since, until), in opening order."""
        ...


class MemoryArchive:
    """An ArchiveReader over readings and alerts held in memory."""

    def __init__(
        self, readings: Iterable[Reading] = (), alerts: Iterable[ArchivedAlert] = ()
    ) -> None:
        self._readings = sorted(readings, key=lambda r: (r.ts, r.reading_id))
        self._alerts = sorted(alerts, key=lambda a: (a.alert.opened_at, a.alert.alert_id))

    def readings(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> Iterator[Reading]:
        for reading in self._readings:
            if since <= reading.ts < until and (not patients or reading.patient_id in patients):
                yield reading

    def alerts(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> Iterator[ArchivedAlert]:
        for row in self._alerts:
            alert = row.alert
            if since <= alert.opened_at < until and (not patients or alert.patient_id in patients):
                yield row


class LiveWindow:
    """An ArchiveReader over the live cache: the recent window Redis keeps.

    Readings come from each patient's ``history`` (vitals only: the window
    keeps no on-oxygen or consciousness flags), alerts from ``alerts:recent``
    with their acknowledgements. Older data is the archive's.
    """

    def __init__(self, client: Redis, records: Records) -> None:
        self.client = client
        self.records = records
        self.keys = records.keys

    def _patients(self, wanted: frozenset[str]) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for group in self.keys.all_groups:
            pipe.hgetall(self.keys.patient_ids(group))
        found = cast("list[dict[bytes, bytes]]", pipe.execute())
        raw = {tag: sealed for hashes in found for tag, sealed in hashes.items()}
        ids = [self.records.decode_patient_id(tag.decode(), sealed) for tag, sealed in raw.items()]
        return sorted(i for i in ids if not wanted or i in wanted)

    def readings(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> Iterator[Reading]:
        found: list[Reading] = []
        for patient in self._patients(patients):
            members = cast(
                "list[bytes]",
                self.client.zrangebyscore(self.keys.history(patient), since, f"({until}"),
            )
            for member in members:
                entry = self.records.decode_history(patient, member)
                found.append(
                    Reading(
                        reading_id=entry["id"],
                        device_id=entry["device"],
                        patient_id=patient,
                        ts=entry["ts"],
                        received_at=entry["ts"],
                        vitals=dict(entry["v"]),
                    )
                )
        found.sort(key=lambda r: (r.ts, r.reading_id))
        yield from found

    def alerts(
        self, since: float, until: float, patients: frozenset[str] = frozenset()
    ) -> Iterator[ArchivedAlert]:
        ids = [
            raw.decode()
            for raw in cast(
                "list[bytes]",
                self.client.zrangebyscore(self.keys.recent_alerts, since, f"({until}"),
            )
        ]
        if not ids:
            return
        docs = get_many(self.client, [self.keys.alert(i) for i in ids])
        acks = cast("list[bytes | None]", self.client.hmget(self.keys.acknowledged, ids))
        rows: list[ArchivedAlert] = []
        for alert_id, doc, ack in zip(ids, docs, acks, strict=True):
            if doc is None:
                continue
            alert = Alert.from_dict(self.records.decode_alert(alert_id, doc))
            if patients and alert.patient_id not in patients:
                continue
            at = self.records.decode_ack(alert_id, ack)["at"] if ack is not None else None
            rows.append(ArchivedAlert(alert, at))
        rows.sort(key=lambda a: (a.alert.opened_at, a.alert.alert_id))
        yield from rows
