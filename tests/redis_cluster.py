"""A real Redis Cluster for tests: three primaries on free loopback ports, no replicas.

Each node is a `redis-server --cluster-enabled yes` in its own directory;
`redis-cli --cluster create` assigns the 16384 hash slots across them. The
nodes keep nothing on disk beyond their cluster configuration.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from healthsync.stack import LOCALHOST, free_port, stop_process, wait_for_port


@dataclass
class RedisClusterNodes:
    ports: list[int]
    processes: list[subprocess.Popen[bytes]]

    @property
    def url(self) -> str:
        """What HEALTHSYNC_REDIS_URL says for it: any one node, the scheme naming a cluster."""
        return f"redis+cluster://{LOCALHOST}:{self.ports[0]}/0"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is needed for the cluster tests (Debian: redis-server)")
    return found


@contextmanager
def redis_cluster(directory: Path, primaries: int = 3) -> Iterator[RedisClusterNodes]:
    server, cli = _binary("redis-server"), _binary("redis-cli")
    ports = [free_port() for _ in range(primaries)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = directory / f"node-{port}"
            node_dir.mkdir(parents=True)
            argv = [server, "--bind", LOCALHOST, "--port", str(port), "--dir", str(node_dir)]
            # The bus port is a free one too: the default (port + 10000) may be taken or too high.
            argv += ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
            argv += ["--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no"]
            argv += ["--logfile", str(node_dir / "redis.log")]
            processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
        for port, process in zip(ports, processes, strict=True):
            wait_for_port(LOCALHOST, port, 10, process)
        create = [cli, "--cluster", "create", *(f"{LOCALHOST}:{p}" for p in ports)]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_ok(ports)
        yield RedisClusterNodes(ports, processes)
    finally:
        for process in processes:
            stop_process(process, timeout=5.0)


def _wait_ok(ports: list[int], timeout: float = 20.0) -> None:
    """Until every node reports the cluster up, with all slots served."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for port in ports:
            with Redis(LOCALHOST, port, decode_responses=True) as node:
                info = node.cluster("INFO")
            states.append(info.get("cluster_state") == "ok")
        if all(states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis Cluster did not come up")
        time.sleep(0.2)
