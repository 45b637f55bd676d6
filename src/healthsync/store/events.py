"""Reads of the live event stream ``{prefix}:events``, for the API's Server-Sent Events.

The processor appends one entry per patient and batch (``vitals``), one per
alert change (``alert.opened``, ``alert.escalated``, ``alert.resolved``) and
one per held artefact (``artefact``); the API appends ``alert.acknowledged``.
Entries are decoded with :meth:`healthsync.store.records.Records.decode_event`.

A ``vitals`` entry carries the newest values of the patient's readings in
that batch, each with the time it was measured: a reading that arrived late
brings older values than a client may hold, which it keeps (as the dashboard
does; ``latest:{patient}`` keeps them too, see :mod:`.latest`). The dashboard also
needs the NEWS2 score they produced, which the processor keeps in ``{p}:news2``
rather than in the event, so it is looked up here once per read for all the
patients of the read, not once per client.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from healthsync.security.crypto import DecryptError
from healthsync.store.records import Records

log = logging.getLogger(__name__)

# A Redis stream entry id: milliseconds-sequence.
EVENT_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def event_key(event_id: str) -> tuple[int, int]:
    """An entry id as a sortable pair (string order is wrong: "9-0" > "10-0")."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    id: str
    type: str
    patient_id: str
    data: Any
    news2: dict[str, Any] | None = None


class EventLog:
    """The stream's entries, decoded; an entry that cannot be opened is skipped and counted."""

    def __init__(self, client: Redis, records: Records) -> None:
        self.client = client
        self.records = records
        self.key = records.keys.events
        self.undecodable = 0

    async def last_id(self) -> str:
        """The id of the newest entry, or "0-0" when the stream is empty."""
        rows = cast("list[tuple[bytes, Any]]", await self.client.xrevrange(self.key, count=1))
        return rows[0][0].decode() if rows else "0-0"

    async def first_id(self) -> str | None:
        rows = cast("list[tuple[bytes, Any]]", await self.client.xrange(self.key, count=1))
        return rows[0][0].decode() if rows else None

    async def after(
        self, last_id: str, count: int, block_ms: int | None = None
    ) -> tuple[list[LiveEvent], str]:
        """Up to `count` entries after `last_id`, and the id to read on from.

        With `block_ms`, wait up to that long for an entry. The id moves past
        skipped entries too, so an unreadable one is not read again and again.
        """
        reply = cast(
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None",
            await self.client.xread({self.key: last_id}, count=count, block=block_ms),
        )
        if not reply or not reply[0][1]:
            return [], last_id
        entries = reply[0][1]
        return await self._decode(entries), entries[-1][0].decode()

    async def _decode(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[LiveEvent]:
        decoded: list[tuple[str, str, str, Any]] = []
        for raw_id, fields in entries:
            event_id = raw_id.decode()
            try:
                kind, patient, data = self.records.decode_event(fields)
            except (DecryptError, KeyError, ValueError) as exc:
                # One bad entry must not stop every dashboard; the id is no PHI.
                self.undecodable += 1
                log.warning("live event skipped", extra={"event_id": event_id, "error": str(exc)})
                continue
            decoded.append((event_id, kind, patient, data))
        scores = await self._scores({p for _, kind, p, _ in decoded if kind == "vitals"})
        return [
            LiveEvent(
                event_id, kind, patient, data, scores.get(patient) if kind == "vitals" else None
            )
            for event_id, kind, patient, data in decoded
        ]

    async def _scores(self, patients: set[str]) -> dict[str, dict[str, Any]]:
        if not patients:
            return {}
        ordered = sorted(patients)
        keys = self.records.keys
        tags = [keys.patient(p) for p in ordered]
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.hget(keys.news2(keys.group_of_member(tag)), tag)
        raws = cast("list[bytes | None]", await pipe.execute())
        scores: dict[str, dict[str, Any]] = {}
        for patient, tag, raw in zip(ordered, tags, raws, strict=True):
            if raw is None:
                continue
            try:
                scores[patient] = self.records.decode_score(tag, raw)
            except DecryptError:
                self.undecodable += 1
        return scores
