"""Ingest's readiness, over HTTP on a loopback port, for a load balancer's health checks.

`GET /readyz` answers 200 while the ingest server listens, the Kafka cluster
answered a metadata request within the last few seconds, and the event loop is
alive; 503 otherwise: a replica that cannot reach Kafka would only answer ERR
503 to devices, so HAProxy should send them elsewhere. Only the status line and
a word of body, nothing about patients.

The checks are answered, and Kafka probed, on threads of their own. An event
loop busy with a flood of readings answers a check seconds late; HAProxy took
that for a dead replica and cut every device's session on both replicas at
once, at the worst moment (bench/pipeline.py: acknowledgements stopped for
good after 10 s flat out). The loop's liveness is a heartbeat instead: a loop
that has not beaten for `loop_stale_s` is stuck, and then the replica is not
ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from healthsync.ingest.publisher import Publisher

log = logging.getLogger(__name__)

# The broker is asked this often; an answer older than _STALE_S makes the replica not ready.
_PROBE_INTERVAL_S = 1.0
_PROBE_TIMEOUT_S = 2.0
_STALE_S = 5.0
_REQUEST_TIMEOUT_S = 2.0
# The event loop's heartbeat, and how long without one means it is stuck, not busy.
_BEAT_S = 0.5
LOOP_STALE_S = 15.0


class Readiness:
    """Probes Kafka in the background and serves the result."""

    def __init__(
        self, publisher: Publisher, topic: str, loop_stale_s: float = LOOP_STALE_S
    ) -> None:
        self.publisher = publisher
        self.topic = topic
        self.loop_stale_s = loop_stale_s
        self.kafka_seen = 0.0  # monotonic time of the last metadata answer
        self.loop_seen = time.monotonic()  # the event loop's last heartbeat
        self.draining = False
        self._said = ""  # the last answer's reason, logged when it changes
        self._was_ready = False
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def ready(self) -> bool:
        now = time.monotonic()
        fresh = now - self.kafka_seen < _STALE_S and now - self.loop_seen < self.loop_stale_s
        return fresh and not self.draining

    async def start(self, host: str, port: int) -> None:
        self._server = _CheckServer((host, port), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="readyz", daemon=True).start()
        threading.Thread(target=self._probe_kafka, name="kafka-probe", daemon=True).start()

    async def beat_forever(self, stop: asyncio.Event) -> None:
        """The event loop's heartbeat, until `stop`."""
        while not stop.is_set():
            self.loop_seen = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_BEAT_S)

    def _probe_kafka(self) -> None:
        while not self._stop.is_set():
            if self.publisher.probe(self.topic, _PROBE_TIMEOUT_S):
                self.kafka_seen = time.monotonic()
            self._stop.wait(_PROBE_INTERVAL_S)

    def answer(self, path: str) -> tuple[int, bytes]:
        if path != "/readyz":
            return 404, b"not found\n"
        status, body = self._state()
        reason = body.decode().strip()
        if reason != self._said:
            # A load balancer takes a replica that is not ready out of rotation: say why
            # (a warning once it has been ready: before, it is still starting).
            lost = status != 200 and self._was_ready and not self.draining
            log.log(
                logging.WARNING if lost else logging.INFO,
                "readiness changed",
                extra={"status": status, "reason": reason},
            )
            self._said = reason
            self._was_ready = self._was_ready or status == 200
        return status, body

    def _state(self) -> tuple[int, bytes]:
        if self.ready:
            return 200, b"ready\n"
        if self.draining:
            return 503, b"draining\n"
        if time.monotonic() - self.loop_seen >= self.loop_stale_s:
            return 503, b"event loop stalled\n"
        return 503, b"kafka unreachable\n"

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _CheckServer(ThreadingHTTPServer):
    """Errors go to the JSON log, not as a bare traceback on stderr (socketserver's way)."""

    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            # A checker that reset the connection once it had the status line (HAProxy
            # does on a failed check), or before asking: nothing is wrong here.
            log.debug("readiness check cut short", extra={"error": str(error)})
            return
        log.warning("readiness check failed", exc_info=True)


def _handler(readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = _REQUEST_TIMEOUT_S

        def do_GET(self) -> None:
            status, body = readiness.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a check a second is no news

    return Handler
