"""Ingest's readiness, over HTTP on a loopback port, for a load balancer's health checks.

`GET /readyz` answers 200 while the ingest server listens and the Kafka
cluster answered a metadata request within the last few seconds, and 503
otherwise: a replica that cannot reach Kafka would only answer ERR 503 to
devices, so HAProxy should send them elsewhere. Only the status line and a
word of body, nothing about patients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from healthsync.ingest.publisher import Publisher

log = logging.getLogger(__name__)

# The broker is asked this often; an answer older than _STALE_S makes the replica not ready.
_PROBE_INTERVAL_S = 1.0
_PROBE_TIMEOUT_S = 2.0
_STALE_S = 5.0
_REQUEST_TIMEOUT_S = 2.0


class Readiness:
    """Probes Kafka in the background and serves the result."""

    def __init__(self, publisher: Publisher, topic: str) -> None:
        self.publisher = publisher
        self.topic = topic
        self.kafka_seen = 0.0  # monotonic time of the last metadata answer
        self.draining = False
        self._server: asyncio.Server | None = None

    @property
    def ready(self) -> bool:
        fresh = time.monotonic() - self.kafka_seen < _STALE_S
        return fresh and not self.draining

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._answer, host, port, reuse_address=True)

    async def probe_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await asyncio.to_thread(self.publisher.probe, self.topic, _PROBE_TIMEOUT_S):
                self.kafka_seen = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_PROBE_INTERVAL_S)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), _REQUEST_TIMEOUT_S)
            if request.split(b" ")[1:2] == [b"/readyz"]:
                status, body = ("200 OK", b"ready\n") if self.ready else ("503 Unavailable", b"")
                body = body or (b"draining\n" if self.draining else b"kafka unreachable\n")
            else:
                status, body = "404 Not Found", b"not found\n"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
