"""A small Server-Sent Events reader over httpx, for the stream tests and the benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass(frozen=True, slots=True)
class Frame:
    event: str  # "comment" for a comment line (the heartbeat)
    data: Any
    id: str | None = None


def frames(response: httpx.Response) -> Iterator[Frame]:
    """The frames of an open streaming response, as they arrive."""
    event, data, event_id = "message", "", None
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Frame("comment", line[1:].strip())
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data += line[len("data: ") :]
        elif line.startswith("id: "):
            event_id = line[len("id: ") :]
        elif line == "" and data:
            yield Frame(event, orjson.loads(data), event_id)
            event, data, event_id = "message", "", None


def until(stream: Iterator[Frame], event: str, limit: int = 1000) -> Frame:
    """The next frame of kind `event`; fail after `limit` other frames."""
    for _, frame in zip(range(limit), stream, strict=False):
        if frame.event == event:
            return frame
    raise AssertionError(f"no {event} frame in {limit} frames")
