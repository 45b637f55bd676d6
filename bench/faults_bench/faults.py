"""The faults, one at a time: kill -9 of a process, a Redis stall, a processor-Redis partition."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass

from faults_bench.netns import Namespace
from faults_bench.stack import Up

REDIS = r"redis-server"


@dataclass(frozen=True)
class Fault:
    name: str
    pattern: str  # the victim's command line (for kill and stall)
    action: str  # "kill", "stall" or "partition"

    @property
    def needs_namespace(self) -> bool:
        return self.action == "partition"


def faults(stall_s: float, partition_s: float) -> list[Fault]:
    """In this order: the broker last, as its restart empties the topics."""
    return [
        Fault("kill -9 one ingest replica", r"-m healthsync ingest", "kill"),
        Fault("kill -9 HAProxy (ingest front)", r"haproxy .*ingest-front\.cfg", "kill"),
        Fault("kill -9 processor", r"-m healthsync process", "kill"),
        Fault("kill -9 archiver", r"-m healthsync archive", "kill"),
        Fault("kill -9 redis-server", REDIS, "kill"),
        Fault(f"Redis stall (SIGSTOP {stall_s:g} s)", REDIS, "stall"),
        Fault(f"partition processor-Redis ({partition_s:g} s)", REDIS, "partition"),
        Fault("kill -9 HAProxy (broker TLS front)", r"haproxy .*broker-tls\.cfg", "kill"),
        Fault("kill -9 broker (Tansu, in memory)", r"tansu.* broker ", "kill"),
    ]


@dataclass(frozen=True)
class Injector:
    up: Up
    namespace: Namespace | None  # the processor's, for the partition
    redis_port: int
    stall_s: float
    partition_s: float

    async def inject(self, fault: Fault) -> None:
        """Returns once the fault is over (at once for a kill)."""
        if fault.action == "partition":
            if self.namespace is None:
                raise SystemExit("a partition needs the processor in a network namespace")
            with self.namespace.partition(self.redis_port):
                await asyncio.sleep(self.partition_s)
            return
        pid = self.up.pid(fault.pattern)
        if fault.action == "kill":
            os.kill(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.stall_s)
        finally:
            os.kill(pid, signal.SIGCONT)
