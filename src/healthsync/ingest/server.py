"""The TCP ingest server: one reading per line in, one answer per line out.

Two listeners share one protocol: the plaintext port (loopback only unless
``ingest.plain_allow_remote``) and the TLS port (``ingest.tls_port``), where by
default a device must present a certificate from the CA and may only send
readings for the device id the certificate names; a line for another device
gets ``ERR 403 device_mismatch`` and is counted like any other reject.

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
import ssl
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import KafkaError

from healthsync import wire
from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.ingest.assignments import DevicePatients
from healthsync.ingest.connection import DeviceConnection
from healthsync.ingest.listener import ProxyListener
from healthsync.ingest.proxy import Address
from healthsync.ingest.publisher import Publisher
from healthsync.metrics import StatsRecorder
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.tls import (
    ClientCerts,
    RevocationList,
    device_identity,
    negotiated_problem,
    peer_serial,
    server_context,
    serves_tls,
)

# A TLS client that has not finished its handshake by then is dropped.
_HANDSHAKE_TIMEOUT_S = 10.0
_DLQ_SAMPLE_BYTES = 4096
# Resume paused connections once the server is this far below its bound, so
# they do not flap on every delivery report.
_RESUME_FRACTION = 0.8


@dataclass
class IngestServer:
    """Owns the listeners, the Kafka publisher, the connections and their bounds."""

    settings: Settings
    publisher: Publisher
    stats: StatsRecorder
    codec: Codec
    connections: set[DeviceConnection] = field(default_factory=set)
    paused: set[DeviceConnection] = field(default_factory=set)
    # While held (ingest/hold.py), connections leave their lines unread in `waiting`.
    holding: bool = False
    waiting: set[DeviceConnection] = field(default_factory=set)
    inflight: int = 0
    servers: list[asyncio.Server | ProxyListener] = field(default_factory=list)
    revocations: RevocationList | None = None
    device_patients: DevicePatients = field(default_factory=lambda: DevicePatients({}))

    def admit(self, connection: DeviceConnection) -> bool:
        if len(self.connections) >= self.settings.ingest.max_connections:
            self.stats.inc("connections_refused_total")
            return False
        self.connections.add(connection)
        self.stats.inc("connections_total")
        if self.inflight >= self.settings.ingest.max_inflight_total:
            connection.pause()
        return True

    def check_peer(
        self, connection: DeviceConnection, ssl_object: ssl.SSLObject | None
    ) -> bytes | None:
        """After a TLS handshake: the ERR line refusing the connection, or None to admit it.

        The handshake already checked the certificate against the CA and the
        CRL loaded at start; the CRL is checked again here, as it is now, so a
        revocation takes effect within a second without a restart.
        """
        self.stats.inc("tls_handshakes_completed_total")
        if ssl_object is None:
            return self._refuse("tls_unavailable", "no TLS session")
        problem = negotiated_problem(ssl_object)
        if problem is not None:
            return self._refuse("tls_policy", problem)
        peer = ssl_object.getpeercert() or {}
        if peer:
            connection.serial = peer_serial(peer)
            if self.revocations is not None and self.revocations.is_revoked(connection.serial):
                return self._refuse("certificate_revoked", "the client certificate is revoked")
            connection.identity = device_identity(peer)
            if connection.identity is not None and serves_tls(
                ssl_object.getpeercert(binary_form=True) or b""
            ):
                return self._refuse("not_a_device", "a server certificate is no device")
        if connection.identity is None and self.settings.ingest.require_client_cert:
            return self._refuse("no_identity", "the client certificate names no device")
        return None

    def refresh_revocations(self) -> None:
        """Re-read the CRL; close the connections of certificates it now revokes."""
        if self.revocations is None:
            return
        rejected = self.revocations.rejected
        changed = self.revocations.refresh()
        if self.revocations.rejected > rejected:
            self.stats.inc("tls_crl_rejected_total")
        if not changed:
            return
        for connection in list(self.connections):
            if connection.transport is not None and self.revocations.is_revoked(connection.serial):
                refusal = self._refuse("certificate_revoked", "the client certificate is revoked")
                connection.transport.write(refusal)
                connection.transport.close()

    def _refuse(self, reason: str, detail: str) -> bytes:
        self.stats.inc("tls_refused_total", reason=reason)
        return f"ERR 403 {reason}: {detail}\n".encode("ascii", "replace")

    def release(self, connection: DeviceConnection) -> None:
        self.connections.discard(connection)
        self.paused.discard(connection)
        self.waiting.discard(connection)

    def hold_lines(self) -> None:
        """Leave devices' lines unread from now on (each connection waits at its next line)."""
        self.holding = True

    def answer_waiting(self) -> int:
        """Handle lines again, first those that waited; how many connections waited."""
        self.holding = False
        waiting, self.waiting = self.waiting, set()
        for connection in waiting:
            connection.stop_waiting()
        return len(waiting)

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
        # Unset means off here: only `healthsync up` turns an unset port on.
        plain = cfg.plain_enabled is True
        if not plain and not cfg.tls_enabled:
            raise ConfigError("ingest has no listener: enable ingest.tls_enabled or plain_enabled")
        refusal = cfg.plain_refusal() if plain else None
        if refusal is not None:
            raise ConfigError(refusal)
        tls_context = None
        if cfg.tls_enabled:
            client_certs: ClientCerts = "required" if cfg.require_client_cert else "optional"
            tls_context = server_context(self.settings, "ingest", client_certs=client_certs)
            self.revocations = RevocationList(self.settings.tls.dir)
            self.revocations.refresh()
        if cfg.proxy_protocol:
            self._start_proxied(plain, tls_context)
        elif plain:
            server = await loop.create_server(
                lambda: DeviceConnection(self), cfg.host, cfg.port, reuse_address=True
            )
            self.servers.append(server)
        if tls_context is not None and not cfg.proxy_protocol:
            server = await loop.create_server(
                self._tls_connection,
                cfg.tls_host,
                cfg.tls_port,
                reuse_address=True,
                ssl=tls_context,
                ssl_handshake_timeout=_HANDSHAKE_TIMEOUT_S,
            )
            self.servers.append(server)
        self.publisher.start()

    def _start_proxied(self, plain: bool, tls_context: ssl.SSLContext | None) -> None:
        """Listeners behind HAProxy: each connection starts with a PROXY v2 header."""
        cfg = self.settings.ingest
        listeners = []
        if plain:
            listeners.append(
                ProxyListener((cfg.host, cfg.port), self._plain_connection, self.stats)
            )
        if tls_context is not None:
            listeners.append(
                ProxyListener(
                    (cfg.tls_host, cfg.tls_port),
                    self._tls_connection,
                    self.stats,
                    tls=tls_context,
                    timeout_s=_HANDSHAKE_TIMEOUT_S,
                )
            )
        for listener in listeners:
            listener.start()
            self.servers.append(listener)

    def _plain_connection(self, peer: Address | None = None) -> DeviceConnection:
        return DeviceConnection(self, peer=peer)

    def _tls_connection(self, peer: Address | None = None) -> DeviceConnection:
        # Called on accept, before the handshake: started minus completed
        # handshakes is the number refused (unknown CA, revoked, expired, weak).
        self.stats.inc("tls_handshakes_started_total")
        return DeviceConnection(self, tls=True, peer=peer)

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
            connection.flush_replies()
            if connection.transport is not None:
                connection.transport.close()
        await self.publisher.close(timeout=2.0)
