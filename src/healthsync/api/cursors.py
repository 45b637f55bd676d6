"""Page cursors as opaque tokens: a position, sealed and bound to the query it pages through.

A position is (time, id): the last item a page returned, its time in
milliseconds, or as the exact number a listing is ordered by (the alert
listing's Redis scores, where alerts of one millisecond still have an order). Sealed
(:class:`healthsync.security.tokens.TokenSealer`), a cursor shows nothing of the
patient, and one altered, forged or sent with another patient, vital or
listing is refused with 400 and counted (``healthsync_api_bad_cursor_total``).
"""

from __future__ import annotations

import orjson
from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter

from healthsync.security.tokens import TokenError, TokenSealer


class Cursors:
    def __init__(self, sealer: TokenSealer, registry: CollectorRegistry) -> None:
        self.sealer = sealer
        self.refused = Counter(
            "healthsync_api_bad_cursor",
            "Requests refused because their cursor was malformed, altered or made for "
            "another query",
            registry=registry,
        )

    def encode(self, position: tuple[float, str], *context: str | None) -> str:
        payload = orjson.dumps(list(position))
        return self.sealer.seal(payload, _context(context))

    def decode(self, cursor: str, *context: str | None) -> tuple[int, str]:
        """The position, its time in milliseconds; 400 for a cursor that was not made
        for this query."""
        ts_ms, item_id = self.decode_exact(cursor, *context)
        if not isinstance(ts_ms, int):
            raise self._refuse("the token does not hold a position")
        return ts_ms, item_id

    def decode_exact(self, cursor: str, *context: str | None) -> tuple[float, str]:
        """The position, its time a number as encoded; 400 as for :meth:`decode`."""
        try:
            ts, item_id = orjson.loads(self.sealer.open(cursor, _context(context)))
        except (TokenError, orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise self._refuse(str(exc)) from None
        if type(ts) not in (int, float) or not isinstance(item_id, str):
            raise self._refuse("the token does not hold a position")
        return ts, item_id

    def _refuse(self, why: str) -> HTTPException:
        self.refused.inc()
        return HTTPException(
            400, f"cursor is not valid for this query ({why}); ask again without it"
        )


def _context(parts: tuple[str | None, ...]) -> str:
    return "\0".join(part or "" for part in parts)
