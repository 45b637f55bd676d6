"""Which patients a device may send readings for, as device admins set it through the API.

``{p}:device_patients`` is a hash: the device id's pseudonym -> the sealed JSON
list of patient ids. A device without an entry (and without one in
``ingest.device_patients``) is not restricted.
"""

from __future__ import annotations

from typing import cast

import orjson
from redis.asyncio import Redis

from healthsync.security.codec import Codec


class Assignments:
    def __init__(self, client: Redis, codec: Codec) -> None:
        self.client = client
        self.codec = codec
        self.key = codec.keys.device_patients

    async def get(self, device_id: str) -> list[str] | None:
        tag = self.codec.pseudonym(device_id)
        raw = cast("bytes | None", await self.client.hget(self.key, tag))
        return self._open(tag, raw) if raw is not None else None

    async def set(self, device_id: str, patients: list[str] | None) -> None:
        """Assign the device to these patients; None lifts its assignment."""
        tag = self.codec.pseudonym(device_id)
        if patients is None:
            await self.client.hdel(self.key, tag)
            return
        doc = orjson.dumps({"device_id": device_id, "patients": sorted(set(patients))})
        await self.client.hset(self.key, tag, self.codec.seal(doc, self.codec.field(self.key, tag)))

    async def all(self) -> dict[str, frozenset[str]]:
        """Every assignment, by device id."""
        raw = cast("dict[bytes, bytes]", await self.client.hgetall(self.key))
        found: dict[str, frozenset[str]] = {}
        for tag, sealed in raw.items():
            doc = orjson.loads(self.codec.open(sealed, self.codec.field(self.key, tag.decode())))
            found[doc["device_id"]] = frozenset(doc["patients"])
        return found

    def _open(self, tag: str, raw: bytes) -> list[str]:
        doc = orjson.loads(self.codec.open(raw, self.codec.field(self.key, tag)))
        return list(doc["patients"])
