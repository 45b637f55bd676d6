"""A listener whose connections start with a PROXY v2 header (behind HAProxy).

asyncio's own servers hand the first bytes to the protocol, or to TLS, at
once; here each accepted socket first gives up exactly its header (see
proxy.py), and only then becomes a device connection, with TLS if the
listener has it, and with the header's source as its peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable

from healthsync.ingest.proxy import Address, ProxyHeaderError, read_header
from healthsync.metrics import StatsRecorder

log = logging.getLogger(__name__)

# How long a refused connection may take to close its side after our answer.
_LINGER_S = 2.0


# Makes a device connection whose peer is the given address (None: the socket's).
ConnectionFactory = Callable[[Address | None], asyncio.Protocol]


class ProxyListener:
    """Accepts on `address`, reads each connection's PROXY header, then serves it."""

    def __init__(
        self,
        address: Address,
        factory: ConnectionFactory,
        stats: StatsRecorder,
        *,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.factory = factory
        self.stats = stats
        self.tls = tls
        self.timeout_s = timeout_s
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(512)
        self.sock.setblocking(False)
        self._accepting: asyncio.Task[None] | None = None
        self._opening: set[asyncio.Task[None]] = set()

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept(), name="accept")

    def close(self) -> None:
        """Stop accepting; connections half-way through their header are dropped."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in self._opening:
            task.cancel()
        self.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:  # e.g. out of file descriptors: keep listening
                log.warning("accept failed", extra={"error": str(exc)})
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._open(conn))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            header = await asyncio.wait_for(read_header(conn), self.timeout_s)
        except ProxyHeaderError as exc:
            self.stats.inc("proxy_refused_total", reason=exc.reason)
            log.debug("connection refused", extra={"reason": exc.reason})
            await _refuse(conn, f"ERR 400 {exc.reason}: {exc.detail}\n".encode())
            return
        except (TimeoutError, OSError):
            self.stats.inc("proxy_refused_total", reason="proxy_header_timeout")
            conn.close()
            return
        if header.local:
            self.stats.inc("proxy_local_total")
        connection = self.factory(header.source)
        try:
            await loop.connect_accepted_socket(
                lambda: connection,
                conn,
                ssl=self.tls,
                ssl_handshake_timeout=self.timeout_s if self.tls else None,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            # A failed TLS handshake: counted as started but never completed.
            log.debug("handshake failed", extra={"error": type(exc).__name__})
            conn.close()


async def _refuse(conn: socket.socket, reply: bytes) -> None:
    """Answer and close so that the answer arrives: closing with unread bytes would
    reset the connection and the device would never see why."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError, TimeoutError):
        await loop.sock_sendall(conn, reply)
        conn.shutdown(socket.SHUT_WR)
        # Read and drop what the device sent until it closes too (briefly).
        async with asyncio.timeout(_LINGER_S):
            while await loop.sock_recv(conn, 65536):
                pass
    conn.close()
