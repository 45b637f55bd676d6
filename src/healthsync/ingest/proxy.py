"""The PROXY protocol, version 2: the header a load balancer sends before the client's bytes.

A listener configured for it (``ingest.proxy_protocol``) sits behind HAProxy
on a private loopback port; the header tells it the device's real address,
which the TCP peer (HAProxy) does not. The header is binary and comes first
on the connection, before a TLS ClientHello:

    12 bytes  signature  \\r\\n\\r\\n\\0\\r\\nQUIT\\n
     1 byte   version (high nibble, 2) and command (low: 0 LOCAL, 1 PROXY)
     1 byte   address family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and
              transport (low: 0 UNSPEC, 1 STREAM, 2 DGRAM)
     2 bytes  length of what follows, big-endian
     then     source and destination addresses and ports, then optional TLVs

LOCAL is what a proxy sends for its own connections (health checks): the
connection is the proxy's, and the socket peer stays the peer. Only
``proxy_protocol`` listeners read the header; on any other listener these
bytes are just a malformed line, so a device cannot claim another address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_BYTES = 16
# What follows the fixed part: addresses (at most 216 bytes for UNIX) and TLVs.
# HAProxy sends a few dozen bytes; more than this is not a proxy talking.
MAX_LENGTH = 1024
_INET, _INET6, _UNIX = 1, 2, 3
_ADDRESS_BYTES = {_INET: 12, _INET6: 36, _UNIX: 216}

Address = tuple[str, int]


class ProxyHeaderError(Exception):
    """The connection did not start with a valid PROXY v2 header."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ProxyHeader:
    """What the header said: LOCAL (the proxy's own connection) or the client's addresses."""

    local: bool
    source: Address | None = None
    destination: Address | None = None


def remaining_length(fixed: bytes) -> int:
    """From the first 16 bytes: how many bytes of header follow. Raises ProxyHeaderError."""
    if len(fixed) < FIXED_BYTES or fixed[:12] != SIGNATURE:
        raise ProxyHeaderError("proxy_header_missing", "no PROXY protocol v2 signature")
    if fixed[12] >> 4 != 2:
        raise ProxyHeaderError("proxy_header_invalid", f"version {fixed[12] >> 4}, not 2")
    if fixed[12] & 0x0F not in (0, 1):
        raise ProxyHeaderError("proxy_header_invalid", f"unknown command {fixed[12] & 0x0F}")
    (length,) = struct.unpack("!H", fixed[14:16])
    if length > MAX_LENGTH:
        raise ProxyHeaderError("proxy_header_invalid", f"length {length} over {MAX_LENGTH}")
    return int(length)


def parse(fixed: bytes, rest: bytes) -> ProxyHeader:
    """The header from its fixed part and the `remaining_length` bytes after it."""
    if len(rest) != remaining_length(fixed):
        raise ProxyHeaderError("proxy_header_invalid", "truncated header")
    if fixed[12] & 0x0F == 0:
        return ProxyHeader(local=True)
    family = fixed[13] >> 4
    if family not in _ADDRESS_BYTES:
        # UNSPEC: the proxy does not know the client; the socket peer stands.
        return ProxyHeader(local=False)
    if len(rest) < _ADDRESS_BYTES[family]:
        raise ProxyHeaderError("proxy_header_invalid", "address block too short")
    if family == _INET:
        src, dst, sport, dport = struct.unpack("!4s4sHH", rest[:12])
    elif family == _INET6:
        src, dst, sport, dport = struct.unpack("!16s16sHH", rest[:36])
    else:
        path = rest[:108].split(b"\0", 1)[0].decode("utf-8", "replace")
        return ProxyHeader(local=False, source=(path, 0))
    return ProxyHeader(
        local=False,
        source=(str(ipaddress.ip_address(src)), sport),
        destination=(str(ipaddress.ip_address(dst)), dport),
    )


def build(source: Address, destination: Address) -> bytes:
    """A PROXY v2 header for a TCP connection from `source` to `destination` (for tests
    and tools; in production HAProxy writes it)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one address family")
    family = _INET if src.version == 4 else _INET6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes([0x21, (family << 4) | 1]) + struct.pack("!H", len(body)) + body


def build_local() -> bytes:
    """The LOCAL header a proxy sends for its own connections (health checks)."""
    return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)


async def read_header(sock: socket.socket) -> ProxyHeader:
    """Read exactly the header from a non-blocking socket, never a byte of what follows.

    Reading no further matters for TLS: the ClientHello right behind the header
    must stay in the socket for the TLS layer.
    """
    loop = asyncio.get_running_loop()
    fixed = bytearray()
    while len(fixed) < FIXED_BYTES:
        fixed += await _receive(loop, sock, FIXED_BYTES - len(fixed))
        # A device that sends a line instead of a header is told so at once.
        if not SIGNATURE.startswith(bytes(fixed[:12])):
            raise ProxyHeaderError("proxy_header_missing", "no PROXY protocol v2 signature")
    rest = bytearray()
    length = remaining_length(bytes(fixed))
    while len(rest) < length:
        rest += await _receive(loop, sock, length - len(rest))
    return parse(bytes(fixed), bytes(rest))


async def _receive(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    chunk = await loop.sock_recv(sock, n)
    if not chunk:
        raise ProxyHeaderError("proxy_header_invalid", "connection closed inside the header")
    return chunk
