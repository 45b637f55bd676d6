"""Holding ingest while `up` recycles the broker (ingest/hold.py): readings wait, none is lost."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from healthsync.children import Child
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Device, make_settings, wait_for

StartHeld = Callable[..., tuple[Pipeline, Child]]


@pytest.fixture
def start_held(broker: Service, redis_server: Service, tmp_path: Path) -> Iterator[StartHeld]:
    """Start one ingest process with `ingest` settings changed, and hold it as a recycle does."""
    started: list[Pipeline] = []

    def start(**ingest: Any) -> tuple[Pipeline, Child]:
        settings = make_settings(broker, redis_server, ingest=ingest)
        pipeline = Pipeline(settings, tmp_path / f"ingest-{len(started)}")
        started.append(pipeline)
        pipeline.start(stages=("ingest",))
        [child] = [c for c in pipeline.children.values() if c.stage == "ingest"]
        signal_child(child, signal.SIGUSR1)
        held = pipeline.hold_file(child.name)
        wait_for(held.exists, timeout=15, what="ingest to say it is held")
        return pipeline, child

    yield start
    for pipeline in started:
        pipeline.stop()


def signal_child(child: Child, sig: signal.Signals) -> None:
    assert child.process is not None
    os.kill(child.process.pid, sig)


def connect(pipeline: Pipeline, timeout: float) -> Device:
    device = Device(pipeline.settings.ingest.host, pipeline.settings.ingest.port)
    device.sock.settimeout(timeout)
    return device


def test_a_reading_sent_while_held_is_acknowledged_once_released(
    start_held: StartHeld,
) -> None:
    pipeline, child = start_held()
    device = connect(pipeline, timeout=15.0)
    device.sock.sendall(b"device_id=dev-h patient_id=P-9 seq=1 hr=70\n")
    # No answer while held: neither OK (Kafka has not got it) nor ERR.
    readable, _, _ = select.select([device.sock], [], [], 2.0)
    assert readable == []

    signal_child(child, signal.SIGUSR2)
    reply = device.read()
    assert reply.startswith("OK "), reply  # the line that waited: a bash device loses nothing
    assert not pipeline.hold_file(child.name).exists()
    assert device.send(b"device_id=dev-h patient_id=P-9 seq=2 hr=71").startswith("OK ")
    device.close()


# With no wait the answer comes at once: a reply later than 2 s fails the test.
@pytest.mark.parametrize(("hold_wait_s", "answer_within_s"), [(1.0, 10.0), (0.0, 2.0)])
def test_past_hold_wait_s_a_held_ingest_answers_err_503_and_the_resend_is_stored(
    start_held: StartHeld, hold_wait_s: float, answer_within_s: float
) -> None:
    pipeline, child = start_held(hold_wait_s=hold_wait_s)
    device = connect(pipeline, timeout=answer_within_s)
    # Still held past the wait (at once with 0): the line that waited, and one sent
    # after, get ERR 503.
    for seq in (1, 2):
        reply = device.send(f"device_id=dev-h patient_id=P-9 seq={seq} hr=70".encode())
        assert reply.startswith("ERR 503 kafka_unavailable"), reply

    signal_child(child, signal.SIGUSR2)
    wait_for(lambda: not pipeline.hold_file(child.name).exists(), 15, "the release")
    # The device sends the same seq again, and now it is stored.
    assert device.send(b"device_id=dev-h patient_id=P-9 seq=1 hr=70").startswith("OK ")
    device.close()
