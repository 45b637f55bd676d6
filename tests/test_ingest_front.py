"""`up` with ingest replicas behind HAProxy: a replica killed under load loses nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import Any, cast

import pytest
from redis import Redis

from healthsync.names import RedisKeys
from tests.conftest import Device, wait_for
from tests.live_stack import LiveStack, Load, live_stack, sent_each
from tests.test_status import status

PATIENTS = [f"P-F{i}" for i in range(3)]


def stored_ids(client: Redis, keys: RedisKeys) -> set[str]:
    members: set[str] = set()
    for patient in PATIENTS:
        members.update(
            m.decode() for m in cast("list[bytes]", client.zrange(keys.seen(patient), 0, -1))
        )
    return members


def replicas(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        r["name"]: r
        for r in snapshot["processes"]
        if r["kind"] == "stage" and r["name"].startswith("ingest-")
    }


def all_up(snapshot: dict[str, Any]) -> bool:
    backends = snapshot.get("front", {}).get("backends", {})
    states = [state for servers in backends.values() for state in servers.values()]
    return set(backends) == {"ingest_plain", "ingest_tls"} and states == ["UP"] * 4


def when_all_up(stack: LiveStack) -> dict[str, Any] | None:
    snapshot = status(stack)
    return snapshot if all_up(snapshot) else None


def logged_peer(stack: LiveStack, address: str) -> bool:
    logs = stack.run_dir / "logs"
    return any(f'"peer":["{address}",' in (logs / f"ingest-{n}.log").read_text() for n in (1, 2))


@pytest.mark.timeout(400)
def test_a_replica_killed_under_load_loses_nothing_and_is_taken_back(tmp_path: Path) -> None:
    env = {"HEALTHSYNC_LOG_LEVEL": "DEBUG"}  # ingest logs each connection's peer at DEBUG
    with live_stack(tmp_path, env=env) as stack:
        client = stack.redis()
        keys = stack.keys()
        try:
            # The device's own address reaches ingest through the PROXY header.
            raw = socket.create_connection(
                ("127.0.0.1", stack.ingest_port), timeout=15, source_address=("127.0.0.2", 0)
            )
            device = Device.__new__(Device)
            device.sock, device.reader = raw, raw.makefile("rb")
            assert device.send(b"device_id=d-src patient_id=P-SRC hr=70").startswith("OK ")
            device.close()
            wait_for(lambda: logged_peer(stack, "127.0.0.2"), 30, "ingest to log 127.0.0.2")

            before = wait_for(lambda: when_all_up(stack), 60, "every replica UP in HAProxy")
            running = replicas(before)
            assert set(running) == {"ingest-1", "ingest-2"}
            front = [r for r in before["processes"] if r["name"] == "ingest-front"]
            assert front[0]["kind"] == "service" and front[0]["alive"], front
            assert {r["pid"] for r in running.values()} == set(stack.pids(r"-m healthsync ingest"))
            victim = running["ingest-1"]["pid"]

            loads = [Load(stack, [p], first_seq=n * 100_000) for n, p in enumerate(PATIENTS)]
            with contextlib.ExitStack() as started:
                for load in loads:
                    started.enter_context(load)
                sent_each(loads, 50)
                os.kill(victim, signal.SIGKILL)
                # Devices carry on through the other replica.
                sent_each(loads, 50, timeout=30)

                def restarted_and_up() -> dict[str, Any] | None:
                    snapshot = status(stack)
                    row = replicas(snapshot)["ingest-1"]
                    back = row["pid"] != victim and row["alive"] and all_up(snapshot)
                    return snapshot if back else None

                after = wait_for(restarted_and_up, 60, "ingest-1 restarted and UP in HAProxy")
                assert replicas(after)["ingest-1"]["restarts"] == 1
                assert replicas(after)["ingest-1"]["pid"] in stack.pids(r"-m healthsync ingest")
                sent_each(loads, 20)
            acknowledged = set().union(*(load.acknowledged for load in loads))
            # Every acknowledged reading is stored, and (by reading id) once.
            wait_for(
                lambda: stored_ids(client, keys) == acknowledged,
                timeout=60,
                what="every reading acknowledged around the replica's death",
            )
        finally:
            client.close()
    assert "ingest-1 exited with code -9; restart 1" in stack.output
