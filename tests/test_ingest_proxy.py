"""Ingest behind a load balancer: the PROXY protocol v2 header names the device's address."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from healthsync.config import Settings
from healthsync.ingest.proxy import ProxyHeader, ProxyHeaderError, build, build_local, parse
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Device, make_settings, wait_for
from tests.test_ingest_tls import device_context, stat

LINE = b"device_id=mon-px-1 patient_id=P-PX-1 seq=1 hr=71\n"


@pytest.fixture
def start_debug_ingest(
    broker: Service, redis_server: Service, tmp_path: Path
) -> Iterator[Callable[..., tuple[Settings, Path]]]:
    """Ingest alone, logging at DEBUG; returns its settings and its log file."""
    started: list[Pipeline] = []

    def start(**ingest: Any) -> tuple[Settings, Path]:
        settings = make_settings(broker, redis_server, ingest=ingest)
        settings.log_level = "DEBUG"
        running = Pipeline(settings, tmp_path / f"ingest-{len(started)}")
        started.append(running)
        running.start(stages=("ingest",))
        return settings, running.logs / "ingest.log"

    yield start
    for running in started:
        running.stop()


def peers(log: Path) -> list[tuple[str, bool]]:
    """The peers ingest logged for its connections, with whether each was TLS."""
    found = []
    for line in log.read_text().splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("msg") == "device connected":
            found.append((record["peer"][0], record["tls"]))
    return found


def proxied(settings: Settings, header: bytes) -> Device:
    device = Device(settings.ingest.host, settings.ingest.port)
    device.sock.sendall(header)
    return device


def test_the_header_names_the_device_and_a_connection_without_one_is_refused(
    start_debug_ingest: Callable[..., tuple[Settings, Path]],
) -> None:
    settings, log = start_debug_ingest(proxy_protocol=True, tls_enabled=False)
    port = settings.ingest.port
    device = proxied(settings, build(("127.0.0.2", 40123), ("127.0.0.1", port)))
    assert device.send(LINE).startswith("OK ")
    device.close()
    wait_for(lambda: ("127.0.0.2", False) in peers(log), timeout=10, what="the proxied peer")

    # A device that skips the balancer (or a proxy not configured for it) is turned away.
    before = stat(settings, "proxy_refused_total|reason=proxy_header_missing")
    direct = Device(settings.ingest.host, port)
    assert direct.send(LINE) == ("ERR 400 proxy_header_missing: no PROXY protocol v2 signature")
    assert direct.read() == "", "the connection is closed"
    direct.close()
    wait_for(
        lambda: stat(settings, "proxy_refused_total|reason=proxy_header_missing") == before + 1,
        timeout=10,
        what="the refusal to be counted",
    )

    # LOCAL (a proxy's own connection): served, with the socket's peer.
    local = proxied(settings, build_local())
    assert local.send(LINE.replace(b"seq=1", b"seq=2")).startswith("OK ")
    local.close()
    assert peers(log).count(("127.0.0.2", False)) == 1
    wait_for(lambda: stat(settings, "proxy_local_total") >= 1, timeout=10, what="LOCAL counted")


def tls_after_header(
    settings: Settings, context: ssl.SSLContext, header: bytes, line: bytes
) -> str:
    """Send the header and the TLS ClientHello in one segment, as HAProxy often does,
    then `line` over TLS; returns the answer."""
    raw = socket.create_connection((settings.ingest.tls_host, settings.ingest.tls_port), 15)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    first = True
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall((header if first else b"") + outgoing.read())
            first = False
            data = raw.recv(65536)
            assert data, "closed during the handshake"
            incoming.write(data)
    tls.write(line)
    raw.sendall(outgoing.read())
    answer = b""
    while not answer.endswith(b"\n"):
        try:
            answer += tls.read(4096)
        except ssl.SSLWantReadError:
            data = raw.recv(65536)
            assert data, "closed before the answer"
            incoming.write(data)
    raw.close()
    return answer.decode().strip()


def test_the_header_comes_before_the_tls_client_hello(
    start_debug_ingest: Callable[..., tuple[Settings, Path]],
) -> None:
    settings, log = start_debug_ingest(proxy_protocol=True)
    context = device_context(settings, "mon-px-1")
    header = build(("127.0.0.3", 50000), ("127.0.0.1", settings.ingest.tls_port))
    assert tls_after_header(settings, context, header, LINE).startswith("OK ")
    # Mutual TLS still ends at ingest: the certificate's device id is enforced.
    other = LINE.replace(b"mon-px-1", b"mon-px-2")
    assert tls_after_header(settings, context, header, other).startswith("ERR 403 device_mismatch")
    wait_for(lambda: ("127.0.0.3", True) in peers(log), timeout=10, what="the proxied TLS peer")


def test_a_listener_not_behind_a_proxy_never_honours_the_header(
    start_debug_ingest: Callable[..., tuple[Settings, Path]],
) -> None:
    settings, log = start_debug_ingest(tls_enabled=False)
    device = proxied(settings, build(("192.0.2.77", 4000), ("127.0.0.1", 7000)) + b"\n")
    device.sock.sendall(LINE)
    replies = [device.read()]
    while not replies[-1].startswith("OK "):
        replies.append(device.read())
        assert replies[-1], replies
    device.close()
    assert replies[0].startswith("ERR 4"), "the header is a malformed line"
    wait_for(lambda: peers(log), timeout=10, what="the connection to be logged")
    assert "192.0.2.77" not in log.read_text()
    assert set(peers(log)) == {("127.0.0.1", False)}  # this device, and up's wait for the port


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 7000\r\n", "proxy_header_missing"),
        (build_local()[:12] + b"\x10\x00\x00\x00", "proxy_header_invalid"),  # version 1
        (build_local()[:12] + b"\x2f\x00\x00\x00", "proxy_header_invalid"),  # command 15
        (build_local()[:14] + b"\xff\xff", "proxy_header_invalid"),  # absurd length
    ],
)
def test_malformed_headers_are_refused_with_a_reason(header: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as refused:
        parse(header[:16], b"")
    assert refused.value.reason == reason


def test_ipv6_and_truncated_headers() -> None:
    header = build(("2001:db8::7", 1234), ("::1", 7443))
    assert parse(header[:16], header[16:]) == ProxyHeader(
        local=False, source=("2001:db8::7", 1234), destination=("::1", 7443)
    )
    with pytest.raises(ProxyHeaderError, match="truncated"):
        parse(header[:16], header[16:-1])
