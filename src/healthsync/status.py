"""`healthsync status`: the running pipeline at a glance (processes, lag, Redis, ingest).

It reads `<run dir>/state.json`, which `healthsync up` rewrites every second,
then asks the kernel (psutil) about each process and Redis about the
pipeline's shared counters. `--json` prints one snapshot for scripts;
`--watch` redraws a table (rich) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis import Redis
from redis.exceptions import RedisError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from healthsync.errors import HealthSyncError
from healthsync.metrics import parse_field
from healthsync.names import RedisKeys
from healthsync.runstate import RunState

# CPU use is a rate: each process is sampled over this long.
_CPU_SAMPLE_S = 0.5


def collect(run_dir: Path) -> dict[str, Any]:
    """One snapshot of the pipeline that `up` runs from `run_dir`."""
    try:
        state = RunState.load(run_dir)
    except FileNotFoundError as exc:
        raise HealthSyncError(f"no running pipeline in {run_dir} (no state.json)") from exc
    snapshot: dict[str, Any] = {
        "up_pid": state.up_pid,
        "up_running": psutil.pid_exists(state.up_pid),
    }
    snapshot["processes"] = _processes(state)
    snapshot |= _from_redis(state)
    if state.front_stats_url:
        snapshot["front"] = _front(state.front_stats_url)
    return snapshot


def _front(url: str) -> dict[str, Any]:
    """Each HAProxy backend's servers (the ingest replicas) and their check state."""
    try:
        response = httpx.get(url, timeout=2.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return {"error": f"unreachable: {type(exc).__name__}"}
    backends: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(response.text.lstrip("# "))):
        server = row.get("svname", "")
        if server in ("FRONTEND", "BACKEND") or row.get("pxname") == "stats":
            continue
        # UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming back), MAINT, no check
        backends.setdefault(row["pxname"], {})[server] = row.get("status", "")
    return {"backends": backends}


def _processes(state: RunState) -> list[dict[str, Any]]:
    handles: list[tuple[Any, psutil.Process | None]] = []
    for entry in state.processes:
        try:
            process = psutil.Process(entry.pid)
            process.cpu_percent(None)  # starts the sample
        except psutil.Error:
            process = None
        handles.append((entry, process))
    time.sleep(_CPU_SAMPLE_S)
    rows = []
    now = time.time()
    for entry, process in handles:
        row: dict[str, Any] = {
            "name": entry.name,
            "kind": entry.kind,
            "pid": entry.pid,
            "restarts": entry.restarts,
            "alive": False,
        }
        try:
            if process is not None and process.status() != psutil.STATUS_ZOMBIE:
                with process.oneshot():
                    row |= {
                        "alive": True,
                        "cpu_percent": process.cpu_percent(None),
                        "rss_bytes": process.memory_info().rss,
                        "uptime_s": round(now - process.create_time(), 1),
                    }
        except psutil.Error:
            pass  # it died between the two samples: shown as not alive
        rows.append(row)
    return rows


def _from_redis(state: RunState) -> dict[str, Any]:
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    if state.redis_url.startswith("rediss://") and state.redis_ca:
        options["ssl_ca_certs"] = state.redis_ca
        if state.redis_cert and state.redis_key:
            options["ssl_certfile"], options["ssl_keyfile"] = state.redis_cert, state.redis_key
    client = Redis.from_url(state.redis_url, **options)
    keys = RedisKeys(state.redis_prefix)
    try:
        info = client.info()
        processor: dict[bytes, bytes] = client.hgetall(keys.stats("processor"))  # type: ignore[assignment]
        ingest: dict[bytes, bytes] = client.hgetall(keys.stats("ingest"))  # type: ignore[assignment]
    except RedisError as exc:
        return {"redis": {"error": f"unreachable: {type(exc).__name__}"}}
    finally:
        client.close()
    lag: dict[str, int] = {}
    for raw, value in processor.items():
        name, labels = parse_field(raw.decode())
        if name == "consumer_lag" and "partition" in labels:
            lag[labels["partition"]] = int(float(value))
    return {
        "redis": {
            "used_memory_bytes": int(info["used_memory"]),
            "ops_per_sec": int(info["instantaneous_ops_per_sec"]),
            "clients": int(info["connected_clients"]),
        },
        "consumer_lag": dict(sorted(lag.items(), key=lambda kv: int(kv[0]))),
        "ingest": {"connections_open": _connections_open(ingest, state)},
    }


def _connections_open(ingest: dict[bytes, bytes], state: RunState) -> int:
    """Open device connections: with replicas, the sum of the running ones' gauges."""
    running = {entry.name for entry in state.processes}
    labelled = 0
    replicas = False
    for raw, value in ingest.items():
        name, labels = parse_field(raw.decode())
        if name == "connections_open" and "instance" in labels:
            replicas = True
            labelled += int(float(value)) if labels["instance"] in running else 0
    return labelled if replicas else int(float(ingest.get(b"connections_open", b"0")))


def render(snapshot: dict[str, Any]) -> Group:
    processes = Table(title="processes")
    for column in ("name", "pid", "CPU %", "RSS MiB", "uptime s", "restarts"):
        processes.add_column(column, justify="left" if column == "name" else "right")
    for row in snapshot["processes"]:
        if not row["alive"]:
            processes.add_row(row["name"], str(row["pid"]), "down", "", "", str(row["restarts"]))
            continue
        processes.add_row(
            row["name"],
            str(row["pid"]),
            f"{row['cpu_percent']:.0f}",
            f"{row['rss_bytes'] / 2**20:.0f}",
            f"{row['uptime_s']:.0f}",
            str(row["restarts"]),
        )
    pipeline = Table(title="pipeline")
    pipeline.add_column("what")
    pipeline.add_column("value", justify="right")
    redis = snapshot["redis"]
    if "error" in redis:
        pipeline.add_row("redis", redis["error"])
    else:
        pipeline.add_row("redis memory MiB", f"{redis['used_memory_bytes'] / 2**20:.1f}")
        pipeline.add_row("redis ops/s", str(redis["ops_per_sec"]))
        pipeline.add_row("redis clients", str(redis["clients"]))
        pipeline.add_row("ingest connections", str(snapshot["ingest"]["connections_open"]))
        for partition, lag in snapshot["consumer_lag"].items():
            pipeline.add_row(f"consumer lag p{partition}", str(lag))
    front = snapshot.get("front")
    if front is not None and "error" in front:
        pipeline.add_row("ingest front", front["error"])
    for backend, servers in (front or {}).get("backends", {}).items():
        for server, state in servers.items():
            pipeline.add_row(f"{backend} {server}", state)
    return Group(processes, pipeline)


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if args.json:
        print(json.dumps(collect(run_dir)))
        return 0
    console = Console()
    if not args.watch:
        console.print(render(collect(run_dir)))
        return 0
    with Live(render(collect(run_dir)), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(max(args.interval - _CPU_SAMPLE_S, 0.0))
            live.update(render(collect(run_dir)), refresh=True)


def register(subparsers: Any) -> None:
    status = subparsers.add_parser(
        "status",
        help="processes, consumer lag, Redis and ingest of a running `healthsync up`",
        description="Read <run dir>/state.json, written by a running `healthsync up`, and "
        "show every process (pid, CPU, RSS, uptime, restarts), consumer lag per "
        "partition, Redis memory, operations/s and clients, open ingest connections, and "
        "with ingest replicas the state of each in HAProxy's backends (UP or DOWN).",
    )
    status.add_argument("--run-dir", default="run", help="the run dir of `up` (default ./run)")
    output = status.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one snapshot as JSON")
    output.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws (default 2)"
    )
    status.set_defaults(func=cmd_status)
