"""`healthsync status` against a live `up`: the right pids, restarts and connections."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.live_stack import LiveStack, live_stack

# Each process `up` runs, and how its command line looks.
PATTERNS = {
    "redis": r"redis-server",
    "broker": r"tansu.* broker ",
    "broker-tls": r"haproxy .*broker-tls\.cfg",
    "ingest": r"-m healthsync ingest",
    "process": r"-m healthsync process",
    "api": r"-m healthsync api",
    "archive": r"-m healthsync archive",
    "scheduler": r"-m healthsync scheduler",
}


def status(stack: LiveStack) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "healthsync", "status", "--json"],
        cwd=stack.directory,
        capture_output=True,
        timeout=60,
        check=True,
    )
    snapshot: dict[str, Any] = json.loads(result.stdout)
    return snapshot


@pytest.mark.timeout(300)
def test_status_lists_every_process_with_its_pid_and_the_open_connections(
    tmp_path: Path,
) -> None:
    # One ingest and one processor, each found by its command line;
    # tests/test_ingest_front.py covers replicas, tests/test_up_processors.py processors.
    one_each = {"HEALTHSYNC_INGEST_REPLICAS": "1", "HEALTHSYNC_PROCESSOR_PROCESSES": "1"}
    with live_stack(tmp_path, env=one_each) as stack:
        wait_for((stack.run_dir / "state.json").exists, what="state.json")
        devices = [stack.device() for _ in range(3)]
        try:
            for device in devices:
                assert device.send(b"device_id=d-1 patient_id=P-1 hr=70").startswith("OK ")
            snapshot = wait_for(
                lambda: (
                    (s := status(stack))["ingest"]["connections_open"] == 3
                    and s["consumer_lag"]
                    and s
                ),
                timeout=60,
                what="status to count 3 open ingest connections and show the lag",
            )
        finally:
            for device in devices:
                device.close()
        by_name = {row["name"]: row for row in snapshot["processes"]}
        assert set(by_name) == set(PATTERNS)
        for name, pattern in PATTERNS.items():
            row = by_name[name]
            assert row["pid"] == stack.pid(pattern), name
            assert row["alive"] and row["rss_bytes"] > 0 and row["restarts"] == 0, row
        assert snapshot["up_pid"] == stack.process.pid
        assert snapshot["redis"]["clients"] >= 3  # ingest, processor, API at least
        lag = snapshot["consumer_lag"]
        assert set(lag) <= {str(p) for p in range(6)} and all(v >= 0 for v in lag.values())

        old = stack.kill(PATTERNS["ingest"])
        restarted = wait_for(
            lambda: next(
                (
                    r
                    for r in status(stack)["processes"]
                    if r["name"] == "ingest" and r["pid"] != old
                ),
                None,
            ),
            timeout=30,
            what="status to show the restarted ingest",
        )
        assert restarted["pid"] == stack.pid(PATTERNS["ingest"])
        assert restarted["restarts"] == 1

        table = subprocess.run(
            [sys.executable, "-m", "healthsync", "status"],
            cwd=stack.directory,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout.decode()
        assert "consumer lag" in table and "ingest connections" in table
        assert str(restarted["pid"]) in table
