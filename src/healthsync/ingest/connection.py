"""One device's connection to ingest: split lines, validate, publish, answer in order.

A connection knows its server only through :class:`Owner`, what it needs of
it: the settings, the codec, the publisher, the shared bounds and the checks
that span connections (admission, the TLS peer, rejects).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections import deque
from typing import Protocol

from confluent_kafka import KafkaError

from healthsync import wire
from healthsync.config import Settings
from healthsync.domain.readings import Reading, reading_id_for
from healthsync.ingest.assignments import DevicePatients
from healthsync.ingest.proxy import Address
from healthsync.ingest.publisher import Publisher
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec

log = logging.getLogger(__name__)

UNAVAILABLE = b"ERR 503 kafka_unavailable: reading not stored, send it again later\n"
BUSY = b"ERR 503 busy: too many connections\n"
# Lines a connection handles in one turn of the event loop; the rest wait for the next.
# A turn runs the callbacks of every connection that has data, so with many devices
# sending pipelined lines at once, one turn used to handle every line they had sent
# (200 connections of 500 lines: 10-15 s) before Kafka's delivery reports, and with
# them any reply, or the readiness heartbeat could run; HAProxy then found the replica
# stalled and cut every session (bench/pipeline.py --devices 200).
LINES_PER_TURN = 16
# Devices per connection whose last unstamped reading's millisecond is remembered (one,
# as a rule); past it the memory starts over, so a connection cycling ids costs no more.
_UNSTAMPED_DEVICES = 64


class Owner(Protocol):
    """What a connection needs of the server that accepted it."""

    settings: Settings
    publisher: Publisher
    stats: StatsRecorder
    codec: Codec
    device_patients: DevicePatients
    inflight: int
    paused: set[DeviceConnection]
    holding: bool
    waiting: set[DeviceConnection]

    def admit(self, connection: DeviceConnection) -> bool: ...

    def check_peer(
        self, connection: DeviceConnection, ssl_object: ssl.SSLObject | None
    ) -> bytes | None: ...

    def release(self, connection: DeviceConnection) -> None: ...

    def reject(self, error: wire.WireError, line: bytes) -> None: ...

    def maybe_resume(self) -> None: ...


class _Slot:
    """The answer to one line, filled in when it is known."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply


class DeviceConnection(asyncio.Protocol):
    """One device's connection: split lines, validate, publish, answer in order."""

    def __init__(self, server: Owner, *, tls: bool = False, peer: Address | None = None) -> None:
        self.server = server
        self.tls = tls
        # The device id the client certificate names, and the certificate's
        # serial (for revocation); None when there is no certificate.
        self.identity: str | None = None
        self.serial: int | None = None
        # The device's address: from the PROXY header behind a load balancer, else the socket's.
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.discarding = False  # inside a line that is already too long
        self.pending: deque[_Slot] = deque()
        self.inflight = 0
        self.paused = False
        # The device reads its answers more slowly than it sends (see pause_writing).
        self.answers_waiting = False
        self.closing = False
        self.last_activity = time.monotonic()
        # Device -> the millisecond that named its last reading with neither seq nor ts.
        self.unstamped: dict[str, int] = {}
        self.flush_scheduled = False
        # Complete lines are waiting in the buffer for the next turn (reading is paused).
        self.backlog = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer is None:
            peername = transport.get_extra_info("peername")
            self.peer = (str(peername[0]), int(peername[1])) if peername else None
        # A device's address is an identifier: DEBUG only.
        log.debug("device connected", extra={"peer": self.peer, "tls": self.tls})
        if self.tls:
            refusal = self.server.check_peer(self, transport.get_extra_info("ssl_object"))
            if refusal is not None:
                transport.write(refusal)
                transport.close()
                return
        if not self.server.admit(self):
            transport.write(BUSY)
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.buffer += data
        if not self.backlog:  # else the next turn takes these lines, after the earlier ones
            self._turn()

    def _turn(self) -> None:
        """Handle up to LINES_PER_TURN lines; leave the rest, unread further, to the next turn."""
        if self.server.holding:
            self._wait()
            return
        self.backlog = self._split_lines(LINES_PER_TURN)
        self.flush_replies()
        if self.backlog and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._next_turn)
        limits = self.server.settings.ingest
        if (
            self.inflight >= limits.max_inflight_per_connection
            or self.server.inflight >= limits.max_inflight_total
        ):
            self.pause()

    def _next_turn(self) -> None:
        if self.transport is None or self.closing:
            # Gone, or the server is draining: lines not yet handled get no answer, so
            # the device sends them again (to another replica).
            self.backlog = False
            self.buffer.clear()
            return
        self._turn()
        if not self.backlog and not self.paused and not self.answers_waiting:
            self.transport.resume_reading()

    def _wait(self) -> None:
        """Ingest is held: keep the buffered lines, read no further, until the server says."""
        self.backlog = True  # not idle: the lines are answered once the hold ends
        self.server.waiting.add(self)
        if self.transport is not None:
            self.transport.pause_reading()

    def stop_waiting(self) -> None:
        """The hold ended (or outlasted ``ingest.hold_wait_s``): handle the lines that waited."""
        self._next_turn()

    def eof_received(self) -> bool:
        # A device may send its last line without a newline and half-close
        # (`nc -q1`, `nc -N`): treat the rest as a line, answer, then close.
        if self.backlog:
            self._split_lines(None)
            self.backlog = False
        if self.buffer and not self.discarding:
            self._handle_line(bytes(self.buffer))
        elif self.discarding:
            self._reject(wire.WireError("too_long", "line exceeds the maximum length"), b"")
        self.buffer.clear()
        self.closing = True
        self.flush_replies()
        # TLS has no half-close: asyncio ends the session on the client's
        # close_notify, so a TLS device reads its answers before closing.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.release(self)
        self.transport = None

    # line handling

    def _split_lines(self, most: int | None) -> bool:
        """Handle the buffer's complete lines, at most `most`; True if more are left."""
        limit = self.server.settings.ingest.max_line_bytes
        buffer = self.buffer
        start = 0
        handled = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if most is not None and handled == most:
                del buffer[:start]
                return True
            handled += 1
            if self.discarding:
                self.discarding = False
                self._reject(wire.WireError("too_long", f"line exceeds {limit} bytes"), b"")
            else:
                self._handle_line(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        # A CR that ends the buffer may be the line end's first half: it is not counted.
        if len(buffer) - buffer.endswith(b"\r") > limit:
            # Keep nothing of an over-long line: a hostile 1 GB line costs at most `limit` bytes.
            if not self.discarding:
                self.server.stats.inc("bytes_discarded_total", len(buffer))
            self.discarding = True
            buffer.clear()
        return False

    def _refusal(self, reading: Reading) -> wire.WireError | None:
        """Why this connection may not send this reading, or None."""
        if self.identity is not None and reading.device_id != self.identity:
            detail = f"device_id does not match the client certificate ({self.identity})"
            return wire.WireError("device_mismatch", detail, code=403)
        patients = self.server.device_patients
        if not patients.known:
            detail = "the device assignments could not be read yet; send it again later"
            return wire.WireError("assignments_unavailable", detail, code=503)
        if not patients.allows(reading.device_id, reading.patient_id):
            detail = "this device is not assigned to that patient"
            return wire.WireError("patient_not_assigned", detail, code=403)
        return None

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return  # blank lines (keep-alives, trailing \r\n) are not readings
        server = self.server
        server.stats.inc("lines_total")
        try:
            reading = wire.parse_line(
                line,
                time.time(),
                max_line_bytes=server.settings.ingest.max_line_bytes,
                id_key=server.codec.id_key,
            )
        except wire.WireError as error:
            self._reject(error, line)
            return
        if reading.seq is None and reading.ts == reading.received_at:
            reading = self._own_millisecond(reading)
        refused = self._refusal(reading)
        if refused is not None:
            self._reject(refused, line)
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
                slot.reply = UNAVAILABLE
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

    def _own_millisecond(self, reading: Reading) -> Reading:
        """A reading with neither seq nor ts is named by its device and the millisecond it
        was received in (the receive time stands for its ts). Lines sent in one write are
        parsed within the same millisecond, and would share an id: the processor keeps
        the first and drops the others as resends of it, though each was answered OK. So
        each takes the next millisecond its device has not used on this connection."""
        device = reading.device_id
        ms = round(reading.ts * 1000)
        last = self.unstamped.get(device)
        if last is not None and ms <= last:
            ms = last + 1
            reading = dataclasses.replace(
                reading,
                ts=ms / 1000,
                reading_id=reading_id_for(device, None, ms, key=self.server.codec.id_key),
            )
        if device not in self.unstamped and len(self.unstamped) >= _UNSTAMPED_DEVICES:
            self.unstamped.clear()
        self.unstamped[device] = ms
        return reading

    def _reject(self, error: wire.WireError, line: bytes) -> None:
        self.pending.append(_Slot(error.reply()))
        self.server.reject(error, line)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        self.flush_replies()

    def flush_replies(self) -> None:
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
            # With a backlog, reading resumes once it is handled.
            if not self.backlog and not self.answers_waiting:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        """The answers waiting to go out passed the transport's high-water mark: the device
        reads them more slowly than it sends (or not at all). Its lines are read no
        further until they drain, or its answers would pile up here without bound."""
        self.answers_waiting = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.answers_waiting = False
        if self.transport is not None and not self.closing and not self.paused and not self.backlog:
            self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        return not self.pending and not self.inflight and not self.backlog
