"""The TCP ingest server: one reading per line in, one answer per line out.

A line is answered `OK <reading_id>` only after Kafka acknowledged the reading
(acks=all), or `ERR <code> <reason>: <detail>`. Answers go out in the order the
lines came in. Memory is bounded: a connection (and the server as a whole)
with too many readings awaiting Kafka stops reading its socket, so TCP pushes
back on the device instead of the server buffering without limit.

Readings and dead letters leave sealed by the codec, keyed by the patient's
pseudonym (so partitioning stays per patient) and bound to their topic role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaError
from redis.asyncio import Redis

from healthsync import wire
from healthsync.config import Settings
from healthsync.ingest.publisher import Publisher
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec

log = logging.getLogger(__name__)

_UNAVAILABLE = b"ERR 503 kafka_unavailable: reading not stored, send it again later\n"
_BUSY = b"ERR 503 busy: too many connections\n"
_DLQ_SAMPLE_BYTES = 4096
# Resume paused connections once the server is this far below its bound, so
# they do not flap on every delivery report.
_RESUME_FRACTION = 0.8


class _Slot:
    """The answer to one line, filled in when it is known."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply


class DeviceConnection(asyncio.Protocol):
    """One device's connection: split lines, validate, publish, answer in order."""

    def __init__(self, server: IngestServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.discarding = False  # inside a line that is already too long
        self.pending: deque[_Slot] = deque()
        self.inflight = 0
        self.paused = False
        self.closing = False
        self.last_activity = time.monotonic()
        self.flush_scheduled = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.server.admit(self):
            transport.write(_BUSY)
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.buffer += data
        self._split_lines()
        self._flush_replies()
        limits = self.server.settings.ingest
        if (
            self.inflight >= limits.max_inflight_per_connection
            or self.server.inflight >= limits.max_inflight_total
        ):
            self.pause()

    def eof_received(self) -> bool:
        # A device may send its last line without a newline and half-close
        # (`nc -q1`, `nc -N`): treat the rest as a line, answer, then close.
        if self.buffer and not self.discarding:
            self._handle_line(bytes(self.buffer))
        elif self.discarding:
            self._reject(wire.WireError("too_long", "line exceeds the maximum length"), b"")
        self.buffer.clear()
        self.closing = True
        self._flush_replies()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.release(self)
        self.transport = None

    # line handling

    def _split_lines(self) -> None:
        limit = self.server.settings.ingest.max_line_bytes
        buffer = self.buffer
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self.discarding:
                self.discarding = False
                self._reject(wire.WireError("too_long", f"line exceeds {limit} bytes"), b"")
            else:
                self._handle_line(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > limit:
            # Keep nothing of an over-long line: a hostile 1 GB line costs at most `limit` bytes.
            if not self.discarding:
                self.server.stats.inc("bytes_discarded_total", len(buffer))
            self.discarding = True
            buffer.clear()

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return  # blank lines (keep-alives, trailing \r\n) are not readings
        server = self.server
        server.stats.inc("lines_total")
        try:
            reading = wire.parse_line(
                line, time.time(), max_line_bytes=server.settings.ingest.max_line_bytes
            )
        except wire.WireError as error:
            self._reject(error, line)
            return
        slot = _Slot()
        self.pending.append(slot)
        self.inflight += 1
        server.inflight += 1
        reading_id = reading.reading_id
        codec = server.codec
        key = codec.message_key(reading.patient_id)

        def on_done(error: KafkaError | None) -> None:
            self.inflight -= 1
            server.inflight -= 1
            if error is None:
                slot.reply = wire.ok_reply(reading_id)
                server.stats.inc("readings_accepted_total")
            else:
                slot.reply = _UNAVAILABLE
                server.stats.inc("readings_unavailable_total")
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._scheduled_flush)
            server.maybe_resume()

        try:
            server.publisher.publish(
                server.settings.kafka.vitals_topic,
                key,
                codec.seal_message(roles.VITALS, key, reading.to_json()),
                on_done,
            )
        except BufferError:
            on_done(KafkaError(KafkaError._QUEUE_FULL))

    def _reject(self, error: wire.WireError, line: bytes) -> None:
        self.pending.append(_Slot(error.reply()))
        self.server.reject(error, line)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self._flush_replies()

    def _flush_replies(self) -> None:
        pending = self.pending
        ready = []
        while pending and pending[0].reply is not None:
            ready.append(pending.popleft().reply)
        if ready and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(r for r in ready if r is not None))
        if self.closing and not pending and self.transport is not None:
            self.transport.close()

    # flow control

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.server.paused.add(self)
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closing:
            self.paused = False
            self.server.paused.discard(self)
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        return not self.pending and not self.inflight


@dataclass
class IngestServer:
    """Owns the listeners, the Kafka publisher, the connections and their bounds."""

    settings: Settings
    publisher: Publisher
    stats: StatsRecorder
    codec: Codec
    connections: set[DeviceConnection] = field(default_factory=set)
    paused: set[DeviceConnection] = field(default_factory=set)
    inflight: int = 0
    servers: list[asyncio.Server] = field(default_factory=list)

    def admit(self, connection: DeviceConnection) -> bool:
        if len(self.connections) >= self.settings.ingest.max_connections:
            self.stats.inc("connections_refused_total")
            return False
        self.connections.add(connection)
        self.stats.inc("connections_total")
        if self.inflight >= self.settings.ingest.max_inflight_total:
            connection.pause()
        return True

    def release(self, connection: DeviceConnection) -> None:
        self.connections.discard(connection)
        self.paused.discard(connection)

    def reject(self, error: wire.WireError, line: bytes) -> None:
        """Count a rejected line and keep it, with its reason, on the dead-letter topic."""
        self.stats.inc("readings_rejected_total", reason=error.reason)
        record = {
            "code": error.code,
            "reason": error.reason,
            "detail": error.detail,
            "received_at": time.time(),
            "length": len(line),
            "line": line[:_DLQ_SAMPLE_BYTES].decode("utf-8", "replace"),
        }
        try:
            value = self.codec.seal_message(roles.DLQ, b"", orjson.dumps(record))
            self.publisher.publish(self.settings.kafka.dlq_topic, b"", value, self._dlq_done)
        except BufferError:
            self.stats.inc("dlq_failed_total")

    def _dlq_done(self, error: KafkaError | None) -> None:
        if error is not None:
            self.stats.inc("dlq_failed_total")

    def maybe_resume(self) -> None:
        """After a delivery report: let paused connections read again once there is room."""
        room = self.settings.ingest.max_inflight_total * _RESUME_FRACTION
        if not self.paused or self.inflight > room:
            return
        per_connection_room = self.settings.ingest.max_inflight_per_connection * _RESUME_FRACTION
        for paused in list(self.paused):
            if paused.inflight <= per_connection_room:
                paused.resume()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.settings.ingest
        if cfg.plain_enabled:
            server = await loop.create_server(
                lambda: DeviceConnection(self), cfg.host, cfg.port, reuse_address=True
            )
            self.servers.append(server)
        self.publisher.start()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [
            (str(sock.getsockname()[0]), int(sock.getsockname()[1]))
            for server in self.servers
            for sock in server.sockets
        ]

    def sweep_idle(self) -> None:
        """Close connections that have sent nothing for the idle timeout."""
        cutoff = time.monotonic() - self.settings.ingest.idle_timeout_s
        for connection in list(self.connections):
            if connection.idle and connection.last_activity < cutoff and connection.transport:
                self.stats.inc("connections_idle_closed_total")
                connection.transport.close()

    async def drain(self) -> None:
        """Stop accepting, answer every reading already sent to Kafka, then close."""
        for server in self.servers:
            server.close()
        for connection in self.connections:
            connection.pause()
            connection.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.ingest.ack_timeout_s + 1
        while self.inflight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection._flush_replies()
            if connection.transport is not None:
                connection.transport.close()
        await self.publisher.close(timeout=2.0)


async def _flush_stats(server: IngestServer, redis: Redis | None) -> None:
    """Add this instance's counts to the shared totals in Redis."""
    server.stats.gauge("connections_open", len(server.connections))
    server.stats.gauge("inflight", server.inflight)
    if redis is None:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            server.stats.add_to(pipe)
            await pipe.execute()
    except Exception as exc:  # noqa: BLE001 - stats must never take ingest down
        log.warning("could not publish ingest stats", extra={"error": str(exc)})


async def _housekeeping(server: IngestServer, redis: Redis | None, stop: asyncio.Event) -> None:
    """Every second: close idle connections and publish the counts."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        server.sweep_idle()
        await _flush_stats(server, redis)


async def serve(settings: Settings) -> None:
    """Run the ingest server until SIGTERM or SIGINT, then drain."""
    stats = StatsRecorder(settings.redis.keys, "ingest")
    publisher = Publisher(settings.kafka, settings.ingest.ack_timeout_s)
    server = IngestServer(settings, publisher, stats, Codec.from_settings(settings))
    redis = None
    if settings.redis.url:
        redis = Redis.from_url(settings.redis.url, **settings.redis.client_options())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info("ingest listening", extra={"addresses": server.addresses})
    housekeeping = loop.create_task(_housekeeping(server, redis, stop))
    await stop.wait()
    log.info("ingest draining", extra={"inflight": server.inflight})
    await server.drain()
    await housekeeping
    await _flush_stats(server, redis)  # what the drain answered counts too
    if redis is not None:
        await redis.aclose()
    log.info("ingest stopped")
