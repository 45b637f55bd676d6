"""kill -9 of the embedded broker and of its HAProxy front under `up`: both come back.

The broker keeps topics in memory (docs/OPERATIONS.md): its restart loses what
it held, including readings acknowledged but not yet processed; the
pipeline carries on with new readings. HAProxy holds no data: killing it
loses nothing acknowledged.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import cast

import pytest
from redis import Redis

from healthsync.config import ProcessorSettings
from healthsync.names import RedisKeys
from tests.conftest import wait_for
from tests.live_stack import Load, live_stack

PATIENTS = [f"P-{i}" for i in range(4)]


def stored_ids(client: Redis, keys: RedisKeys) -> set[str]:
    members: set[str] = set()
    for patient in PATIENTS:
        members.update(
            m.decode() for m in cast("list[bytes]", client.zrange(keys.seen(patient), 0, -1))
        )
    return members


def started_again(log: Path) -> bool:
    return log.read_text().count('"processor started"') >= 2


@pytest.mark.timeout(400)
def test_killed_broker_and_front_are_restarted_and_readings_flow_again(tmp_path: Path) -> None:
    with live_stack(tmp_path) as stack:
        client = stack.redis()
        keys = stack.keys()
        try:
            with Load(stack, PATIENTS) as load:
                load.sent(200)
                stack.kill(r"haproxy .*broker-tls\.cfg")
                load.sent(200)
            # HAProxy holds no data: every acknowledged reading arrives, once.
            wait_for(
                lambda: stored_ids(client, keys) == load.acknowledged,
                timeout=60,
                what="every reading acknowledged around the HAProxy restart",
            )
            before = stored_ids(client, keys)

            with Load(stack, PATIENTS, first_seq=100_000) as again:
                again.sent(100)
                stack.kill(r"tansu.* broker ")
                again.sent(100, timeout=120)
            after_restart = again.last
            wait_for(
                lambda: after_restart in stored_ids(client, keys),
                timeout=120,
                what="a reading sent after the broker restart to be stored",
            )
            # What Redis held is kept; only what the broker held is at risk.
            assert before <= stored_ids(client, keys)
            # Every processor started afresh with the new broker: `process-2` too, which
            # otherwise kept its partitions and a producer the new broker fenced off.
            # The supervisor restarts them once the broker is back; one may store the
            # reading above before the last of them has logged its start.
            logs = sorted((stack.run_dir / "logs").glob("process*.log"))
            # As many as `up` runs here: two on two cores or more (ProcessorSettings).
            assert len(logs) == ProcessorSettings().processes
            for log in logs:
                wait_for(
                    partial(started_again, log),
                    timeout=30,
                    what=f"{log.name} to show the processor started again",
                )
        finally:
            client.close()
    output = stack.output
    assert "broker-tls exited with code -9; restart 1" in output
    assert "broker exited with code -9; restart 1" in output
    assert "not durable" in output
