"""The alerts listing (``GET /v1/alerts``): newest first, a page at a time.

A listing's place is an alert's position, (opened_at, alert_id), the order
Redis keeps the recent alerts in, so alerts raised or resolved between pages,
or between the reads of one page, shift nothing. Open alerts (one per patient
and kind) are read whole and paged. Resolved and all alerts are read from the
recent ones, each read starting below the last alert read: at most `limit`
matches, and at most ``_SCAN_PAGES * limit`` alerts read per page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis

from healthsync.names import RedisKeys

# A page of resolved or all alerts reads at most this many pages' worth of recent alerts.
_SCAN_PAGES = 10

# Where a listing of alerts stands: an alert's (opened_at, alert_id).
Position = tuple[float, str]
# The alerts of these ids that Redis holds, each with its acknowledgement.
WithAcks = Callable[[list[str]], Awaitable[list[dict[str, Any]]]]


def _position(alert: dict[str, Any]) -> Position:
    return alert["opened_at"], alert["alert_id"]


def _matches(alert: dict[str, Any], status: str, patient_id: str | None) -> bool:
    return (status == "all" or alert["status"] == status) and (
        patient_id is None or alert["patient_id"] == patient_id
    )


class AlertListing:
    def __init__(self, client: Redis, keys: RedisKeys, with_acks: WithAcks) -> None:
        self.client = client
        self.keys = keys
        self.with_acks = with_acks

    async def page(
        self, status: str, patient_id: str | None, limit: int, after: Position | None
    ) -> tuple[list[dict[str, Any]], Position | None]:
        """Alerts from just past `after`, and the position to ask the next page from
        (None: no more)."""
        if status == "open":
            return await self._open(patient_id, limit, after)
        found: list[dict[str, Any]] = []
        last = after
        budget = _SCAN_PAGES * limit
        while len(found) < limit and budget > 0:
            listed = await self._recent_below(last, limit)
            if not listed:
                return found, None
            by_id = {a["alert_id"]: a for a in await self.with_acks([i for _, i in listed])}
            for position in listed:
                budget -= 1
                last = position
                alert = by_id.get(position[1])
                if alert is not None and _matches(alert, status, patient_id):
                    found.append(alert)
                    if len(found) == limit:
                        break
        more = bool(await self._recent_below(last, 1))
        return found, last if more else None

    async def _open(
        self, patient_id: str | None, limit: int, after: Position | None
    ) -> tuple[list[dict[str, Any]], Position | None]:
        raw_ids = cast("list[bytes]", await self.client.hvals(self.keys.open_alerts))
        if not raw_ids:
            return [], None
        alerts = [
            a
            for a in await self.with_acks([i.decode() for i in raw_ids])
            if _matches(a, "open", patient_id)
        ]
        alerts.sort(key=_position, reverse=True)
        if after is not None:
            alerts = [a for a in alerts if _position(a) < after]
        page = alerts[:limit]
        return page, _position(page[-1]) if len(alerts) > limit else None

    async def _recent_below(self, below: Position | None, count: int) -> list[Position]:
        """Up to `count` recent alerts' positions past `below` (from the newest when None)."""
        top = "+inf" if below is None else repr(below[0])
        asked = count
        while True:
            raw = cast(
                "list[tuple[bytes, float]]",
                await self.client.zrevrangebyscore(
                    self.keys.recent_alerts, top, "-inf", 0, asked, withscores=True
                ),
            )
            listed = [(score, member.decode()) for member, score in raw]
            past = [p for p in listed if below is None or p < below]
            if len(past) >= count or len(raw) < asked:
                return past[:count]
            asked *= 2  # alerts of `below`'s own time, already passed, filled the read
