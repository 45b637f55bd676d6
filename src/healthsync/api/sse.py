"""Server-Sent Events frames: the wire format of GET /v1/stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from healthsync.store.events import LiveEvent

HEARTBEAT = b": keep-alive\n\n"


def frame(event: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event and its frame, encoded once however many clients it goes to."""

    event: LiveEvent
    frame: bytes

    @classmethod
    def of(cls, event: LiveEvent) -> Outgoing:
        data: dict[str, Any] = {"patient_id": event.patient_id, "data": event.data}
        if event.news2 is not None:
            data["news2"] = event.news2
        return cls(event, frame(event.type, data, event.id))
