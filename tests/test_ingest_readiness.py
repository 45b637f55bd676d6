"""Ingest's readiness under load: a busy event loop still answers HAProxy's checks, a stuck
one does not, against a real broker and real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import struct
import threading
import time

import pytest

from healthsync.config import Settings
from healthsync.ingest.publisher import Publisher
from healthsync.ingest.readiness import Readiness
from healthsync.kafka import ensure_topics
from healthsync.stack import LOCALHOST, free_port


def check(port: int) -> tuple[int, float]:
    """HAProxy's check: GET /readyz with its 2 s timeout; the status and how long it took."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(LOCALHOST, port, timeout=2.0)
    try:
        connection.request("GET", "/readyz")
        status = connection.getresponse().status
    except TimeoutError:
        status = 0
    finally:
        connection.close()
    return status, time.monotonic() - started


def check_while_blocked(port: int, blocked_s: float, at_s: float) -> tuple[int, float]:
    """A check sent `at_s` into `blocked_s` of the calling event loop doing nothing else."""
    answers: list[tuple[int, float]] = []

    def later() -> None:
        time.sleep(at_s)
        answers.append(check(port))

    thread = threading.Thread(target=later)
    thread.start()
    time.sleep(blocked_s)  # the loop busy: a flood of lines, replies and delivery reports
    thread.join()
    return answers[0]


def test_a_busy_event_loop_is_ready_and_a_stuck_one_is_not(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="healthsync.ingest.readiness")
    ensure_topics(settings.kafka)
    publisher = Publisher(settings.kafka, 5.0)
    port = free_port()

    async def scenario() -> None:
        readiness = Readiness(publisher, settings.kafka.vitals_topic, loop_stale_s=3.0)
        await readiness.start(LOCALHOST, port)
        stop = asyncio.Event()
        beat = asyncio.create_task(readiness.beat_forever(stop))
        try:
            for _ in range(100):
                if (await asyncio.to_thread(check, port))[0] == 200:
                    break
                await asyncio.sleep(0.1)
            # Busy for 2.5 s: the check is answered at once, and ready. (Answered by the
            # loop, it waited 2 s: HAProxy's timeout, after which it cut every session.)
            status, took = check_while_blocked(port, blocked_s=2.5, at_s=0.5)
            assert (status, took < 1.0) == (200, True), (status, took)
            await asyncio.sleep(0.6)  # it beats again
            # Stuck past loop_stale_s: not ready, so that devices go elsewhere.
            status, took = check_while_blocked(port, blocked_s=4.5, at_s=4.0)
            assert (status, took < 1.0) == (503, True), (status, took)
            await asyncio.sleep(0.6)
            assert (await asyncio.to_thread(check, port))[0] == 200, "beating again"
        finally:
            stop.set()
            await beat
            readiness.close()

    asyncio.run(scenario())
    # An operator sees why HAProxy took the replica out, and when it came back.
    changes = [
        (r.levelno, r.__dict__.get("reason"))
        for r in caplog.records
        if r.getMessage() == "readiness changed"
    ]
    warnings = [reason for level, reason in changes if level == logging.WARNING]
    assert (warnings, changes[-1]) == (["event loop stalled"], (logging.INFO, "ready")), changes


def cut_short(port: int, request: bytes) -> None:
    """A checker that sends `request` (perhaps nothing) and resets the connection at once,
    as HAProxy does with a check it has decided."""
    with socket.create_connection((LOCALHOST, port), timeout=2.0) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if request:
            client.sendall(request)


def test_checks_cut_short_leave_no_traceback_in_the_json_log(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    publisher = Publisher(settings.kafka, 5.0)
    port = free_port()
    readiness = Readiness(publisher, settings.kafka.vitals_topic)
    asyncio.run(readiness.start(LOCALHOST, port))
    readiness.draining = True  # every check fails: HAProxy then resets at the status line
    try:
        for _ in range(20):
            cut_short(port, b"")
            cut_short(port, b"GET /readyz HTTP/1.0\r\n\r\n")
        time.sleep(0.5)  # the server's threads are done with them
        assert check(port)[0] == 503, "still answering"
    finally:
        readiness.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
