"""The ingest server's promises that need a broker to fail or a device to misbehave."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from healthsync.config import Settings
from healthsync.domain.readings import reading_id_for
from healthsync.security.codec import Codec
from healthsync.stack import Service, free_port, start_broker
from tests.conftest import Device, wait_for

StartIngest = Callable[..., Settings]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Service]:
    """A broker this test may kill."""
    service = start_broker(log_dir=tmp_path)
    yield service
    service.stop()


def connect(settings: Settings) -> Device:
    return Device(settings.ingest.host, settings.ingest.port)


def test_no_ok_for_a_reading_kafka_did_not_take(
    own_broker: Service, start_ingest: StartIngest
) -> None:
    settings = start_ingest(own_broker, ack_timeout_s=2.0)
    device = connect(settings)
    assert device.send(b"device_id=d1 patient_id=P-1 seq=1 hr=70").startswith("OK ")

    own_broker.process.kill()
    own_broker.process.wait()
    replies = []
    started = time.monotonic()
    for seq in range(2, 7):
        replies.append(device.send(f"device_id=d1 patient_id=P-1 seq={seq} hr=70".encode()))
    waited = time.monotonic() - started

    assert all(r.startswith("ERR 503 kafka_unavailable") for r in replies), replies
    # Each answer comes within the ack timeout, not after the device gave up.
    assert waited < 5 * (2.0 + 3.0), waited
    # The connection is still usable: the device can keep sending (and keep hearing 503).
    assert device.send(b"device_id=d1 patient_id=P-1 seq=9 hr=70").startswith("ERR 503")
    device.close()


def test_connection_limit(start_ingest: StartIngest) -> None:
    settings = start_ingest(max_connections=2)
    first = connect(settings)
    assert first.send(b"device_id=d1 patient_id=P-1 hr=70").startswith("OK ")

    def second_connection() -> Device | None:
        # The readiness probe's connection may not be released yet: retry briefly.
        candidate = connect(settings)
        if candidate.send(b"device_id=d2 patient_id=P-2 hr=70").startswith("OK "):
            return candidate
        candidate.close()
        return None

    second = wait_for(second_connection, timeout=10, what="a second connection")
    address = (settings.ingest.host, settings.ingest.port)
    with socket.create_connection(address, timeout=10) as third:
        assert third.makefile("rb").readline() == b"ERR 503 busy: too many connections\n"
    second.close()
    time.sleep(0.2)  # let the server see the close
    again = connect(settings)
    assert again.send(b"device_id=d1 patient_id=P-1 hr=71").startswith("OK ")
    assert first.send(b"device_id=d1 patient_id=P-1 hr=72").startswith("OK ")
    again.close()
    first.close()


def test_idle_connections_are_closed(start_ingest: StartIngest) -> None:
    device = connect(start_ingest(idle_timeout_s=1.0))
    assert device.send(b"device_id=d1 patient_id=P-1 hr=70").startswith("OK ")
    assert device.reader.readline() == b"", "the server should close an idle connection"
    device.close()


def test_pipelined_lines_are_answered_in_order(device: Device) -> None:
    lines = []
    for seq in range(200):
        if seq % 10 == 3:
            lines.append(f"device_id=d2 patient_id=P-2 seq={seq} hr=999")
        else:
            lines.append(f"device_id=d2 patient_id=P-2 seq={seq} hr={60 + seq % 30}")
    device.sock.sendall(("\n".join(lines) + "\n").encode())
    replies = [device.read() for _ in lines]
    for seq, reply in enumerate(replies):
        expected = "ERR 422" if seq % 10 == 3 else "OK "
        assert reply.startswith(expected), (seq, reply)
    assert len({r.split()[1] for r in replies if r.startswith("OK")}) == 180


def test_a_deeply_nested_json_line_is_refused_and_the_connection_goes_on(device: Device) -> None:
    """About 1,000 levels of nesting (2 kB) raised RecursionError in the parser: the
    connection closed with no reply, and the OK of the line before it was lost."""
    deep = b'{"device_id": "d3", "patient_id": "P-3", "x": ' + b"[" * 990 + b"]" * 990 + b"}"
    device.sock.sendall(b"device_id=d3 patient_id=P-3 hr=70\n" + deep + b"\n")
    device.sock.sendall(b"device_id=d3 patient_id=P-3 hr=71\n")
    replies = [device.read() for _ in range(3)]
    assert replies[0].startswith("OK ") and replies[2].startswith("OK "), replies
    assert replies[1].startswith("ERR 400") and "malformed" in replies[1], replies


def test_blank_lines_are_keep_alives_that_get_no_answer(device: Device) -> None:
    device.sock.sendall(b"\n \r\n\t\n" + b"device_id=d4 patient_id=P-4 hr=70\n")
    assert device.read().startswith("OK ")  # the first answer is the reading's
    assert device.send(b"device_id=d4 patient_id=P-4 hr=71").startswith("OK ")


def test_backpressure_bounds_in_flight_readings_without_losing_any(
    start_ingest: StartIngest,
) -> None:
    settings = start_ingest(max_inflight_per_connection=4, max_inflight_total=6)
    devices = [connect(settings) for _ in range(3)]
    for n, device in enumerate(devices):
        lines = [f"device_id=bp{n} patient_id=P-{n} seq={seq} hr=70" for seq in range(150)]
        device.sock.sendall(("\n".join(lines) + "\n").encode())
    for device in devices:
        replies = [device.read() for _ in range(150)]
        assert all(r.startswith("OK ") for r in replies), replies[:3]
        assert len(set(replies)) == 150
        device.close()


def test_readings_without_seq_or_ts_sent_together_get_ids_of_their_own(
    start_ingest: StartIngest,
) -> None:
    """Such a reading is named by its device and the millisecond it was received in.
    Lines sent in one write are parsed within microseconds of each other: each needs an
    id of its own, or the processor keeps the first and drops the rest as resends of it,
    after they were answered OK."""
    device = connect(start_ingest())
    lines = [
        b"device_id=mon-nts patient_id=P-1 hr=70",
        b"device_id=mon-nts patient_id=P-1 spo2=95",
        b"device_id=mon-nts patient_id=P-1 temp=36.9",
    ]
    replies = device.send_many(lines)
    assert all(r.startswith("OK ") for r in replies), replies
    assert len(set(replies)) == 3, replies
    # A line that names its time is still named by it: sent twice, it is one reading.
    stamped = b"device_id=mon-nts patient_id=P-1 ts=1767225600 hr=71"
    assert device.send_many([stamped, stamped])[0] == device.send(stamped)
    device.close()


def test_a_device_that_reads_no_answers_is_read_no_further(start_ingest: StartIngest) -> None:
    """Each line gets an answer, and an answer to a rejected line is 20 times longer than
    `x`: a device that writes and never reads (a bash script's `echo ... >&3`) made
    ingest keep every answer in memory, at 20 times the rate it sent, for as long as it
    went on. Its lines are read no further while its answers wait, and none is lost."""
    settings = start_ingest()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((settings.ingest.host, settings.ingest.port))
    lines = 400_000
    sock.sendall(b"x\n" * lines)  # the kernel's buffers take all of it
    url = settings.redis.url
    assert url

    def handled() -> int:
        with Redis.from_url(url) as redis:
            return int(redis.hget(settings.redis.keys.stats("ingest"), "lines_total") or 0)

    def settled() -> int | None:
        before = handled()
        time.sleep(1.5)  # ingest publishes its counts every second
        after = handled()
        return after if after == before and after > 0 else None

    # It stops once the answers fill the kernel's buffers (a few MB on loopback) and
    # its own high-water mark; before, it read on until every line was handled.
    stopped_at = wait_for(settled, timeout=60, what="ingest to stop reading")
    assert stopped_at < lines // 2, stopped_at
    # Read now, the device gets every answer, in order.
    reader = sock.makefile("rb")
    answers = [reader.readline() for _ in range(lines)]
    assert all(a.startswith(b"ERR 400 malformed") for a in answers), {a[:40] for a in answers}
    reader.close()
    sock.close()


def test_a_line_at_the_limit_is_accepted_however_its_line_end_arrives(
    start_ingest: StartIngest,
) -> None:
    """The line end is not counted (a line of the limit and CRLF is accepted), also when
    the CR and LF arrive in separate segments: the CR alone used to count towards it."""
    device = connect(start_ingest())
    body = b"device_id=mon-cr patient_id=P-1 hr=70"
    line = body + b" " * (4096 - len(body))
    assert device.send(line + b"\r\n").startswith("OK ")
    device.sock.sendall(line + b"\r")
    time.sleep(0.3)  # read by the server on its own
    device.sock.sendall(b"\n")
    assert device.read().startswith("OK ")
    assert device.send(line + b"  \r\n").startswith("ERR 413 too_long")
    device.close()


def test_reading_ids_are_keyed(start_ingest: StartIngest) -> None:
    """A reading id names no device: without the keyring, guessing device and seq finds no id."""
    settings = start_ingest()
    device = connect(settings)
    first = device.send(b"device_id=mon-key-1 patient_id=P-1 seq=7 hr=70")
    resend = device.send(b"device_id=mon-key-1 patient_id=P-1 seq=7 hr=70")
    device.close()
    assert first.startswith("OK ") and resend == first, "still deterministic"
    reading_id = first.removeprefix("OK ")
    guessed = hashlib.blake2b(b"mon-key-1\x1fseq\x1f7", digest_size=12).hexdigest()
    assert reading_id != guessed
    assert reading_id == reading_id_for("mon-key-1", 7, 0, key=Codec.from_settings(settings).id_key)


def readyz(settings: Settings) -> int:
    """The readiness status; 0 while the check port is not listening yet (it opens
    on its own thread, possibly after the device ports)."""
    try:
        with socket.create_connection((settings.ingest.host, settings.ingest.check_port), 5) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return int(s.makefile("rb").readline().split()[1])
    except ConnectionRefusedError:
        return 0


def test_readiness_follows_kafka(own_broker: Service, start_ingest: StartIngest) -> None:
    """A replica that cannot reach Kafka says so, so that the balancer sends devices elsewhere."""
    settings = start_ingest(own_broker, check_port=free_port())
    wait_for(lambda: readyz(settings) == 200, timeout=20, what="ingest to be ready")
    own_broker.process.kill()
    own_broker.process.wait()
    wait_for(lambda: readyz(settings) == 503, timeout=20, what="ingest to say it is not ready")
