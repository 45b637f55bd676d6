"""Many devices sending pipelined lines at once, against a real ingest server and broker."""

from __future__ import annotations

import selectors
import socket
import time

from tests.conftest import Device
from tests.test_ingest import StartIngest

CONNECTIONS = 60
LINES = 900  # under the per-connection in-flight bound (1,000): only the flood itself


def test_a_flood_on_many_connections_is_answered_while_it_is_still_read(
    start_ingest: StartIngest,
) -> None:
    # Each turn of the event loop ran the callbacks of every connection with data, and
    # each handled every line it had: a flood on many connections was read whole in one
    # turn, and no reply (nor the readiness heartbeat) could go out until it was. Behind
    # HAProxy, a flood long enough made the replica look stalled and cut every session.
    settings = start_ingest(max_inflight_total=CONNECTIONS * LINES)
    addr = (settings.ingest.host, settings.ingest.port)
    # A fresh producer's first delivery can wait up to 0.5 s more for its producer id,
    # whatever the load (see ingest/publisher.py): taken before the flood, so "first"
    # measures the flood alone.
    warm = Device(*addr)
    assert warm.send(b"device_id=fl-warm patient_id=P-F seq=0 hr=70").startswith("OK ")
    warm.close()
    socks = [socket.create_connection(addr, timeout=15) for _ in range(CONNECTIONS)]
    payloads = [
        "".join(f"device_id=fl{n} patient_id=P-F{n} seq={s} hr=70\n" for s in range(LINES))
        for n in range(CONNECTIONS)
    ]
    selector = selectors.DefaultSelector()
    left = {}
    try:
        sent_at = time.monotonic()
        for n, sock in enumerate(socks):
            sock.sendall(payloads[n].encode())
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, n)
            left[n] = LINES
        replies: list[bytes] = []
        first_at = last_at = 0.0
        deadline = sent_at + 120
        while any(left.values()) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                if not data:
                    left[key.data] = 0
                    continue
                now = time.monotonic()
                first_at = first_at or now
                last_at = now
                left[key.data] -= data.count(b"\n")
                replies.append(data)
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    lines = b"".join(replies).splitlines()
    assert len(lines) == CONNECTIONS * LINES
    assert all(line.startswith(b"OK ") for line in lines), next(
        line for line in lines if not line.startswith(b"OK ")
    )
    first, last = first_at - sent_at, last_at - sent_at
    # Before, the first answer came once every line of every device had been handled:
    # only the broker's last acknowledgements were left, so first was close to last.
    assert first < last / 2, f"first answer after {first:.2f} s, last after {last:.2f} s"
