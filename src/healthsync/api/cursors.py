"""Page cursors as opaque tokens: a position, sealed and bound to the query it pages through.

A position is (time in milliseconds, id): the last item a page returned. Sealed
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

    def encode(self, position: tuple[int, str], *context: str | None) -> str:
        payload = orjson.dumps(list(position))
        return self.sealer.seal(payload, _context(context))

    def decode(self, cursor: str, *context: str | None) -> tuple[int, str]:
        """The position; 400 for a cursor that was not made for this query."""
        try:
            ts_ms, item_id = orjson.loads(self.sealer.open(cursor, _context(context)))
            if not isinstance(ts_ms, int) or not isinstance(item_id, str):
                raise TokenError("the token does not hold a position")
        except (TokenError, orjson.JSONDecodeError, TypeError, ValueError) as exc:
            self.refused.inc()
            raise HTTPException(
                400, f"cursor is not valid for this query ({exc}); ask again without it"
            ) from None
        return ts_ms, item_id


def _context(parts: tuple[str | None, ...]) -> str:
    return "\0".join(part or "" for part in parts)
